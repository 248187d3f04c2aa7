//! Network faults and outages between `crr serve` and its endpoints (issue 9, parts 3 and 4).
//! A fault-injecting proxy (tests/netfault) sits in front of each real S3 server; crr talks
//! only to the proxies, the test talks to the servers directly.
//!
//! - Faults: 503 SlowDown, 500, connections reset half-way through a download or an upload,
//!   truncated bodies, a flipped byte, stalls and latency, drawn at random (seeded) while the
//!   source changes. Replication converges, and every version on the destination is byte for
//!   byte a version of the source: no cut or corrupted body ever became a replica.
//! - Outages: the proxy refuses every connection to the destination (then to the source) for a
//!   while. crr backs off (the connections it tried are counted and bounded), `crr status` says
//!   the endpoint is unreachable and when it last answered, nothing queued meanwhile fails, and
//!   it all replicates once the endpoint is back.
//! - Large objects resume at the part level (issue 9, part 2): after SIGKILL, and after part
//!   uploads cut off half-way, the proxy counts the UploadPart bytes crr sends: parts that
//!   arrived are not sent again, and no upload is left open.
//! - Listing pages: an endpoint that refuses to list more than 1,000 entries a page.
//!
//! `CRR_FAULT_OBJECTS` (default 40) sets how many objects the fault test writes, `CRR_FAULT_SEED`
//! its seed, and `CRR_OUTAGE_SECS` (default 15) how long each outage lasts.

mod common;
mod netfault;

use common::*;
use futures::StreamExt;
use netfault::{Kind as Fault, NetProxy, Plan};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const SRC: &str = "fault-src";
const DST: &str = "fault-dst";
const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Both servers, both buckets, a proxy in front of each, and a config whose endpoints are the
/// proxies. `engine_extra` lines go into `[engine]`.
async fn setup(dst_kind: Kind, max_attempts: u32, engine_extra: &str) -> (Env, NetProxy, NetProxy) {
    let env = Env::start_with(Kind::Moto, dst_kind).await;
    create_bucket(&env.gz, SRC, true).await;
    create_bucket(&env.sh, DST, true).await;
    let src_proxy = NetProxy::start(&env.gz.url, Plan::none()).await;
    let dst_proxy = NetProxy::start(&env.sh.url, Plan::none()).await;
    let opts = ConfigOpts {
        max_attempts,
        ..ConfigOpts::default()
    };
    let text = env
        .config_text_with(&opts, &[Rule::new("r", &format!("gz/{SRC}"), &format!("sh/{DST}"))])
        .replace("[engine]", &format!("[engine]\n{engine_extra}"));
    env.write_config_text(&through_proxies(&env, &text, &src_proxy, &dst_proxy));
    (env, src_proxy, dst_proxy)
}

/// The config `text` with its endpoints' urls pointing at the proxies.
fn through_proxies(env: &Env, text: &str, src_proxy: &NetProxy, dst_proxy: &NetProxy) -> String {
    let text = text
        .replace(
            &format!("url = \"{}\"", env.gz.url),
            &format!("url = \"{}\"", src_proxy.url),
        )
        .replace(
            &format!("url = \"{}\"", env.sh.url),
            &format!("url = \"{}\"", dst_proxy.url),
        );
    assert!(
        text.contains(&src_proxy.url) && text.contains(&dst_proxy.url),
        "the harness config changed shape: {text}"
    );
    text
}

/// Starts `crr serve` and waits until the rule is enabled (its enable point recorded).
async fn serve_enabled(env: &Env) -> Serve {
    let mut serve = env.spawn_serve();
    let enabled = wait_until(Duration::from_secs(60), || async {
        let out = env.crr(&["status", "--json"]).await;
        out.code == 0 && find_rule_status(&out.json(), "r")["state"] == "enabled"
    })
    .await;
    assert!(
        enabled && serve.try_exit_code().is_none(),
        "the rule was not enabled\n{}",
        serve.output()
    );
    serve
}

/// The entry of one endpoint in `crr status --json`.
fn endpoint(status: &serde_json::Value, name: &str) -> serde_json::Value {
    status["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no `endpoints` array: {status}"))
        .iter()
        .find(|e| e["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("endpoint {name} not in status: {status}"))
}

/// Every key's latest on the destination is the source's latest (bytes), or both hide it.
async fn converged(env: &Env, want: &BTreeMap<String, Option<Vec<u8>>>) -> bool {
    for (key, body) in want {
        if get_bytes(&env.sh, DST, key).await != *body {
            return false;
        }
    }
    true
}

/// Checks that every version on the destination is, byte for byte, a version of the source
/// (no cut or corrupted body was ever kept), that every latest replica carries the source's
/// headers, and returns how many replica versions were checked.
async fn check_replicas(env: &Env, want: &BTreeMap<String, Option<Vec<u8>>>) -> usize {
    let mut checked = 0;
    for (key, body) in want {
        let source_bodies: Vec<Vec<u8>> = {
            let mut all = Vec::new();
            for v in key_versions(&env.gz, SRC, key)
                .await
                .iter()
                .filter(|v| !v.is_delete_marker)
            {
                all.push(get_version_bytes(&env.gz, SRC, key, &v.version_id).await);
            }
            all
        };
        for v in key_versions(&env.sh, DST, key)
            .await
            .iter()
            .filter(|v| !v.is_delete_marker)
        {
            let got = get_version_bytes(&env.sh, DST, key, &v.version_id).await;
            assert!(
                source_bodies.contains(&got),
                "{key}: destination version {} ({} bytes) is no version of the source: a cut or \
                 corrupted body was kept",
                v.version_id,
                got.len()
            );
            checked += 1;
        }
        if body.is_some() {
            let (s, d) = (head(&env.gz, SRC, key).await, head(&env.sh, DST, key).await);
            let (s, d) = (s.expect("source head"), d.expect("replica head"));
            assert_same_headers(key, &s, &d);
        }
    }
    checked
}

async fn faults_converge(dst_kind: Kind) {
    let objects = env_number("CRR_FAULT_OBJECTS", 40) as usize;
    let seed = env_number("CRR_FAULT_SEED", fastrand::u64(..));
    eprintln!("CRR_FAULT_SEED={seed} (destination {})", dst_kind.label());
    let (env, src_proxy, dst_proxy) = setup(dst_kind, 12, "stall_timeout = \"2s\"\npart_concurrency = 2").await;
    let mut serve = serve_enabled(&env).await;

    // Downloads from the source meet every kind of fault; uploads to the destination are cut,
    // refused, slowed.
    src_proxy.set_plan(
        Plan::none()
            .seed(seed)
            .with(Fault::SlowDown, 40)
            .with(Fault::InternalError, 40)
            .with(Fault::Latency, 60)
            .with(Fault::ResetMidBody, 80)
            .with(Fault::TruncatedBody, 80)
            .with(Fault::CorruptBody, 150)
            .with(Fault::Stall, 25),
    );
    dst_proxy.set_plan(
        Plan::none()
            .seed(seed ^ 0x5eed)
            .with(Fault::SlowDown, 50)
            .with(Fault::InternalError, 50)
            .with(Fault::Latency, 60)
            .with(Fault::ResetMidUpload, 80)
            .with(Fault::ResetMidBody, 50)
            .with(Fault::CorruptBody, 50),
    );

    let mut want: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    let opts = PutOpts {
        content_type: Some("application/octet-stream".into()),
        metadata: pairs(&[("batch", "faults")]),
        ..PutOpts::default()
    };
    for i in 0..objects {
        let key = format!("obj/{i:03}.bin");
        let body = pseudo_random_bytes(8 * KIB + i * 13 * KIB, seed.wrapping_add(i as u64));
        put_with(&env.gz, SRC, &key, body.clone(), &opts).await;
        want.insert(key, Some(body));
    }
    // Overwrites and a delete of some of them.
    for i in [1usize, 5] {
        let key = format!("obj/{i:03}.bin");
        let body = pseudo_random_bytes(40 * KIB, seed.wrapping_add(1000 + i as u64));
        put_with(&env.gz, SRC, &key, body.clone(), &opts).await;
        want.insert(key, Some(body));
    }
    delete(&env.gz, SRC, "obj/002.bin").await;
    want.insert("obj/002.bin".into(), None);
    // Multipart-sized: uploaded in parts of another size than crr's (its ETag vouches for the
    // parts as the source cut them), and in one PUT (its ETag is the whole object's MD5). Their
    // part reads are corrupted too.
    let big = pseudo_random_bytes(13 * MIB + 777, seed ^ 0xb16);
    put_multipart(&env.gz, SRC, "big/parts.bin", &big, 6 * MIB).await;
    want.insert("big/parts.bin".into(), Some(big));
    let whole = pseudo_random_bytes(11 * MIB + 555, seed ^ 0xb17);
    put_with(&env.gz, SRC, "big/whole.bin", whole.clone(), &opts).await;
    want.insert("big/whole.bin".into(), Some(whole));

    let started = Instant::now();
    let done = wait_until(Duration::from_secs(240), || converged(&env, &want)).await;
    let took = started.elapsed();
    let status = env.status_json().await;
    let mut differ = Vec::new();
    if !done {
        let log = std::fs::read_to_string(env.state_dir.join("crr.log")).unwrap_or_default();
        for (key, body) in &want {
            let got = get_bytes(&env.sh, DST, key).await;
            if got != *body {
                for line in log.lines().filter(|l| l.contains(key.as_str())) {
                    differ.push(format!("  crr.log: {line}"));
                }
                differ.push(format!(
                    "{key}: source {:?} bytes, destination {:?} bytes",
                    body.as_ref().map(Vec::len),
                    got.as_ref().map(Vec::len)
                ));
            }
        }
    }
    assert!(
        done,
        "replication did not converge under faults in {took:?}: {differ:#?}\nstatus: {status}\nqueue:\n{}\n{}",
        env.crr(&["queue"]).await.stdout,
        serve.output()
    );
    let replicas = check_replicas(&env, &want).await;
    let rule = find_rule_status(&status, "r");
    assert_eq!(rule["failed_tasks"], 0, "{status:#}");
    assert!(serve.try_exit_code().is_none(), "crr serve died\n{}", serve.output());
    assert_eq!(serve.terminate(Duration::from_secs(30)).await, 0);

    let mut by_kind: BTreeMap<Fault, u64> = BTreeMap::new();
    for (k, n) in src_proxy.injected().into_iter().chain(dst_proxy.injected()) {
        *by_kind.entry(k).or_default() += n;
    }
    let total: u64 = by_kind.values().sum();
    eprintln!(
        "faults ({} destination, seed {seed}): {total} injected: {by_kind:?}; source proxy {:?}, \
         destination proxy {:?}; {} requests through the proxies; {replicas} replica versions \
         checked byte for byte, {} keys converged in {took:?}",
        dst_kind.label(),
        src_proxy.injected(),
        dst_proxy.injected(),
        src_proxy.requests() + dst_proxy.requests(),
        want.len()
    );
    assert!(
        total >= 10,
        "too few faults were injected to mean anything: {by_kind:?}"
    );
    for kind in [Fault::CorruptBody, Fault::TruncatedBody, Fault::ResetMidBody] {
        assert!(
            by_kind.get(&kind).copied().unwrap_or(0) > 0,
            "no {kind:?} was injected: {by_kind:?} (seed {seed})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_network_faults_replication_converges_and_keeps_no_bad_body_moto() {
    faults_converge(Kind::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_network_faults_replication_converges_and_keeps_no_bad_body_seaweedfs() {
    faults_converge(Kind::Weed).await;
}

/// Which side is down.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Side {
    Source,
    Destination,
}

async fn outage(side: Side) {
    let outage_secs = env_number("CRR_OUTAGE_SECS", 15);
    // max_attempts = 3: an outage must not use up a task's attempts.
    let (env, src_proxy, dst_proxy) = setup(Kind::Moto, 3, "").await;
    let mut serve = serve_enabled(&env).await;
    let (down_proxy, down_name) = match side {
        Side::Source => (&src_proxy, "gz"),
        Side::Destination => (&dst_proxy, "sh"),
    };

    let mut want: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    for i in 0..3 {
        let key = format!("before/{i}.txt");
        let body = format!("before the outage {i}").into_bytes();
        put(&env.gz, SRC, &key, body.clone()).await;
        want.insert(key, Some(body));
    }
    assert!(
        wait_until(Duration::from_secs(60), || converged(&env, &want)).await,
        "the first objects were not replicated\n{}",
        serve.output()
    );

    // The outage.
    let down_at = crr::store::rfc3339(crr::store::now_ms());
    down_proxy.set_refusing(true);
    let outage_started = Instant::now();
    for i in 0..10 {
        let key = format!("during/{i:02}.txt");
        let body = format!("written while {down_name} was down: {i}").into_bytes();
        put(&env.gz, SRC, &key, body.clone()).await;
        want.insert(key, Some(body));
    }
    delete(&env.gz, SRC, "before/0.txt").await;
    want.insert("before/0.txt".into(), None);

    let deadline = Instant::now() + Duration::from_secs(outage_secs + 30);
    let seen_unreachable = loop {
        let status = env.status_json().await;
        if endpoint(&status, down_name)["state"] == "unreachable" {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "`crr status` never said {down_name} is unreachable: {status:#}\n{}",
            serve.output()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let e = endpoint(&seen_unreachable, down_name);
    assert_eq!(e["reachable"], false, "{e:#}");
    let last = e["last_success"]
        .as_str()
        .unwrap_or_else(|| panic!("no last success: {e:#}"));
    assert!(
        last <= down_at.as_str(),
        "last success {last} is after the outage began at {down_at}"
    );
    assert!(e["down_since"].as_str().is_some_and(|d| d >= last), "{e:#}");
    let other = if down_name == "gz" { "sh" } else { "gz" };
    assert_ne!(
        endpoint(&seen_unreachable, other)["state"],
        "unreachable",
        "{seen_unreachable:#}"
    );
    let text = env.crr(&["status"]).await;
    text.assert_ok();
    let line = text
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with(down_name) && l.contains("unreachable"))
        .unwrap_or_else(|| panic!("`crr status` does not show {down_name} unreachable:\n{}", text.stdout));
    assert!(line.contains(&format!("last success {last}")), "{line}");

    // Ride it out.
    let left = Duration::from_secs(outage_secs).saturating_sub(outage_started.elapsed());
    tokio::time::sleep(left).await;
    let during = env.status_json().await;
    let rule = find_rule_status(&during, "r");
    assert_eq!(rule["failed_tasks"], 0, "a task failed during the outage: {during:#}");
    let queue = env.crr(&["queue", "--json"]).await;
    queue.assert_ok();
    let queued = queue.json()["tasks"].as_array().cloned().unwrap_or_default();
    if side == Side::Destination {
        assert!(
            queued.len() >= 10,
            "the changes made during the outage should wait in the queue: {queued:#?}"
        );
    }
    for t in &queued {
        assert!(
            t["attempts"].as_u64().unwrap_or(0) <= 1,
            "the outage used up a task's attempts: {t}"
        );
    }
    let refused = down_proxy.refused();
    let secs = outage_started.elapsed().as_secs_f64();
    down_proxy.set_refusing(false);
    let back = Instant::now();

    let done = wait_until(Duration::from_secs(90), || converged(&env, &want)).await;
    let took = back.elapsed();
    let status = env.status_json().await;
    assert!(
        done,
        "what was written during the outage did not replicate once {down_name} was back\n{status:#}\n{}",
        serve.output()
    );
    let replicas = check_replicas(&env, &want).await;
    let rule = find_rule_status(&status, "r");
    assert_eq!(rule["failed_tasks"], 0, "{status:#}");
    assert!(
        wait_until(Duration::from_secs(30), || async {
            endpoint(&env.status_json().await, down_name)["state"] == "reachable"
        })
        .await,
        "{down_name} is back but status does not say so: {:#}",
        env.status_json().await
    );
    eprintln!(
        "outage of {down_name} ({side:?}) for {secs:.1}s: {refused} connection(s) refused \
         ({:.2}/s); all {} keys converged {took:?} after it ended; {replicas} replica versions checked",
        refused as f64 / secs,
        want.len()
    );
    // Backing off: a handful of probes (each up to 3 tries by the SDK) at growing intervals,
    // scans slowing down, and the outage prober's one question every 2 s; not a loop. A hot loop
    // makes hundreds a second.
    let bound = 30.0 + 3.0 * secs;
    assert!(
        (refused as f64) <= bound,
        "{refused} connections to {down_name} in {secs:.1}s of outage: more than {bound:.0}, a hot loop"
    );
    assert!(refused > 0, "crr never tried {down_name} during the outage");

    // Stopped, `crr status` reads the last known state from the state directory.
    assert_eq!(serve.terminate(Duration::from_secs(30)).await, 0);
    let offline = env.status_json().await;
    let e = endpoint(&offline, down_name);
    assert!(
        e["last_success"].as_str().is_some_and(|t| t >= down_at.as_str()),
        "without a running engine, status should still know when {down_name} last answered: {e:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_outage_is_ridden_out_and_shown() {
    outage(Side::Destination).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_outage_is_ridden_out_and_shown() {
    outage(Side::Source).await;
}

/// Listings ask for more than 1,000 entries a page, which S3 and most servers cap at 1,000 and
/// some honour (moto builds every page from the whole bucket, so fewer pages cost much less). A
/// server that refuses such a request with 400 instead is asked again with 1,000 a page, from
/// then on: the migration still lists the source and, under "if-different", the destination
/// over several pages, and copies exactly what the destination lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_refuses_large_listing_pages_is_listed_1000_at_a_time() {
    let env = Env::start_with(Kind::Moto, Kind::Moto).await;
    create_bucket(&env.gz, SRC, true).await;
    create_bucket(&env.sh, DST, true).await;
    let total = 1_250;
    let key = |i: usize| format!("k/{i:05}");
    let body = |i: usize| format!("object {i}");
    let on_both: Vec<usize> = (0..total).step_by(5).collect();
    let (gz, sh) = (&env.gz, &env.sh);
    futures::stream::iter(0..total)
        .for_each_concurrent(16, |i| async move {
            put(gz, SRC, &key(i), body(i)).await;
        })
        .await;
    futures::stream::iter(on_both.clone())
        .for_each_concurrent(16, |i| async move {
            put(sh, DST, &key(i), body(i)).await;
        })
        .await;
    let src_proxy = NetProxy::start(&env.gz.url, Plan::none().max_keys(1000)).await;
    let dst_proxy = NetProxy::start(&env.sh.url, Plan::none().max_keys(1000)).await;
    let rule = Rule {
        overwrite: Some("if-different".into()),
        ..Rule::new("r", &format!("gz/{SRC}"), &format!("sh/{DST}")).historical(true)
    };
    let text = env.config_text_with(&ConfigOpts::default(), &[rule]);
    env.write_config_text(&through_proxies(&env, &text, &src_proxy, &dst_proxy));

    env.run_once().await;
    let m = env.rule_status("r").await["migration"].clone();
    assert_eq!(m["state"], "completed", "{m}");
    assert_eq!(m["skipped_objects"].as_u64(), Some(on_both.len() as u64), "{m}");
    assert_eq!(m["done_objects"].as_u64(), Some((total - on_both.len()) as u64), "{m}");
    let keys = list_keys(&env.sh, DST).await;
    assert_eq!(keys.len(), total, "the destination holds {} keys", keys.len());
    for i in (0..total).step_by(31) {
        assert_eq!(
            get_bytes(&env.sh, DST, &key(i)).await.as_deref(),
            Some(body(i).as_bytes())
        );
    }
    // One refusal per endpoint, then pages of 1,000: the source's listing (the baseline and the
    // migration at once) took two pages; the destination's 250 keys fit in one.
    let (src_listed, src_refused) = src_proxy.listings();
    let (dst_listed, dst_refused) = dst_proxy.listings();
    assert_eq!(
        (src_refused, dst_refused),
        (1, 1),
        "listings refused (source, destination)"
    );
    assert!(src_listed >= 2, "the source was listed in {src_listed} requests");
    assert!(dst_listed >= 1, "the destination was listed in {dst_listed} requests");
    let log = std::fs::read_to_string(env.state_dir.join("crr.log")).unwrap_or_default();
    assert!(log.contains("listings ask for 1000 entries a page"), "{log}");
}

const PART: u64 = 5 * MIB as u64;

/// Engine settings (the harness sets 5 MiB parts) for a 40 MiB object in 8 parts, 2 at a time,
/// slowed down so that a kill lands half-way.
const PARTS_ENGINE: &str = "part_concurrency = 2\nbandwidth_limit = \"8MiB\"";

/// After the copy: the destination's latest is the object, it holds exactly one version of it,
/// no upload is left open, and status counts no failed task.
async fn one_replica_and_no_upload_left(env: &Env, key: &str, body: &[u8], serve: &Serve) {
    assert!(
        wait_until(Duration::from_secs(120), || async {
            get_bytes(&env.sh, DST, key).await.as_deref() == Some(body)
        })
        .await,
        "the object was not replicated\n{}",
        serve.output()
    );
    let versions: Vec<_> = key_versions(&env.sh, DST, key)
        .await
        .into_iter()
        .filter(|v| !v.is_delete_marker)
        .collect();
    assert_eq!(versions.len(), 1, "replica versions of {key}: {versions:?}");
    let open = open_uploads(&env.sh, DST).await;
    assert!(open.is_empty(), "uploads left open on the destination: {open:?}");
    let status = env.status_json().await;
    let r = find_rule_status(&status, "r");
    assert_eq!(r["failed_tasks"].as_u64(), Some(0), "{r}");
}

/// A large object resumes at the part level after SIGKILL: the parts the destination
/// acknowledged before the kill are not sent again (the proxy counts every UploadPart byte), and
/// the upload the first process opened is the one completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_a_large_object_resumes_without_sending_its_parts_again() {
    let (env, _src_proxy, dst_proxy) = setup(Kind::Moto, 10, PARTS_ENGINE).await;
    let mut serve = serve_enabled(&env).await;
    let size = 8 * PART as usize;
    let body = pseudo_random_bytes(size, 7);
    put(&env.gz, SRC, "big.bin", body.clone()).await;

    // Kill once the destination has acknowledged 5 of the 8 parts.
    assert!(
        wait_until(Duration::from_secs(60), || async { dst_proxy.parts().1 >= 5 }).await,
        "the upload did not get going: {:?}\n{}",
        dst_proxy.parts(),
        serve.output()
    );
    serve.kill();
    let (sent_before, acked_before) = dst_proxy.parts();
    let open = open_uploads(&env.sh, DST).await;
    assert_eq!(open.len(), 1, "the killed process left its upload open: {open:?}");
    if acked_before >= 8 {
        // It finished before the kill landed; nothing to resume (rare on a busy machine).
        eprintln!("the copy finished before the kill: nothing to resume");
    }

    let serve = env.spawn_serve();
    one_replica_and_no_upload_left(&env, "big.bin", &body, &serve).await;
    let (sent_total, _) = dst_proxy.parts();
    let sent_after = sent_total - sent_before;
    // Parts acknowledged before the kill but not yet recorded (at most the 2 in flight) may go
    // again; the others must not.
    let kept = acked_before.min(8).saturating_sub(2);
    assert!(
        sent_after <= size as u64 - kept * PART,
        "after the restart {sent_after} bytes of parts were sent; {acked_before} of 8 parts were \
         acknowledged before the kill, so at most {} should have been",
        size as u64 - kept * PART
    );
    eprintln!(
        "parts: {acked_before} acknowledged before the kill, {sent_before} bytes sent before it, {sent_after} after"
    );
}

/// Connections dropped half-way through part uploads: only the parts cut off are sent again,
/// not the whole object, and the parts in flight beside a failed one are finished and kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_part_uploads_send_only_those_parts_again() {
    let (env, _src_proxy, dst_proxy) = setup(Kind::Moto, 20, PARTS_ENGINE).await;
    let serve = serve_enabled(&env).await;
    dst_proxy.set_plan(Plan::none().with(Fault::ResetMidUpload, 250).seed(11));
    let size = 8 * PART as usize;
    let body = pseudo_random_bytes(size, 8);
    put(&env.gz, SRC, "big.bin", body.clone()).await;
    one_replica_and_no_upload_left(&env, "big.bin", &body, &serve).await;
    let resets = dst_proxy.injected().get(&Fault::ResetMidUpload).copied().unwrap_or(0);
    let (sent, _) = dst_proxy.parts();
    assert!(resets > 0, "no upload was cut off");
    // Each cut-off upload costs the half part it sent (the proxy cuts it there), and nothing
    // else: the parts in flight beside it are finished and kept, the others not sent again.
    let bound = size as u64 + resets * (PART / 2) + MIB as u64;
    assert!(
        sent <= bound,
        "{sent} bytes of parts were sent for a {size}-byte object with {resets} uploads cut off (at most {bound})"
    );
    eprintln!("{resets} part uploads cut off; {sent} bytes of parts sent for {size}");
}

/// The ETag of the latest version of `key`, without quotes.
async fn etag_of(s3: &Server, bucket: &str, key: &str) -> String {
    let h = s3.client.head_object().bucket(bucket).key(key).send().await;
    let h = h.unwrap_or_else(|e| panic!("head {bucket}/{key} on {}: {e:?}", s3.name));
    h.e_tag().unwrap_or_default().trim_matches('"').to_string()
}

/// A byte flipped in the part reads of a multipart copy is caught before the upload becomes a
/// version: the parts read must add up to what the source's ETag says (the MD5 of the part MD5s
/// for an object uploaded in parts, which crr cuts where the source's are; the whole object's
/// MD5 for one uploaded in one PUT). The parts read wrong are read again, found to differ from
/// what was sent, and sent again; no other part is.
async fn corrupted_part_reads_are_caught(uploaded_in_parts: bool) {
    let (env, src_proxy, dst_proxy) = setup(Kind::Moto, 10, "part_concurrency = 2").await;
    let serve = serve_enabled(&env).await;
    // The first two reads of the object's bytes (parts: every read is a range) have a byte
    // flipped.
    src_proxy.set_plan(
        Plan::none()
            .with(Fault::CorruptBody, 1000)
            .at_most(Fault::CorruptBody, 2),
    );
    let size = 4 * PART as usize + 1234;
    let body = pseudo_random_bytes(size, 21);
    let source_part = if uploaded_in_parts {
        put_multipart(&env.gz, SRC, "big.bin", &body, 6 * MIB).await;
        6 * MIB as u64
    } else {
        put(&env.gz, SRC, "big.bin", body.clone()).await;
        PART
    };
    one_replica_and_no_upload_left(&env, "big.bin", &body, &serve).await;

    let corrupted = src_proxy.injected().get(&Fault::CorruptBody).copied().unwrap_or(0);
    assert_eq!(corrupted, 2, "part reads corrupted");
    let (sent, _) = dst_proxy.parts();
    // The corrupted parts went to the destination (their bytes were what crr read) and went
    // again once caught; nothing else went twice.
    assert!(
        sent > size as u64 && sent <= size as u64 + 2 * source_part,
        "{sent} bytes of parts were sent for a {size}-byte object, 2 of whose part reads were corrupted"
    );
    let log = std::fs::read_to_string(env.state_dir.join("crr.log")).unwrap_or_default();
    assert!(
        log.contains("differed from what was sent"),
        "the log does not say why parts went again:\n{log}"
    );
    if uploaded_in_parts {
        // Cut where the source's parts are, the replica carries the source's ETag.
        assert_eq!(
            etag_of(&env.sh, DST, "big.bin").await,
            etag_of(&env.gz, SRC, "big.bin").await,
            "the replica's ETag"
        );
    }
    eprintln!("{corrupted} part reads corrupted; {sent} bytes of parts sent for {size}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_part_reads_of_an_object_uploaded_in_parts_are_caught() {
    corrupted_part_reads_are_caught(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_part_reads_of_an_object_uploaded_whole_are_caught() {
    corrupted_part_reads_are_caught(false).await;
}

/// A rule that copies what the source holds (`historical = true`), through the proxies, with
/// the large object below already there and its copy slowed down (8 MiB/s, 2 parts at a time).
async fn migrating_a_large_object(body: &[u8]) -> (Env, NetProxy, NetProxy) {
    let env = Env::start_with(Kind::Moto, Kind::Moto).await;
    create_bucket(&env.gz, SRC, true).await;
    create_bucket(&env.sh, DST, true).await;
    put(&env.gz, SRC, "big.bin", body.to_vec()).await;
    let src_proxy = NetProxy::start(&env.gz.url, Plan::none()).await;
    let dst_proxy = NetProxy::start(&env.sh.url, Plan::none()).await;
    let rule = Rule::new("r", &format!("gz/{SRC}"), &format!("sh/{DST}")).historical(true);
    let text = env
        .config_text_with(&ConfigOpts::default(), &[rule])
        .replace("[engine]", &format!("[engine]\n{PARTS_ENGINE}"));
    env.write_config_text(&through_proxies(&env, &text, &src_proxy, &dst_proxy));
    (env, src_proxy, dst_proxy)
}

/// Waits until the destination has acknowledged `parts` parts of the upload.
async fn parts_acknowledged(dst_proxy: &NetProxy, parts: u64, serve: &Serve) {
    assert!(
        wait_until(Duration::from_secs(60), || async { dst_proxy.parts().1 >= parts }).await,
        "the upload did not get going: {:?}\n{}",
        dst_proxy.parts(),
        serve.output()
    );
}

/// A migration's copy of a large object, cut off by SIGKILL half-way, is overtaken by a newer
/// version of the key written meanwhile: the old version never becomes a replica, the upload it
/// left open is aborted, and the newer version is replicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_copy_leaves_no_upload_open() {
    let size = 8 * PART as usize;
    let old = pseudo_random_bytes(size, 31);
    let (env, _src_proxy, dst_proxy) = migrating_a_large_object(&old).await;
    let mut serve = env.spawn_serve();
    parts_acknowledged(&dst_proxy, 2, &serve).await;
    serve.kill();
    assert_eq!(open_uploads(&env.sh, DST).await.len(), 1, "the killed copy's upload");

    let new = b"written while crr was down".to_vec();
    put(&env.gz, SRC, "big.bin", new.clone()).await;
    let serve = env.spawn_serve();
    one_replica_and_no_upload_left(&env, "big.bin", &new, &serve).await;
    let log = std::fs::read_to_string(env.state_dir.join("crr.log")).unwrap_or_default();
    assert!(
        log.contains("a newer change of this key"),
        "the migration's copy was not found superseded:\n{log}"
    );
}

/// Cancelling a migration while it copies a large object aborts the object's upload: no part
/// stays billed on the destination, and no version appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_copy_leaves_no_upload_open() {
    let size = 8 * PART as usize;
    let body = pseudo_random_bytes(size, 32);
    let (env, _src_proxy, dst_proxy) = migrating_a_large_object(&body).await;
    let serve = env.spawn_serve();
    parts_acknowledged(&dst_proxy, 2, &serve).await;
    env.crr(&["migrate", "cancel", "r"]).await.assert_ok();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            open_uploads(&env.sh, DST).await.is_empty()
        })
        .await,
        "the cancelled copy's upload was left open: {:?}\n{}",
        open_uploads(&env.sh, DST).await,
        serve.output()
    );
    // Nothing the cancelled copy sent may still become a version.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        get_bytes(&env.sh, DST, "big.bin").await,
        None,
        "a cancelled copy became a replica"
    );
    assert!(open_uploads(&env.sh, DST).await.is_empty());
}
