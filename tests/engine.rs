//! The engine as a library, against two real moto S3 servers: what the command line cannot
//! reach directly, such as a process dying in the middle of a multipart upload, or a rule being
//! disabled while an upload is open.

mod common;

use common::{Env, Rule, create_bucket, get_bytes, pseudo_random_bytes, put};
use crr::engine::Engine;
use crr::store::now_ms;
use std::sync::Arc;

fn credentials() {
    common::engine_credentials();
}

const MIB: usize = 1 << 20;

async fn setup(env: &Env, rules: &[Rule]) -> Arc<Engine> {
    credentials();
    create_bucket(&env.gz, "src-bucket", true).await;
    create_bucket(&env.sh, "dst-bucket", true).await;
    env.write_config(rules);
    open(env).await
}

async fn open(env: &Env) -> Arc<Engine> {
    common::open_engine(env).await
}

async fn open_uploads(env: &Env) -> Vec<String> {
    let out = env
        .sh
        .client
        .list_multipart_uploads()
        .bucket("dst-bucket")
        .send()
        .await
        .expect("list uploads");
    out.uploads()
        .iter()
        .filter_map(|u| u.upload_id().map(str::to_string))
        .collect()
}

/// Starts the multipart copy of the task by hand, as a process that died after part 1 would
/// have left it: an open upload on the destination with part 1 in it, recorded in the store.
async fn half_done_upload(env: &Env, engine: &Engine, key: &str, body: &[u8]) -> (i64, String) {
    let task = engine.store.claim(now_ms()).expect("claim").expect("a task is queued");
    assert_eq!(task.key, key);
    let created = env
        .sh
        .client
        .create_multipart_upload()
        .bucket("dst-bucket")
        .key(key)
        .send()
        .await
        .expect("create upload");
    let upload_id = created.upload_id().expect("upload id").to_string();
    let part = env
        .sh
        .client
        .upload_part()
        .bucket("dst-bucket")
        .key(key)
        .upload_id(&upload_id)
        .part_number(1)
        .body(body[..5 * MIB].to_vec().into())
        .send()
        .await
        .expect("upload part 1");
    engine
        .store
        .set_upload(task.id, Some((&upload_id, (5 * MIB) as u64)))
        .expect("record upload");
    engine
        .store
        .add_part(task.id, 1, part.e_tag().expect("etag"), (5 * MIB) as u64)
        .expect("record part");
    (task.id, upload_id)
}

fn config_rule() -> Rule {
    Rule::new("big", "gz/src-bucket", "sh/dst-bucket")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_a_multipart_upload_instead_of_starting_over() {
    let env = Env::start().await;
    let engine = setup(&env, &[config_rule()]).await;
    let rec = engine.reconcile(None).await.expect("reconcile");
    assert!(rec.refused.is_empty(), "{:?}", rec.refused);

    let body = pseudo_random_bytes(12 * MIB + 7, 42);
    put(&env.gz, "src-bucket", "video.bin", body.clone()).await;
    let (queued, errors, _) = engine.scan_all().await;
    assert_eq!((queued, errors.len()), (1, 0), "{errors:?}");
    let (_, upload_id) = half_done_upload(&env, &engine, "video.bin", &body).await;

    // The process "dies": the task stays running in the store, the upload stays open.
    drop(engine);
    let engine = open(&env).await;
    let summary = engine.run_once().await.expect("run");
    assert!(summary.failed.is_empty(), "{:?}", summary.failed);
    assert_eq!(summary.replicated, 1);

    assert_eq!(
        get_bytes(&env.sh, "dst-bucket", "video.bin").await.as_deref(),
        Some(&body[..])
    );
    // The upload that held part 1 was completed, not abandoned for a new one.
    assert!(
        open_uploads(&env).await.is_empty(),
        "an upload was left open: {:?}",
        open_uploads(&env).await
    );
    let versions = env
        .sh
        .client
        .list_object_versions()
        .bucket("dst-bucket")
        .send()
        .await
        .expect("versions");
    assert_eq!(versions.versions().len(), 1, "exactly one replica version");
    let _ = upload_id;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_rule_aborts_its_open_upload_and_drops_its_queue() {
    let env = Env::start().await;
    let engine = setup(&env, &[config_rule()]).await;
    engine.reconcile(None).await.expect("reconcile");

    let body = pseudo_random_bytes(11 * MIB, 7);
    put(&env.gz, "src-bucket", "big.bin", body.clone()).await;
    put(&env.gz, "src-bucket", "small.txt", "queued, never copied").await;
    engine.scan_all().await;
    let (_, upload_id) = half_done_upload(&env, &engine, "big.bin", &body).await;
    assert_eq!(open_uploads(&env).await, vec![upload_id]);

    env.write_config(&[config_rule().enabled(false)]);
    engine.reload().await.expect("reload");
    let rec = engine.reconcile(None).await.expect("reconcile");
    assert!(
        rec.messages.iter().any(|m| m.contains("disabled")),
        "{:?}",
        rec.messages
    );

    assert!(
        open_uploads(&env).await.is_empty(),
        "the multipart upload was not aborted"
    );
    let backlog = engine.store.backlog("big").expect("backlog");
    assert_eq!((backlog.pending_tasks, backlog.failed_tasks), (0, 0));
    let summary = engine.run_once().await.expect("run");
    assert_eq!(summary.replicated, 0);
    assert_eq!(get_bytes(&env.sh, "dst-bucket", "big.bin").await, None);
    assert_eq!(get_bytes(&env.sh, "dst-bucket", "small.txt").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_in_the_enable_second_are_replicated_exactly_once() {
    let env = Env::start().await;
    let engine = setup(&env, &[config_rule()]).await;
    put(&env.gz, "src-bucket", "before.txt", "before").await;
    engine.reconcile(None).await.expect("reconcile");
    // Same second as the enable point on a server with one-second timestamps.
    put(&env.gz, "src-bucket", "after.txt", "after").await;
    put(&env.gz, "src-bucket", "before.txt", "before, changed").await;

    let first = engine.run_once().await.expect("run");
    let second = engine.run_once().await.expect("run again");
    assert_eq!(first.replicated, 2);
    assert_eq!(second.replicated, 0, "nothing is copied twice");
    assert_eq!(
        get_bytes(&env.sh, "dst-bucket", "after.txt").await.as_deref(),
        Some(&b"after"[..])
    );
    assert_eq!(
        get_bytes(&env.sh, "dst-bucket", "before.txt").await.as_deref(),
        Some(&b"before, changed"[..])
    );
    let versions = env
        .sh
        .client
        .list_object_versions()
        .bucket("dst-bucket")
        .send()
        .await
        .expect("versions");
    assert_eq!(
        versions.versions().len(),
        2,
        "the version from before the enable point was not copied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_delete_put_in_one_second_leaves_the_same_latest_version() {
    let env = Env::start().await;
    let engine = setup(&env, &[config_rule()]).await;
    engine.reconcile(None).await.expect("reconcile");
    put(&env.gz, "src-bucket", "k", "one").await;
    common::delete(&env.gz, "src-bucket", "k").await;
    put(&env.gz, "src-bucket", "k", "two").await;
    common::delete(&env.gz, "src-bucket", "gone").await;
    put(&env.gz, "src-bucket", "gone", "x").await;
    common::delete(&env.gz, "src-bucket", "gone").await;

    let summary = engine.run_once().await.expect("run");
    assert!(summary.failed.is_empty(), "{:?}", summary.failed);
    assert_eq!(
        get_bytes(&env.sh, "dst-bucket", "k").await.as_deref(),
        Some(&b"two"[..])
    );
    assert_eq!(
        get_bytes(&env.sh, "dst-bucket", "gone").await,
        None,
        "latest of `gone` is a delete marker"
    );
    let versions = env
        .sh
        .client
        .list_object_versions()
        .bucket("dst-bucket")
        .send()
        .await
        .expect("versions");
    assert!(
        versions.versions().iter().any(|v| v.key() == Some("gone")),
        "no version is deleted for good"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_copies_publish_their_progress_on_the_snapshot() {
    let env = Env::start().await;
    credentials();
    create_bucket(&env.gz, "src-bucket", true).await;
    create_bucket(&env.sh, "dst-bucket", true).await;
    let text = env
        .config_text(&[config_rule()])
        .replace("[engine]", "[engine]\nbandwidth_limit = \"3MiB\"");
    env.write_config_text(&text);
    let engine = open(&env).await;
    engine.reconcile(None).await.expect("reconcile");
    let body = pseudo_random_bytes(12 * MIB, 9);
    put(&env.gz, "src-bucket", "movie.bin", body.clone()).await;

    let mut snapshots = engine.subscribe();
    let runner = engine.clone();
    let run = tokio::spawn(async move { runner.run_once().await });
    let mut seen = Vec::new();
    while !run.is_finished() {
        if tokio::time::timeout(std::time::Duration::from_secs(1), snapshots.changed())
            .await
            .is_ok()
        {
            seen.extend(snapshots.borrow_and_update().running.clone());
        }
    }
    let summary = run.await.expect("join").expect("run");
    assert_eq!(summary.replicated, 1);
    assert_eq!(get_bytes(&env.sh, "dst-bucket", "movie.bin").await, Some(body));

    // About 4 s at 3 MiB/s, sampled 4 times a second: the copy was seen part-way, with its
    // size, parts, attempt and a rate, and its figures never went backwards or past the size.
    let mid: Vec<_> = seen
        .iter()
        .filter(|t| t.bytes_done > 0 && t.bytes_done < t.size)
        .collect();
    assert!(mid.len() >= 3, "too few mid-copy samples: {seen:?}");
    for t in &seen {
        assert_eq!(
            (t.key.as_str(), t.size, t.parts, t.attempt),
            ("movie.bin", (12 * MIB) as u64, 3, 1)
        );
        assert!(t.part >= 1 && t.part <= t.parts);
        assert!(t.bytes_done <= t.size);
    }
    assert!(
        seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done),
        "progress went backwards"
    );
    assert!(mid.iter().any(|t| t.rate > 0), "no rate was published");
    assert!(
        mid.iter().all(|t| t.rate < 8 * MIB as u64),
        "rate above what the limit allows: {mid:?}"
    );
}

// A write that landed before a crash: see tests/crash.rs, where crr's own copy lands (a
// hand-made PUT is not a replica crr recorded, and is rightly copied over).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_migration_does_not_hold_back_the_last_sync_point() {
    let env = Env::start().await;
    let engine = setup(&env, &[config_rule()]).await;
    put(&env.gz, "src-bucket", "old.txt", "before the enable point").await;
    engine.reconcile(None).await.expect("reconcile");
    engine
        .migrate_command(crr::engine::MigrateAction::Start, "big")
        .await
        .expect("migration starts");
    engine
        .migrate_command(crr::engine::MigrateAction::Pause, "big")
        .await
        .expect("migration pauses");
    // Give the paused migration a pending task, as if its listing had run before the pause.
    let m = engine.store.latest_migration("big").expect("store").expect("migration");
    let old = crr::store::NewChange {
        queue: true,
        kind: crr::store::TaskKind::Put,
        key: "old.txt".into(),
        version_id: "null".into(),
        size: 23,
        etag: String::new(),
        source_time: 0,
        dest_absent: false,
    };
    let generation = engine.store.rule_state("big").expect("store").expect("rule").generation;
    engine
        .store
        .add_migration_page(&m, generation, &[old], (1, None), true)
        .expect("page");

    put(&env.gz, "src-bucket", "new.txt", "after").await;
    let before = now_ms();
    engine.run_once().await.expect("run");
    let state = engine.store.rule_state("big").expect("store").expect("rule");
    assert!(
        state.last_sync_point.expect("a sync point") >= before,
        "the last sync point stayed behind the paused migration"
    );
    assert_eq!(
        get_bytes(&env.sh, "dst-bucket", "new.txt").await.as_deref(),
        Some(&b"after"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_the_part_size_changed_starts_a_fresh_upload() {
    let env = Env::start().await;
    let engine = setup(&env, &[config_rule()]).await;
    engine.reconcile(None).await.expect("reconcile");
    let body = pseudo_random_bytes(16 * MIB + 3, 11);
    put(&env.gz, "src-bucket", "layout.bin", body.clone()).await;
    engine.scan_all().await;
    let (_, old_upload) = half_done_upload(&env, &engine, "layout.bin", &body).await;
    drop(engine);

    // Restarted with bigger parts: the recorded part 1 (5 MiB) does not fit the new layout.
    let text = env
        .read_config_text()
        .replace("part_size = \"5MiB\"", "part_size = \"6MiB\"");
    assert!(
        text.contains("part_size = \"6MiB\""),
        "the harness config changed shape: {text}"
    );
    env.write_config_text(&text);
    let engine = open(&env).await;
    let summary = engine.run_once().await.expect("run");
    assert!(summary.failed.is_empty(), "{:?}", summary.failed);
    assert_eq!(get_bytes(&env.sh, "dst-bucket", "layout.bin").await, Some(body));
    let versions = env
        .sh
        .client
        .list_object_versions()
        .bucket("dst-bucket")
        .send()
        .await
        .expect("versions");
    assert_eq!(versions.versions().len(), 1, "a wrong version was completed on the way");
    assert!(
        !open_uploads(&env).await.contains(&old_upload),
        "the old upload was left open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_a_rule_from_put_to_all_does_not_replay_old_delete_markers() {
    let env = Env::start().await;
    let engine = setup(&env, &[config_rule().operations("put")]).await;
    engine.reconcile(None).await.expect("reconcile");
    put(&env.gz, "src-bucket", "k", "one").await;
    engine.run_once().await.expect("run");
    common::delete(&env.gz, "src-bucket", "k").await;
    engine.run_once().await.expect("run");
    put(&env.gz, "src-bucket", "k", "two").await;
    engine.run_once().await.expect("run");
    assert_eq!(
        get_bytes(&env.sh, "dst-bucket", "k").await.as_deref(),
        Some(&b"two"[..])
    );

    env.write_config(&[config_rule().operations("all")]);
    engine.reload().await.expect("reload");
    engine.reconcile(None).await.expect("reconcile");
    engine.run_once().await.expect("run");
    assert_eq!(
        get_bytes(&env.sh, "dst-bucket", "k").await.as_deref(),
        Some(&b"two"[..]),
        "an old delete marker was replayed over the latest version"
    );
}
