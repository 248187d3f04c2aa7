//! The engine's control plane against two real moto servers: typed commands answered while
//! long work runs, events and snapshots, the service socket end to end, and the races a review
//! of the engine found (each test here failed before its fix; see the issue's closing note).

mod common;
mod proxy;

use common::{Env, Kind, Rule, create_bucket, delete, get_bytes, key_versions, pseudo_random_bytes, put};
use crr::engine::{Command, Engine, EngineHandle, Event, MigrateAction, Reply, RetryTarget, RuleDraft};
use crr::store::{NewChange, TaskKind};
use proxy::SlowProxy;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

const MIB: usize = 1 << 20;

fn credentials() {
    common::engine_credentials();
}

fn rule() -> Rule {
    Rule::new("r", "gz/src-bucket", "sh/dst-bucket")
}

async fn buckets(env: &Env) {
    credentials();
    create_bucket(&env.gz, "src-bucket", true).await;
    create_bucket(&env.sh, "dst-bucket", true).await;
}

async fn open(env: &Env) -> Arc<Engine> {
    common::open_engine(env).await
}

/// The config of `rules`, with endpoint gz reached through `proxy`.
fn config_through(env: &Env, proxy: &SlowProxy, rules: &[Rule], engine_extra: &str) -> String {
    env.config_text(rules)
        .replace(&env.gz.url, &proxy.url)
        .replace("[engine]\n", &format!("[engine]\n{engine_extra}"))
}

async fn next_event(events: &mut broadcast::Receiver<Event>, within: Duration, want: impl Fn(&Event) -> bool) -> Event {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(e)) if want(&e) => return e,
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(e)) => panic!("event channel closed: {e}"),
            Err(_) => panic!("no matching event within {within:?}"),
        }
    }
}

fn done(reply: &Reply) -> &str {
    match reply {
        Reply::Done { message } => message,
        Reply::Refused { reason, fix } => panic!("refused: {reason}; {fix}"),
    }
}

async fn enable(handle: &EngineHandle, id: &str) {
    let mut events = handle.events();
    done(&handle.send(Command::EnableRule { id: id.into() }).await);
    let e = next_event(
        &mut events,
        Duration::from_secs(60),
        |e| matches!(e, Event::RuleEnabled { rule, .. } | Event::RuleRefused { rule, .. } if rule == id),
    )
    .await;
    assert!(matches!(e, Event::RuleEnabled { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_answered_while_a_slow_baseline_listing_runs() {
    let env = Env::start().await;
    buckets(&env).await;
    let proxy = SlowProxy::start(format!("127.0.0.1:{}", env.gz.port)).await;
    env.write_config_text(&config_through(&env, &proxy, &[rule().enabled(false)], ""));
    let engine = open(&env).await;
    let handle = engine.handle();
    let mut events = handle.events();
    // Every answer from the source now takes 1.5 s: preflight and the baseline listing take
    // several seconds.
    proxy.set_delay(Duration::from_millis(1500));

    let t = Instant::now();
    let enabling = handle.send(Command::EnableRule { id: "r".into() }).await;
    assert!(done(&enabling).contains("enabling"), "{enabling:?}");
    let retry = handle
        .send(Command::Retry {
            target: RetryTarget::All,
        })
        .await;
    assert_eq!(done(&retry), "0 failed task(s) queued again");
    let migrate = handle
        .send(Command::Migrate {
            id: "r".into(),
            action: MigrateAction::Start,
        })
        .await;
    assert!(
        matches!(&migrate, Reply::Refused { reason, .. } if reason.contains("not enabled")),
        "{migrate:?}"
    );
    let answered = t.elapsed();
    assert!(
        answered < Duration::from_secs(1),
        "three commands took {answered:?} while the source answers in 1.5 s"
    );
    assert!(
        !std::iter::from_fn(|| events.try_recv().ok()).any(|e| matches!(e, Event::RuleEnabled { .. })),
        "the commands were answered only after the rule was enabled"
    );

    // A disable while the enabling runs wins: the enabling is cancelled, the config says
    // disabled, and the rule is not enabled.
    let disabled = handle.send(Command::DisableRule { id: "r".into() }).await;
    done(&disabled);
    let outcome = next_event(&mut events, Duration::from_secs(30), |e| {
        matches!(e, Event::RuleEnabled { .. } | Event::RuleRefused { .. })
    })
    .await;
    assert!(
        matches!(&outcome, Event::RuleRefused { reasons, .. } if reasons.iter().any(|r| r.contains("disabled while"))),
        "{outcome:?}"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        env.read_config_text().contains("enabled = false"),
        "{}",
        env.read_config_text()
    );
    let state = engine.store.rule_state("r").expect("state");
    assert!(
        state.is_none_or(|s| s.state != "enabled"),
        "the rule was enabled after all"
    );

    // Later, with a normal source, it enables.
    proxy.set_delay(Duration::ZERO);
    enable(&handle, "r").await;
    assert!(env.read_config_text().contains("enabled = true"));
}

/// `crr rule enable` waits for the service to say how the enabling ended. Killed meanwhile, the
/// service never says: the command stops at once with what to do, and the config is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_enable_stops_when_the_service_dies_while_enabling() {
    let env = Env::start().await;
    buckets(&env).await;
    let proxy = SlowProxy::start(format!("127.0.0.1:{}", env.gz.port)).await;
    env.write_config_text(&config_through(&env, &proxy, &[rule().enabled(false)], ""));
    let before = env.read_config_text();
    let mut serve = env.spawn_serve();
    let socket = env.state_dir.join("crr.sock");
    // Listening: the socket takes connections (a killed service leaves its file behind).
    let listening = || async { std::os::unix::net::UnixStream::connect(&socket).is_ok() };
    assert!(
        common::wait_until(Duration::from_secs(60), listening).await,
        "crr serve never listened\n{}",
        serve.output()
    );

    // Every answer from the source takes 1.5 s, so preflight and the baseline listing take
    // several seconds; the command is still waiting when the service is killed.
    proxy.set_delay(Duration::from_millis(1500));
    let enabling = env.crr(&["rule", "enable", "r"]);
    tokio::pin!(enabling);
    tokio::select! {
        out = &mut enabling => panic!("the enable ended before the kill: {}", out.describe()),
        () = tokio::time::sleep(Duration::from_secs(2)) => {}
    }
    serve.kill();
    let killed = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(20), enabling)
        .await
        .expect("`crr rule enable` still waits 20 s after the service died");
    let waited = killed.elapsed();
    assert_eq!(out.code, 1, "{}", out.describe());
    assert!(
        out.stderr.contains("the engine stopped before rule \"r\" was enabled")
            && out.stderr.contains("crr status")
            && out.stderr.contains("crr rule enable r")
            && out.stderr.contains("crr.log"),
        "{}",
        out.describe()
    );
    eprintln!("`crr rule enable` ended {waited:?} after the kill");
    assert_eq!(
        env.read_config_text(),
        before,
        "the config changed though the rule was not enabled"
    );

    // The operator says it again once the service is back, and the rule replicates.
    proxy.set_delay(Duration::ZERO);
    let mut serve = env.spawn_serve();
    assert!(
        common::wait_until(Duration::from_secs(60), listening).await,
        "crr serve never listened again\n{}",
        serve.output()
    );
    let again = env.crr(&["rule", "enable", "r"]).await;
    again.assert_ok();
    assert!(env.read_config_text().contains("enabled = true"));
    put(&env.gz, "src-bucket", "after.txt", "replicated").await;
    let sh = &env.sh;
    let copied = common::wait_until(Duration::from_secs(30), || async move {
        get_bytes(sh, "dst-bucket", "after.txt").await.as_deref() == Some(&b"replicated"[..])
    })
    .await;
    assert!(
        copied,
        "a write after the second enable was not replicated\n{}",
        serve.output()
    );
    assert_eq!(serve.terminate(Duration::from_secs(30)).await, 0, "{}", serve.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_socket_speaks_the_protocol_end_to_end() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let env = Env::start().await;
    buckets(&env).await;
    env.write_config(&[rule()]);
    let mut serve = env.spawn_serve();
    let socket = env.state_dir.join("crr.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    let stream = loop {
        if let Ok(s) = tokio::net::UnixStream::connect(&socket).await {
            break s;
        }
        assert!(Instant::now() < deadline, "no socket\n{}", serve.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).expect("socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket must be private to its user");

    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut next = async || -> serde_json::Value {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a message within 20 s")
            .expect("read")
            .expect("the service keeps the connection open");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"))
    };
    let hello = next().await;
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["protocol"], 1);
    assert_eq!(hello["pid"], serve.pid());

    write
        .write_all(b"{\"type\":\"subscribe\",\"events\":true,\"snapshots\":true}\nthis is not json\n")
        .await
        .expect("write");
    write
        .write_all(
            b"{\"type\":\"command\",\"id\":7,\"command\":{\"command\":\"retry\",\"target\":{\"select\":\"all\"}}}\n",
        )
        .await
        .expect("write");
    let (mut reply, mut error, mut snapshot, mut done_event) = (None, None, None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while reply.is_none() || error.is_none() || snapshot.is_none() || done_event.is_none() {
        assert!(Instant::now() < deadline, "missing messages\n{}", serve.output());
        let m = next().await;
        match m["type"].as_str() {
            Some("reply") => reply = Some(m),
            Some("error") => error = Some(m),
            Some("snapshot") if snapshot.is_none() && m["snapshot"]["rules"][0]["state"] == "enabled" => {
                snapshot = Some(m);
                // Written after the enable point, so it is replicated.
                put(&env.gz, "src-bucket", "socket.txt", "over the socket").await;
            }
            Some("event") if m["event"]["event"] == "task_done" => done_event = Some(m),
            _ => {}
        }
    }
    let reply = reply.unwrap_or_default();
    assert_eq!(reply["id"], 7);
    assert_eq!(reply["reply"]["outcome"], "done", "{reply}");
    assert!(
        error.unwrap_or_default()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("unreadable"),
    );
    let snapshot = snapshot.unwrap_or_default();
    assert_eq!(snapshot["snapshot"]["rules"][0]["id"], "r");
    assert_eq!(snapshot["snapshot"]["endpoints"].as_array().map(Vec::len), Some(2));
    let done_event = done_event.unwrap_or_default();
    assert_eq!(done_event["event"]["key"], "socket.txt", "{done_event}");
    assert_eq!(
        get_bytes(&env.sh, "dst-bucket", "socket.txt").await.as_deref(),
        Some(&b"over the socket"[..])
    );

    // The same, through the crate's client, as the CLI and the UI use it.
    let client = crr::engine::client::ServiceClient::connect(&env.state_dir)
        .await
        .expect("connect")
        .expect("a service runs");
    assert_eq!(client.pid, serve.pid());
    let handle = client.into_handle().await.expect("handle");
    let reply = handle
        .send(Command::SetBandwidth {
            rule: None,
            bytes_per_sec: 1 << 20,
        })
        .await;
    assert!(done(&reply).contains("1.0 MiB/s"), "{reply:?}");

    assert_eq!(serve.terminate(Duration::from_secs(30)).await, 0);
    assert!(!socket.exists(), "the socket file is removed when the service stops");
    tokio::time::timeout(Duration::from_secs(5), async {
        while !handle.is_closed() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the handle notices that the service stopped");
    assert!(!handle.send(Command::Reload).await.is_done());
}

/// Review finding: a scan still listing when its rule was disabled and re-enabled committed
/// the old generation's tasks; they never ran, and `run_once` never finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_listing_across_a_disable_and_reenable_commits_nothing_stale() {
    let env = Env::start().await;
    buckets(&env).await;
    let proxy = SlowProxy::start(format!("127.0.0.1:{}", env.gz.port)).await;
    env.write_config_text(&config_through(&env, &proxy, &[rule()], ""));
    let engine = open(&env).await;
    let handle = engine.handle();
    engine.reconcile(None).await.expect("reconcile");
    put(&env.gz, "src-bucket", "k.txt", "after the first enable point").await;

    proxy.set_delay(Duration::from_millis(2000));
    let scanner = {
        let e = engine.clone();
        tokio::spawn(async move { e.scan_all().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    done(&handle.send(Command::DisableRule { id: "r".into() }).await);
    proxy.set_delay(Duration::ZERO);
    let _ = scanner.await;
    enable(&handle, "r").await;

    let run = tokio::time::timeout(Duration::from_secs(60), engine.run_once()).await;
    let summary = run.expect("run_once finished").expect("run");
    assert_eq!(summary.replicated, 0, "k.txt predates the new enable point");
    assert_eq!(engine.store.unfinished().expect("count"), 0);
    let status = crr::engine::offline_snapshot(&engine.config(), &engine.store).expect("snapshot");
    let r = status.rule("r").expect("rule");
    assert_eq!((r.backlog_objects, r.state.as_str()), (0, "enabled"), "{r:?}");
    assert!(r.last_sync_point >= r.enable_point, "{r:?}");
}

/// Review finding, tried as a user: an object copying when the rule was disabled was skipped by
/// the catch-up migration after re-enabling (its dropped real-time task counted against it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catch_up_migration_copies_what_a_disable_aborted() {
    let env = Env::start().await;
    buckets(&env).await;
    let text = env
        .config_text(&[rule()])
        .replace("[engine]\n", "[engine]\nbandwidth_limit = \"256KiB\"\n");
    env.write_config_text(&text);
    env.run_once().await;
    let body = pseudo_random_bytes(MIB, 21);
    put(&env.gz, "src-bucket", "slow.bin", body.clone()).await;

    let mut serve = env.spawn_serve();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let q = env.crr(&["queue", "--json"]).await.json();
        let copying = q["tasks"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["key"] == "slow.bin" && t["state"] == "running"));
        if copying {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slow.bin never started copying\n{}",
            serve.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let off = env.crr(&["rule", "disable", "r"]).await;
    off.assert_ok();
    assert!(
        off.stdout.contains("1 in-flight copy(ies) aborted"),
        "{}",
        off.describe()
    );
    let on = env.crr(&["rule", "enable", "r"]).await;
    on.assert_ok();
    assert!(on.combined().contains("crr migrate start r"), "{}", on.describe());
    env.crr(&["migrate", "start", "r"]).await.assert_ok();
    assert_eq!(serve.terminate(Duration::from_secs(30)).await, 0);

    env.run_once().await;
    let m = env.rule_status("r").await["migration"].clone();
    assert_eq!(m["state"], "completed", "{m}");
    assert_eq!(m["done_objects"], 1, "{m}");
    assert_eq!(get_bytes(&env.sh, "dst-bucket", "slow.bin").await, Some(body));
}

/// Review finding: a migration page committed after a newer real-time change of the same key
/// queued the older version last, and it became the destination's latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_never_puts_an_older_version_over_a_newer_one() {
    let env = Env::start().await;
    buckets(&env).await;
    let v0 = put(&env.gz, "src-bucket", "k.txt", "v0, before the enable point").await;
    env.write_config(&[rule()]);
    let engine = open(&env).await;
    let handle = engine.handle();
    engine.reconcile(None).await.expect("reconcile");
    done(
        &handle
            .send(Command::Migrate {
                id: "r".into(),
                action: MigrateAction::Start,
            })
            .await,
    );
    // The lister read its page (v0 latest) before v1 was written, but commits it after v1's
    // real-time task was queued: injected here in that order.
    put(&env.gz, "src-bucket", "k.txt", "v1, after it").await;
    engine.scan_all().await;
    let m = engine.store.latest_migration("r").expect("migration").expect("one");
    let generation = engine.store.rule_state("r").expect("state").expect("rule").generation;
    let page = [NewChange {
        queue: true,
        kind: TaskKind::Put,
        key: "k.txt".into(),
        version_id: v0,
        size: 27,
        etag: String::new(),
        source_time: 0,
        dest_absent: false,
    }];
    engine
        .store
        .add_migration_page(&m, generation, &page, (1, None), true)
        .expect("page");

    engine.run_once().await.expect("run");
    assert_eq!(
        get_bytes(&env.sh, "dst-bucket", "k.txt").await.as_deref(),
        Some(&b"v1, after it"[..]),
        "the older version became latest on the destination"
    );
    // And it was never copied: the migration task yielded to the newer real-time change.
    assert_eq!(key_versions(&env.sh, "dst-bucket", "k.txt").await.len(), 1);
}

/// Servers may list a key's versions in an order other than the one they became latest in
/// (AWS orders multipart versions by upload initiation). When a key's queue drains, the
/// destination's latest is compared with the source's and the latest copied again if needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_key_ends_with_the_sources_latest_version() {
    let env = Env::start().await;
    buckets(&env).await;
    env.write_config(&[rule()]);
    let engine = open(&env).await;
    engine.reconcile(None).await.expect("reconcile");
    let v1 = put(&env.gz, "src-bucket", "k.txt", "first").await;
    let v2 = put(&env.gz, "src-bucket", "k.txt", "second, latest").await;
    let generation = engine.store.rule_state("r").expect("state").expect("rule").generation;
    let change = |v: &str, size: u64| NewChange {
        queue: true,
        kind: TaskKind::Put,
        key: "k.txt".into(),
        version_id: v.into(),
        size,
        etag: String::new(),
        source_time: 0,
        dest_absent: false,
    };
    // Queued newest first, as a server with another listing order would have them.
    engine
        .store
        .queue_new("r", generation, &[change(&v2, 14), change(&v1, 5)])
        .expect("queue");
    engine.run_once().await.expect("run");
    assert_eq!(
        get_bytes(&env.sh, "dst-bucket", "k.txt").await.as_deref(),
        Some(&b"second, latest"[..])
    );
    assert_eq!(key_versions(&env.sh, "dst-bucket", "k.txt").await.len(), 3);
}

/// A migration of a few large objects moves smoothly: bytes of copies in flight count, and the
/// figures never go backwards.
/// The same for a delete listed before the put it hides, on a source (SeaweedFS) whose
/// HeadObject of a deleted key says neither that a delete marker hides it nor which: the marker
/// is found in the key's listing, and the delete is replicated again on top.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_key_ends_hidden_when_its_delete_ran_before_its_put() {
    let env = Env::start_with(Kind::Weed, Kind::Moto).await;
    buckets(&env).await;
    env.write_config(&[rule()]);
    let engine = open(&env).await;
    engine.reconcile(None).await.expect("reconcile");
    let v1 = put(&env.gz, "src-bucket", "k.txt", "written, then deleted").await;
    delete(&env.gz, "src-bucket", "k.txt").await;
    let marker = key_versions(&env.gz, "src-bucket", "k.txt")
        .await
        .into_iter()
        .find(|v| v.is_delete_marker)
        .expect("a delete marker")
        .version_id;
    let generation = engine.store.rule_state("r").expect("state").expect("rule").generation;
    let change = |kind: TaskKind, v: &str, size: u64| NewChange {
        queue: true,
        kind,
        key: "k.txt".into(),
        version_id: v.into(),
        size,
        etag: String::new(),
        source_time: 0,
        dest_absent: false,
    };
    // The delete first, as a listing with the wrong entry flagged latest would order them.
    engine
        .store
        .queue_new(
            "r",
            generation,
            &[change(TaskKind::Delete, &marker, 0), change(TaskKind::Put, &v1, 21)],
        )
        .expect("queue");
    engine.run_once().await.expect("run");
    assert_eq!(
        get_bytes(&env.sh, "dst-bucket", "k.txt").await,
        None,
        "deleted on the source, still readable on the destination"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_progress_counts_copies_in_flight_and_never_goes_back() {
    let env = Env::start().await;
    buckets(&env).await;
    for i in 0..40 {
        put(&env.gz, "src-bucket", &format!("small/{i:03}"), vec![b's'; 4096]).await;
    }
    for i in 0..2 {
        put(
            &env.gz,
            "src-bucket",
            &format!("large/{i}"),
            pseudo_random_bytes(3 * MIB, i),
        )
        .await;
    }
    let text = env
        .config_text(&[rule()])
        .replace("[engine]\n", "[engine]\nbandwidth_limit = \"1MiB\"\n");
    env.write_config_text(&text);
    let engine = open(&env).await;
    let handle = engine.handle();
    engine.reconcile(None).await.expect("reconcile");
    let mut snapshots = handle.snapshot();
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = {
        let (e, stop) = (engine.clone(), stop.clone());
        tokio::spawn(async move { e.serve(stop).await })
    };
    done(
        &handle
            .send(Command::Migrate {
                id: "r".into(),
                action: MigrateAction::Start,
            })
            .await,
    );
    let mut seen: Vec<(f64, i64, bool)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        tokio::time::timeout(Duration::from_secs(2), snapshots.changed())
            .await
            .ok();
        let s = snapshots.borrow_and_update().clone();
        if let Some(m) = s.rule("r").and_then(|r| r.migration.clone()) {
            let large_in_flight = s
                .running
                .iter()
                .any(|c| c.key.starts_with("large/") && c.bytes_done > 0);
            seen.push((m.percent, m.done_bytes, large_in_flight));
            if m.state == "completed" {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the migration did not complete: {seen:?}");
    }
    stop.cancel();
    serving.await.expect("join").expect("serve");
    assert!(
        seen.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1),
        "progress went backwards: {seen:?}"
    );
    let moving: std::collections::BTreeSet<u64> = seen
        .iter()
        // Above what the small objects alone make (2.5%): only the large copies move it there.
        .filter(|(p, _, large)| *large && *p > 3.0 && *p < 99.9)
        .map(|(p, _, _)| (p * 10.0) as u64)
        .collect();
    assert!(
        moving.len() >= 5,
        "the percentage sat still while the large objects copied: {seen:?}"
    );
    assert_eq!(seen.last().map(|s| s.0), Some(100.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_are_saved_and_deleted_through_the_handle_keeping_the_file() {
    let env = Env::start().await;
    buckets(&env).await;
    create_bucket(&env.gz, "logs-src", true).await;
    create_bucket(&env.sh, "logs-dst", true).await;
    let text = env.write_config(&[rule().comment("the photos rule")]);
    let engine = open(&env).await;
    let handle = engine.handle();
    let mut events = handle.events();

    let mut draft = RuleDraft {
        id: "logs".into(),
        source: "gz/logs-src".into(),
        destination: "sh/logs-dst".into(),
        prefixes: vec!["app/".into()],
        operations: "put".into(),
        storage_class: None,
        historical: false,
        overwrite: "never".into(),
        enabled: true,
    };
    // A draft that does not load is refused, naming the file and what is wrong; nothing is written.
    draft.operations = "everything".into();
    let bad = handle
        .send(Command::SaveRule {
            previous_id: None,
            rule: draft.clone(),
        })
        .await;
    match &bad {
        Reply::Refused { reason, .. } => {
            assert!(reason.contains(&env.config_path.display().to_string()), "{reason}");
            assert!(reason.contains("operations"), "{reason}");
        }
        other => panic!("accepted a bad rule: {other:?}"),
    }
    assert_eq!(env.read_config_text(), text);

    draft.operations = "put".into();
    done(
        &handle
            .send(Command::SaveRule {
                previous_id: None,
                rule: draft.clone(),
            })
            .await,
    );
    next_event(
        &mut events,
        Duration::from_secs(30),
        |e| matches!(e, Event::RuleEnabled { rule, .. } if rule == "logs"),
    )
    .await;
    let saved = env.read_config_text();
    assert!(saved.starts_with(&text), "the existing text changed:\n{saved}");
    assert!(saved.contains("the photos rule"));
    let loaded = crr::config::load(&env.config_path).expect("the saved file loads");
    let logs = loaded.rule("logs").expect("saved");
    assert_eq!(logs.prefixes, vec!["app/".to_string()]);

    let deleted = handle.send(Command::DeleteRule { id: "r".into() }).await;
    assert!(done(&deleted).contains("no longer in the config"), "{deleted:?}");
    let after = crr::config::load(&env.config_path).expect("loads");
    assert!(after.rule("r").is_none());
    assert!(after.rule("logs").is_some());
    assert!(!handle.send(Command::DeleteRule { id: "r".into() }).await.is_done());
}

/// SIGINT stops `crr run --once` at any moment: copies in flight get the grace period, then are
/// left resumable; the next run finishes the work without a second copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_run_once_and_the_next_run_finishes() {
    let env = Env::start().await;
    buckets(&env).await;
    let text = env
        .config_text(&[rule()])
        .replace("[engine]\n", "[engine]\nbandwidth_limit = \"512KiB\"\n");
    env.write_config_text(&text);
    env.run_once().await;
    let body = pseudo_random_bytes(12 * MIB, 5);
    put(&env.gz, "src-bucket", "big.bin", body.clone()).await;

    let mut cmd = common::crr_command(env.path());
    cmd.arg("--config")
        .arg(&env.config_path)
        .arg("--state")
        .arg(&env.state_dir)
        .args(["run", "--once"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("spawn crr run --once");
    let pid = child.id().expect("pid");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let q = env.crr(&["queue", "--json"]).await.json();
        let moving = q["tasks"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["key"] == "big.bin" && t["bytes_done"].as_u64().unwrap_or(0) > 0)
        });
        if moving {
            break;
        }
        assert!(Instant::now() < deadline, "big.bin never started copying");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("run --once stops within the grace period")
        .expect("wait");
    assert!(t.elapsed() < Duration::from_secs(25), "took {:?}", t.elapsed());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(get_bytes(&env.sh, "dst-bucket", "big.bin").await, None);

    let fast = env.config_text(&[rule()]);
    env.write_config_text(&fast);
    env.run_once().await;
    assert_eq!(get_bytes(&env.sh, "dst-bucket", "big.bin").await, Some(body));
    assert_eq!(key_versions(&env.sh, "dst-bucket", "big.bin").await.len(), 1);
}

/// The state follows the source instead of growing forever: finished tasks of versions that are
/// no longer latest are forgotten, and so are seen versions deleted for good from the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_of_versions_gone_from_the_source_is_pruned() {
    let env = Env::start().await;
    buckets(&env).await;
    env.write_config(&[rule()]);
    let engine = open(&env).await;
    engine.reconcile(None).await.expect("reconcile");
    let v1 = put(&env.gz, "src-bucket", "k.txt", "one").await;
    engine.run_once().await.expect("run");
    let v2 = put(&env.gz, "src-bucket", "k.txt", "two").await;
    engine.run_once().await.expect("run");

    let db = rusqlite::Connection::open(env.state_dir.join("crr.db")).expect("open the state");
    let count = |sql: &str, v: &str| -> i64 { db.query_row(sql, [v], |r| r.get(0)).expect("count") };
    let tasks_of = "SELECT COUNT(*) FROM tasks WHERE key = ?1";
    let seen = "SELECT COUNT(*) FROM seen WHERE version_id = ?1";
    assert_eq!(count(tasks_of, "k.txt"), 1, "the task of the older version is kept");
    assert_eq!((count(seen, &v1), count(seen, &v2)), (1, 1));

    env.gz
        .client
        .delete_object()
        .bucket("src-bucket")
        .key("k.txt")
        .version_id(&v1)
        .send()
        .await
        .expect("delete v1 for good");
    engine.store.prune_seen_next_scan("r").expect("reset");
    let summary = engine.run_once().await.expect("run");
    assert_eq!(summary.replicated, 0);
    assert_eq!(
        (count(seen, &v1), count(seen, &v2)),
        (0, 1),
        "v1 is gone from the source"
    );
    // Nothing was copied again, and the next scan does not take v2 for new.
    engine.run_once().await.expect("run");
    assert_eq!(key_versions(&env.sh, "dst-bucket", "k.txt").await.len(), 2);
}

/// Serving, each rule is scanned on its own: a rule whose listing is slow (a big bucket, a
/// slow endpoint) does not hold up the detection of another rule's changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_rules_scan_does_not_delay_another_rules_changes() {
    let env = Env::start().await;
    credentials();
    for b in ["slow-src", "fast-src"] {
        create_bucket(&env.gz, b, true).await;
    }
    for b in ["slow-dst", "fast-dst"] {
        create_bucket(&env.sh, b, true).await;
    }
    // The slow rule comes first: scanned in turn, every scan of the fast one would wait for it.
    let proxy = SlowProxy::start(format!("127.0.0.1:{}", env.gz.port)).await;
    let text = env
        .config_text(&[
            Rule::new("slow", "gzslow/slow-src", "sh/slow-dst"),
            Rule::new("fast", "gz/fast-src", "sh/fast-dst"),
        ])
        .replacen(
            "[[rule]]",
            &format!(
                "{}\n[[rule]]",
                common::endpoint_toml("gzslow", &env.gz.region, &proxy.url)
            ),
            1,
        );
    env.write_config_text(&text);
    let engine = open(&env).await;
    let rec = engine.reconcile(None).await.expect("reconcile");
    assert!(rec.refused.is_empty(), "{:?}", rec.refused);
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = {
        let (e, stop) = (engine.clone(), stop.clone());
        tokio::spawn(async move { e.serve(stop).await })
    };
    // From now on every answer from the slow rule's source takes 10 s: each of its scans (the
    // versioning check, then the listing) takes 20 s or more.
    proxy.set_delay(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(2)).await;
    put(&env.gz, "fast-src", "k.txt", b"quick").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if !key_versions(&env.sh, "fast-dst", "k.txt").await.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fast rule's change was not replicated within 10 s while the slow rule scanned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        get_bytes(&env.sh, "fast-dst", "k.txt").await.as_deref(),
        Some(&b"quick"[..])
    );
    proxy.set_delay(Duration::ZERO);
    stop.cancel();
    serving.await.expect("join").expect("serve");
}

/// Nobody watching, no bucket probing: a headless run never lists every bucket of every
/// endpoint. The first request for snapshots starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_are_probed_only_once_someone_watches() {
    let env = Env::start().await;
    credentials();
    create_bucket(&env.gz, "src-bucket", true).await;
    create_bucket(&env.sh, "dst-bucket", true).await;
    create_bucket(&env.sh, "no-rule-uses-it", true).await;
    env.write_config(&[rule().enabled(false)]);
    let engine = open(&env).await;
    let handle = engine.handle();
    // Time for a probe and for several samples to carry it, had it started with the handle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut snapshots = handle.snapshot();
    let first = snapshots.borrow_and_update().clone();
    assert!(
        first
            .buckets
            .iter()
            .all(|b| b.versioning.is_none() && b.error.is_none()),
        "buckets were probed before anyone watched: {:?}",
        first.buckets
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = snapshots.borrow_and_update().clone();
        if s.buckets.iter().any(|b| b.bucket == "no-rule-uses-it") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no probe after the snapshots were watched: {s:?}"
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), snapshots.changed()).await;
    }
}

/// The snapshot shows each rule bucket's versioning, and a command turns it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_versioning_is_shown_and_enabled_through_the_handle() {
    let env = Env::start().await;
    credentials();
    create_bucket(&env.gz, "src-bucket", false).await;
    create_bucket(&env.sh, "dst-bucket", true).await;
    create_bucket(&env.sh, "no-rule-uses-it", true).await;
    env.write_config(&[rule().enabled(false)]);
    let engine = open(&env).await;
    let handle = engine.handle();
    let mut snapshots = handle.snapshot();
    let state = |s: &crr::engine::Snapshot, b: &str| {
        s.buckets
            .iter()
            .find(|v| v.bucket == b)
            .and_then(|v| v.versioning.clone())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = snapshots.borrow_and_update().clone();
        if state(&s, "src-bucket").is_some() && state(&s, "dst-bucket").is_some() {
            assert_eq!(state(&s, "src-bucket").as_deref(), Some(""), "never enabled");
            assert_eq!(state(&s, "dst-bucket").as_deref(), Some("Enabled"));
            // Every bucket of an endpoint is listed, with the rules that use it (none here).
            let other = s.buckets.iter().find(|b| b.bucket == "no-rule-uses-it");
            let other = other.unwrap_or_else(|| panic!("the endpoint's other bucket is missing: {:?}", s.buckets));
            assert_eq!((other.endpoint.as_str(), other.rules.len()), ("sh", 0));
            let src = s.buckets.iter().find(|b| b.bucket == "src-bucket").expect("src");
            assert_eq!(src.rules, vec!["source of r".to_string()]);
            break;
        }
        assert!(Instant::now() < deadline, "no versioning in the snapshot: {s:?}");
        let _ = tokio::time::timeout(Duration::from_secs(1), snapshots.changed()).await;
    }
    let mut events = handle.events();
    done(
        &handle
            .send(Command::EnableVersioning {
                endpoint: "gz".into(),
                bucket: "src-bucket".into(),
            })
            .await,
    );
    next_event(
        &mut events,
        Duration::from_secs(20),
        |e| matches!(e, Event::Notice { message } if message.contains("versioning enabled on gz/src-bucket")),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while state(&snapshots.borrow_and_update(), "src-bucket").as_deref() != Some("Enabled") {
        assert!(
            Instant::now() < deadline,
            "the snapshot never showed versioning enabled"
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), snapshots.changed()).await;
    }
}

/// The UI's logic driven by keys against the engine and two real servers: a copy fails while
/// the destination bucket is missing, shows in the queue pane with its reason, and `r` on it
/// retries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_retries_a_failed_task_with_r() {
    use crr::tui::app::{App, Effect, Mode, QueueRow};
    use crr::tui::keymap::Action;
    let env = Env::start().await;
    buckets(&env).await;
    env.write_config(&[rule()]);
    let engine = open(&env).await;
    let handle = engine.handle();
    engine.reconcile(None).await.expect("reconcile");
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = {
        let (e, stop) = (engine.clone(), stop.clone());
        tokio::spawn(async move { e.serve(stop).await })
    };
    // The destination answers but has lost its bucket: copies fail and use up their attempts.
    // (An endpoint that does not answer at all makes them wait instead; tests/faults.rs.)
    env.sh
        .client
        .delete_bucket()
        .bucket("dst-bucket")
        .send()
        .await
        .expect("delete the destination bucket");
    put(&env.gz, "src-bucket", "unlucky.txt", "retry me").await;

    let mut app = App::new(Mode::Embedded, crr::store::now_ms());
    let mut snapshots = handle.snapshot();
    let mut events = handle.events();
    let mut pump = async |app: &mut App, until: &dyn Fn(&App) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            app.on_snapshot(snapshots.borrow_and_update().clone());
            while let Ok(e) = events.try_recv() {
                app.on_event(e);
            }
            if until(app) {
                return;
            }
            assert!(Instant::now() < deadline, "the UI never got there: {:?}", app.snapshot);
            let _ = tokio::time::timeout(Duration::from_millis(250), snapshots.changed()).await;
        }
    };
    app.on_action(Action::QueuePane);
    pump(&mut app, &|a: &App| !a.snapshot.recent_failures.is_empty()).await;
    let failure = app.snapshot.recent_failures[0].clone();
    assert_eq!(failure.key, "unlucky.txt");
    assert!(!failure.reason.is_empty());
    assert!(matches!(app.queue_rows().first(), Some(QueueRow::Failed(_))));

    create_bucket(&env.sh, "dst-bucket", true).await;
    let effects = app.on_action(Action::Retry);
    let [Effect::Send(command)] = effects.as_slice() else {
        panic!("{effects:?}")
    };
    app.on_reply(handle.send(command.clone()).await);
    pump(&mut app, &|a: &App| {
        a.completed.iter().any(|c| c.key == "unlucky.txt") && a.snapshot.recent_failures.is_empty()
    })
    .await;
    assert_eq!(
        get_bytes(&env.sh, "dst-bucket", "unlucky.txt").await.as_deref(),
        Some(&b"retry me"[..])
    );
    stop.cancel();
    serving.await.expect("join").expect("serve");
}

/// The rule editor's live check against the real buckets: the preflight of `crr check`, on a
/// draft that is not saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_is_preflighted_against_the_real_buckets_without_saving() {
    let env = Env::start().await;
    buckets(&env).await;
    let text = env.write_config(&[rule()]);
    let engine = open(&env).await;
    let handle = engine.handle();
    let mut events = handle.events();
    let draft = |destination: &str| RuleDraft {
        id: "more".into(),
        source: "gz/more-src".into(),
        destination: destination.into(),
        prefixes: vec![],
        operations: "all".into(),
        storage_class: None,
        historical: false,
        overwrite: "if-different".into(),
        enabled: true,
    };
    create_bucket(&env.gz, "more-src", true).await;
    create_bucket(&env.sh, "more-dst", true).await;
    for (dest, ok) in [("sh/no-such-bucket", false), ("sh/more-dst", true)] {
        let reply = handle
            .send(Command::Preflight {
                previous_id: None,
                rule: draft(dest),
            })
            .await;
        done(&reply);
        let Event::PreflightChecked { problems, .. } = next_event(
            &mut events,
            Duration::from_secs(20),
            |e| matches!(e, Event::PreflightChecked { draft, .. } if draft.destination == dest),
        )
        .await
        else {
            unreachable!()
        };
        assert_eq!(problems.is_empty(), ok, "{dest}: {problems:?}");
        if !ok {
            assert!(problems[0].contains("does not exist"), "{problems:?}");
        }
    }
    assert_eq!(env.read_config_text(), text, "a preflight writes nothing");
}
