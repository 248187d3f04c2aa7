//! Historical migration, progress, diff, retry and bandwidth, through the real binary against
//! two moto S3 servers.

mod common;
mod proxy;

use common::{Env, Kind, create_bucket, get_bytes, key_versions, put, wait_until};
use futures::StreamExt;
use proxy::SlowProxy;
use serde_json::Value;
use std::time::{Duration, Instant};

const KIB: usize = 1024;

/// A config with the given `[engine]` extras and rules written as TOML text.
fn write_config(env: &Env, engine_extra: &str, rules: &str) {
    let text = format!(
        "[engine]\nworkers = 2\nscan_interval = \"1s\"\nmax_attempts = 2\nmultipart_threshold = \"5MiB\"\npart_size = \"5MiB\"\n{engine_extra}\n\n\
         [[endpoint]]\nname = \"gz\"\nregion = \"{}\"\nurl = \"{}\"\n\n[[endpoint]]\nname = \"sh\"\nregion = \"{}\"\nurl = \"{}\"\n\n{rules}",
        env.gz.region, env.gz.url, env.sh.region, env.sh.url
    );
    env.write_config_text(&text);
}

/// `write_config`, with endpoint gz reached through `proxy`.
fn write_config_through(env: &Env, proxy: &SlowProxy, rules: &str) {
    write_config(env, "", rules);
    let text = env.read_config_text().replace(&env.gz.url, &proxy.url);
    env.write_config_text(&text);
}

/// The host:port of an endpoint's URL, for a proxy in front of it.
fn address(url: &str) -> String {
    url.trim_start_matches("http://").trim_end_matches('/').to_string()
}

fn rule(id: &str, src: &str, dst: &str, extra: &str) -> String {
    format!("[[rule]]\nid = \"{id}\"\nsource = \"gz/{src}\"\ndestination = \"sh/{dst}\"\n{extra}\n\n")
}

async fn migration(env: &Env, id: &str) -> Value {
    env.rule_status(id).await["migration"].clone()
}

async fn versions_of(env: &Env, bucket: &str, key: &str) -> usize {
    key_versions(&env.sh, bucket, key)
        .await
        .iter()
        .filter(|v| !v.is_delete_marker)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_copies_what_existed_and_reaches_exactly_100_percent() {
    let env = Env::start().await;
    create_bucket(&env.gz, "hist", true).await;
    create_bucket(&env.sh, "hist-dr", true).await;
    for i in 0..6 {
        put(&env.gz, "hist", &format!("old/{i}.txt"), vec![b'a' + i as u8; 1000 + i]).await;
    }
    put(&env.gz, "hist", "old/empty", Vec::new()).await;
    put(&env.gz, "hist", "gone.txt", "deleted before the migration").await;
    common::delete(&env.gz, "hist", "gone.txt").await;
    write_config(&env, "", &rule("h", "hist", "hist-dr", ""));

    env.run_once().await;
    assert!(
        migration(&env, "h").await.is_null(),
        "no migration until one is started"
    );
    assert!(
        get_bytes(&env.sh, "hist-dr", "old/0.txt").await.is_none(),
        "enabling copies nothing old"
    );

    let started = env.crr(&["migrate", "start", "h"]).await;
    started.assert_ok();
    let m = migration(&env, "h").await;
    assert_eq!(m["state"], "listing");
    assert!(m["percent"].as_f64().unwrap() < 100.0);

    env.run_once().await;
    let m = migration(&env, "h").await;
    assert_eq!(m["state"], "completed", "{m}");
    assert_eq!(m["percent"].as_f64(), Some(100.0));
    assert_eq!(m["total_objects"], 7, "the delete-marked key is not migrated: {m}");
    assert_eq!(m["done_objects"], 7);
    assert_eq!(m["done_bytes"], m["total_bytes"]);
    assert_eq!(m["total_bytes"], (0..6).map(|i| 1000 + i).sum::<u64>());
    assert_eq!(
        (m["skipped_objects"].as_i64(), m["failed_objects"].as_i64()),
        (Some(0), Some(0))
    );
    for i in 0..6 {
        assert_eq!(
            get_bytes(&env.sh, "hist-dr", &format!("old/{i}.txt")).await,
            Some(vec![b'a' + i as u8; 1000 + i])
        );
    }
    assert_eq!(get_bytes(&env.sh, "hist-dr", "old/empty").await, Some(Vec::new()));
    assert_eq!(get_bytes(&env.sh, "hist-dr", "gone.txt").await, None);

    // The figures survive a restart of the engine unchanged.
    env.run_once().await;
    let again = migration(&env, "h").await;
    for field in [
        "state",
        "percent",
        "total_objects",
        "done_objects",
        "total_bytes",
        "done_bytes",
        "skipped_objects",
    ] {
        assert_eq!(again[field], m[field], "{field} changed across a restart");
    }
    let table = env.crr(&["status"]).await;
    table.assert_ok();
    assert!(table.stdout.contains("completed 100.0%"), "{}", table.stdout);

    // Disabling the rule later does not turn the finished migration into a cancelled one.
    env.crr(&["rule", "disable", "h"]).await.assert_ok();
    assert_eq!(migration(&env, "h").await["state"], "completed");
    assert_eq!(migration(&env, "h").await["percent"].as_f64(), Some(100.0));

    // diff agrees, then finds an injected difference and a missing object.
    env.crr(&["diff", "h"]).await.assert_ok();
    put(&env.sh, "hist-dr", "old/1.txt", "tampered").await;
    env.sh
        .client
        .delete_object()
        .bucket("hist-dr")
        .key("old/2.txt")
        .send()
        .await
        .expect("delete");
    let diff = env.crr(&["diff", "h"]).await;
    diff.assert_code(1);
    assert!(
        diff.stdout.contains("missing on destination: old/2.txt"),
        "{}",
        diff.stdout
    );
    assert!(diff.stdout.contains("different: old/1.txt"), "{}", diff.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn historical_true_starts_a_migration_when_the_rule_is_first_enabled() {
    let env = Env::start().await;
    create_bucket(&env.gz, "auto", true).await;
    create_bucket(&env.sh, "auto-dr", true).await;
    put(&env.gz, "auto", "a.txt", "existing").await;
    write_config(&env, "", &rule("auto", "auto", "auto-dr", "historical = true"));
    let out = env.run_once().await;
    assert!(
        out.stdout.contains("migration of rule \"auto\" started"),
        "{}",
        out.stdout
    );
    assert_eq!(
        get_bytes(&env.sh, "auto-dr", "a.txt").await.as_deref(),
        Some(&b"existing"[..])
    );
    assert_eq!(migration(&env, "auto").await["state"], "completed");
}

/// A rule enabled for the first time with `historical = true` lists the source once: that
/// listing gives both its baseline and its migration, and counts as the run's scan. The next
/// run lists again and replicates what was written since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_historical_run_lists_the_source_once() {
    let env = Env::start().await;
    create_bucket(&env.gz, "once", true).await;
    create_bucket(&env.sh, "once-dr", true).await;
    for i in 0..5 {
        put(&env.gz, "once", &format!("k/{i}"), vec![b'a' + i as u8; 100 + i]).await;
    }
    let proxy = SlowProxy::counting(address(&env.gz.url), "versions").await;
    write_config_through(&env, &proxy, &rule("once", "once", "once-dr", "historical = true"));

    env.run_once().await.assert_ok();
    for i in 0..5 {
        assert_eq!(
            get_bytes(&env.sh, "once-dr", &format!("k/{i}")).await,
            Some(vec![b'a' + i as u8; 100 + i])
        );
    }
    let status = env.rule_status("once").await;
    assert_eq!(status["migration"]["state"], "completed", "{status}");
    assert_eq!(status["migration"]["total_objects"], 5, "{status}");
    assert!(
        status["last_sync_point"].is_string(),
        "the listing counts as a scan: {status}"
    );
    assert_eq!(proxy.counted(), 1, "ListObjectVersions requests in the first run");

    put(&env.gz, "once", "later", "written after the first run").await;
    env.run_once().await.assert_ok();
    assert_eq!(proxy.counted(), 2, "the second run scans");
    assert_eq!(
        get_bytes(&env.sh, "once-dr", "later").await.as_deref(),
        Some(&b"written after the first run"[..])
    );
}

/// Killed while a `historical = true` rule's first baseline is listed, crr starts that enabling
/// again on the next run, and the migration still copies every object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_the_first_enabling_still_migrates_everything() {
    let env = Env::start().await;
    create_bucket(&env.gz, "first", true).await;
    create_bucket(&env.sh, "first-dr", true).await;
    for i in 0..20 {
        put(&env.gz, "first", &format!("k/{i:02}"), format!("object {i}")).await;
    }
    let proxy = SlowProxy::start(address(&env.gz.url)).await;
    write_config_through(&env, &proxy, &rule("first", "first", "first-dr", "historical = true"));
    // Every answer of the source takes a second: the listing is slow enough to be caught.
    proxy.set_delay(Duration::from_secs(1));
    let mut serve = env.spawn_serve();
    let enabling = wait_until(Duration::from_secs(60), || async {
        env.rule_status("first").await["state"] == "enabling"
    })
    .await;
    assert!(enabling, "the rule never showed as enabling: {}", serve.output());
    serve.kill();
    proxy.set_delay(Duration::ZERO);

    env.run_once().await.assert_ok();
    for i in 0..20 {
        assert_eq!(
            get_bytes(&env.sh, "first-dr", &format!("k/{i:02}")).await,
            Some(format!("object {i}").into_bytes()),
            "k/{i:02} was not migrated"
        );
    }
    let m = migration(&env, "first").await;
    assert_eq!(m["state"], "completed", "{m}");
    assert_eq!(m["total_objects"], 20, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_policies_decide_what_a_migration_replaces() {
    let env = Env::start().await;
    let mut rules = String::new();
    for policy in ["always", "if-different", "never"] {
        let (src, dst) = (format!("src-{policy}"), format!("dst-{policy}"));
        create_bucket(&env.gz, &src, true).await;
        create_bucket(&env.sh, &dst, true).await;
        put(&env.gz, &src, "same.txt", "same bytes").await;
        put(&env.gz, &src, "changed.txt", "new bytes").await;
        put(&env.gz, &src, "missing.txt", "only on the source").await;
        put(&env.sh, &dst, "same.txt", "same bytes").await;
        put(&env.sh, &dst, "changed.txt", "old bytes").await;
        rules.push_str(&rule(policy, &src, &dst, &format!("overwrite = \"{policy}\"")));
    }
    write_config(&env, "", &rules);
    let check = env.crr(&["check"]).await;
    check.assert_ok();
    assert!(
        check.stdout.contains("overwrite"),
        "check warns about overwrite = always: {}",
        check.stdout
    );
    env.run_once().await;
    for policy in ["always", "if-different", "never"] {
        let start = env.crr(&["migrate", "start", policy]).await;
        start.assert_ok();
        assert_eq!(start.stdout.contains("warning"), policy == "always", "{}", start.stdout);
    }
    env.run_once().await;

    let dst = |p: &str| format!("dst-{p}");
    // always: everything is written again.
    assert_eq!(versions_of(&env, &dst("always"), "same.txt").await, 2);
    assert_eq!(
        get_bytes(&env.sh, &dst("always"), "changed.txt").await.as_deref(),
        Some(&b"new bytes"[..])
    );
    // if-different: the identical object is left alone.
    assert_eq!(versions_of(&env, &dst("if-different"), "same.txt").await, 1);
    assert_eq!(
        get_bytes(&env.sh, &dst("if-different"), "changed.txt").await.as_deref(),
        Some(&b"new bytes"[..])
    );
    // never: what exists stays as it is.
    assert_eq!(versions_of(&env, &dst("never"), "same.txt").await, 1);
    assert_eq!(
        get_bytes(&env.sh, &dst("never"), "changed.txt").await.as_deref(),
        Some(&b"old bytes"[..])
    );
    for p in ["always", "if-different", "never"] {
        assert_eq!(
            get_bytes(&env.sh, &dst(p), "missing.txt").await.as_deref(),
            Some(&b"only on the source"[..]),
            "{p}"
        );
    }
    let skipped = |m: Value| {
        (
            m["done_objects"].as_i64(),
            m["skipped_objects"].as_i64(),
            m["percent"].as_f64(),
        )
    };
    assert_eq!(
        skipped(migration(&env, "always").await),
        (Some(3), Some(0), Some(100.0))
    );
    assert_eq!(
        skipped(migration(&env, "if-different").await),
        (Some(2), Some(1), Some(100.0))
    );
    assert_eq!(skipped(migration(&env, "never").await), (Some(1), Some(2), Some(100.0)));
}

/// Puts `objects` (key, body) with 16 requests in flight.
async fn put_all(s3: &common::Server, bucket: &str, objects: Vec<(String, String)>) {
    futures::stream::iter(objects)
        .for_each_concurrent(16, |(key, body)| async move {
            put(s3, bucket, &key, body).await;
        })
        .await;
}

/// Under "if-different" a migration lists the destination beside the source, page by page, to
/// copy what it lacks without asking for each object. Over several listing pages, with keys on
/// the destination that the source does not have in between, every identical object is still
/// left alone, every different one replaced and every missing one copied. SeaweedFS on both
/// sides: thousands of objects take seconds there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_different_over_many_listing_pages() {
    let env = Env::start_with(Kind::Weed, Kind::Weed).await;
    create_bucket(&env.gz, "src", true).await;
    create_bucket(&env.sh, "dst", true).await;
    let total = 2_300;
    let key = |i: usize| format!("k/{i:05}");
    let body = |i: usize| format!("object {i}");
    put_all(&env.gz, "src", (0..total).map(|i| (key(i), body(i))).collect()).await;
    let identical: Vec<usize> = (0..total).filter(|i| i % 7 == 0).collect();
    let different: Vec<usize> = (0..total).filter(|i| i % 7 != 0 && i % 11 == 0).collect();
    let mut on_dst: Vec<(String, String)> = identical.iter().map(|&i| (key(i), body(i))).collect();
    on_dst.extend(different.iter().map(|&i| (key(i), format!("stale {i}"))));
    // Keys only the destination has, between the source's.
    on_dst.extend(
        (0..total)
            .step_by(13)
            .map(|i| (format!("{}-extra", key(i)), "extra".to_string())),
    );
    put_all(&env.sh, "dst", on_dst).await;

    write_config(
        &env,
        "",
        &rule("many", "src", "dst", "overwrite = \"if-different\"\nhistorical = true"),
    );
    env.run_once().await;
    let m = migration(&env, "many").await;
    assert_eq!(m["state"], "completed", "{m}");
    // Copies start with the listing's first page, not after its last: the log (in time order)
    // shows a copy before the rule's enabling ends, 2 pages of 1,000 later.
    let log = std::fs::read_to_string(env.state_dir.join("crr.log")).expect("crr.log");
    let first_copy = log.find(" replicated rule=many ").expect("a copy in the log");
    let enabled = log.find("rule \"many\" enabled at").expect("the enabling in the log");
    assert!(
        first_copy < enabled,
        "the first copy waited for the whole listing:\n{}",
        &log[..log.len().min(2000)]
    );
    assert_eq!(m["skipped_objects"].as_u64(), Some(identical.len() as u64), "{m}");
    assert_eq!(
        m["done_objects"].as_u64(),
        Some((total - identical.len()) as u64),
        "{m}"
    );
    for i in (0..total)
        .step_by(97)
        .chain(identical.iter().copied().take(5))
        .chain(different.iter().copied())
    {
        assert_eq!(
            get_bytes(&env.sh, "dst", &key(i)).await.as_deref(),
            Some(body(i).as_bytes()),
            "{}",
            key(i)
        );
    }
    for &i in identical.iter().take(20) {
        assert_eq!(
            versions_of(&env, "dst", &key(i)).await,
            1,
            "{} was written again",
            key(i)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_migration_resumes_without_copying_anything_twice() {
    let env = Env::start().await;
    create_bucket(&env.gz, "many", true).await;
    create_bucket(&env.sh, "many-dr", true).await;
    let count = 16;
    for i in 0..count {
        put(&env.gz, "many", &format!("k{i:02}"), vec![i as u8; 64 * KIB]).await;
    }
    // 1 MiB at 256 KiB/s: about 4 seconds, long enough to be killed in the middle.
    write_config(&env, "bandwidth_limit = \"256KiB\"", &rule("m", "many", "many-dr", ""));
    env.run_once().await;
    env.crr(&["migrate", "start", "m"]).await.assert_ok();

    let mut child = common::crr_command(env.path())
        .arg("--config")
        .arg(&env.config_path)
        .arg("--state")
        .arg(&env.state_dir)
        .args(["run", "--once"])
        .spawn()
        .expect("spawn crr run --once");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = migration(&env, "m").await;
        let done = m["done_objects"].as_i64().unwrap_or(0);
        if done >= 3 {
            assert!(done < count, "the migration finished before it could be interrupted");
            break;
        }
        assert!(Instant::now() < deadline, "the migration made no progress: {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.start_kill().expect("SIGKILL crr");
    child.wait().await.expect("reap crr");
    let interrupted = migration(&env, "m").await;
    assert_ne!(interrupted["state"], "completed");

    env.run_once().await;
    let m = migration(&env, "m").await;
    assert_eq!(
        (m["state"].as_str(), m["percent"].as_f64()),
        (Some("completed"), Some(100.0)),
        "{m}"
    );
    assert_eq!(m["total_objects"], count, "listed once, not again from the start");
    assert_eq!(m["done_objects"], count);
    for i in 0..count {
        let key = format!("k{i:02}");
        assert_eq!(
            versions_of(&env, "many-dr", &key).await,
            1,
            "{key} was copied more than once"
        );
        assert_eq!(get_bytes(&env.sh, "many-dr", &key).await, Some(vec![i as u8; 64 * KIB]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_cancel_while_serve_runs() {
    let env = Env::start().await;
    create_bucket(&env.gz, "slow", true).await;
    create_bucket(&env.sh, "slow-dr", true).await;
    let count = 24;
    for i in 0..count {
        put(&env.gz, "slow", &format!("k{i:02}"), vec![7u8; 64 * KIB]).await;
    }
    // 1.5 MiB at 256 KiB/s: about 6 seconds.
    write_config(&env, "bandwidth_limit = \"256KiB\"", &rule("s", "slow", "slow-dr", ""));
    let mut serve = env.spawn_serve();
    common::wait_until(Duration::from_secs(30), || async {
        env.rule_status("s").await["enable_point"].is_string()
    })
    .await;

    let start = env.crr(&["migrate", "start", "s"]).await;
    start.assert_ok();
    assert!(
        start.stdout.contains("applied by the running engine"),
        "{}",
        start.stdout
    );
    assert!(
        common::wait_until(Duration::from_secs(30), || async {
            migration(&env, "s").await["done_objects"].as_i64().unwrap_or(0) >= 2
        })
        .await,
        "the running engine did not start the migration"
    );

    let pause = env.crr(&["migrate", "pause", "s"]).await;
    pause.assert_ok();
    assert!(
        pause.stdout.contains("applied by the running engine"),
        "{}",
        pause.stdout
    );
    // Copies in flight may finish; then nothing moves.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let paused = migration(&env, "s").await;
    assert_eq!(paused["state"], "paused");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        migration(&env, "s").await["done_objects"],
        paused["done_objects"],
        "copying went on while paused"
    );
    assert!(paused["done_objects"].as_i64().unwrap() < count);

    env.crr(&["migrate", "resume", "s"]).await.assert_ok();
    assert!(
        common::wait_until(Duration::from_secs(30), || async {
            migration(&env, "s").await["done_objects"].as_i64().unwrap_or(0) > paused["done_objects"].as_i64().unwrap()
        })
        .await,
        "resume did not continue the migration"
    );

    let cancel = env.crr(&["migrate", "cancel", "s"]).await;
    cancel.assert_ok();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cancelled = migration(&env, "s").await;
    assert_eq!(cancelled["state"], "cancelled");
    assert!(cancelled["percent"].as_f64().unwrap() < 100.0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let copied = env
        .sh
        .client
        .list_objects_v2()
        .bucket("slow-dr")
        .send()
        .await
        .expect("list")
        .key_count();
    assert!(
        copied.unwrap_or(0) < count as i32,
        "a cancelled migration copied everything"
    );
    assert!(
        env.sh
            .client
            .list_multipart_uploads()
            .bucket("slow-dr")
            .send()
            .await
            .expect("uploads")
            .uploads()
            .is_empty()
    );
    // Pausing what is cancelled is refused.
    env.crr(&["migrate", "pause", "s"]).await.assert_code(2);
    assert_eq!(serve.terminate(Duration::from_secs(30)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bandwidth_limit_holds_on_a_large_object() {
    let env = Env::start().await;
    create_bucket(&env.gz, "bwsrc", true).await;
    create_bucket(&env.sh, "bwsrc-dr", true).await;
    write_config(
        &env,
        "bandwidth_limit = \"1MiB\"",
        &rule("bwsrc", "bwsrc", "bwsrc-dr", ""),
    );
    env.run_once().await;
    let body = common::pseudo_random_bytes(6 << 20, 3);
    put(&env.gz, "bwsrc", "large.bin", body.clone()).await;

    let started = Instant::now();
    env.run_once().await;
    let took = started.elapsed();
    // 6 MiB at 1 MiB/s cannot take less than about 6 s; a lower bound a slow machine cannot break.
    assert!(
        took >= Duration::from_millis(5500),
        "6 MiB copied in {took:?} under a 1 MiB/s limit"
    );
    assert_eq!(get_bytes(&env.sh, "bwsrc-dr", "large.bin").await, Some(body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_own_bandwidth_limit_holds_too() {
    let env = Env::start().await;
    create_bucket(&env.gz, "rlsrc", true).await;
    create_bucket(&env.sh, "rlsrc-dr", true).await;
    write_config(
        &env,
        "",
        &rule("rl", "rlsrc", "rlsrc-dr", "bandwidth_limit = \"512KiB\""),
    );
    env.run_once().await;
    let body = common::pseudo_random_bytes(2 << 20, 5);
    put(&env.gz, "rlsrc", "two.bin", body.clone()).await;
    let started = Instant::now();
    env.run_once().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(3500),
        "2 MiB copied in {took:?} under a 512 KiB/s rule limit"
    );
    assert_eq!(get_bytes(&env.sh, "rlsrc-dr", "two.bin").await, Some(body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tasks_are_listed_and_retried() {
    let mut env = Env::start().await;
    create_bucket(&env.gz, "fsrc", true).await;
    create_bucket(&env.sh, "fsrc-dr", true).await;
    write_config(&env, "", &rule("f", "fsrc", "fsrc-dr", ""));
    env.run_once().await;
    put(&env.gz, "fsrc", "x.txt", "retry me").await;
    // The destination's server is down: the task fails after its attempts.
    let sh_port = env.sh.port;
    env.sh.stop();
    let run = env.crr(&["run", "--once"]).await;
    run.assert_code(1);
    let failed = env.crr(&["queue", "--failed", "--json"]).await;
    failed.assert_ok();
    let tasks = failed.json()["tasks"].as_array().cloned().unwrap_or_default();
    assert_eq!(tasks.len(), 1, "{}", failed.stdout);
    assert_eq!(tasks[0]["key"], "x.txt");
    assert!(tasks[0]["error"].as_str().is_some_and(|e| !e.is_empty()));
    let id = tasks[0]["id"].as_i64().expect("task id").to_string();
    let status = env.rule_status("f").await;
    assert_eq!(status["failed_tasks"], 1);

    // Back up on the same port; retry the task by id; the next run copies it.
    env.sh = common::Moto::start_on("sh", &env.sh.region.clone(), env.path(), sh_port).await;
    create_bucket(&env.sh, "fsrc-dr", true).await;
    let retry = env.crr(&["retry", &id]).await;
    retry.assert_ok();
    assert!(retry.stdout.contains("1 failed task"), "{}", retry.stdout);
    env.run_once().await;
    assert_eq!(
        get_bytes(&env.sh, "fsrc-dr", "x.txt").await.as_deref(),
        Some(&b"retry me"[..])
    );
    assert_eq!(env.rule_status("f").await["failed_tasks"], 0);
    env.crr(&["retry"]).await.assert_code(2);
}
