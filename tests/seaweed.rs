//! Replication against a second, independent S3 implementation (DESIGN.md section 10):
//! SeaweedFS as the source with moto as the destination, and moto as the source with SeaweedFS
//! as the destination. Each direction runs the key scenarios of tests/replication.rs on one pair
//! of servers (a SeaweedFS start costs seconds), and a fault test kills `crr serve` with SIGKILL
//! at random moments while the source keeps changing.

mod common;

use futures::StreamExt;
use std::cell::Cell;
use std::time::{Duration, Instant};

use common::*;

const SRC: &str = "weed-src";
const DST: &str = "weed-dst";
const SCOPED_SRC: &str = "scoped-src";
const SCOPED_DST: &str = "scoped-dst";

/// Keys with characters that need care in URLs, signatures and XML, and an empty object.
const ODD_KEYS: [(&str, &str); 8] = [
    ("with space/and more spaces.txt", "spaces"),
    ("plus+sign+key", "plus"),
    ("percent%20literal%2F", "percent"),
    ("hash#fragment", "hash"),
    ("question?mark=1&x=y", "question"),
    ("dir/ünïcødé 文件.txt", "unicode 文件"),
    ("empty/zero-byte", ""),
    ("trailing/dot.", "dot"),
];

/// Above the harness's 5MiB multipart_threshold, and not a multiple of its 5MiB part_size.
const BIG: usize = 12 * 1024 * 1024 + 12_345;

fn src_ref(bucket: &str) -> String {
    format!("gz/{bucket}")
}

fn dst_ref(bucket: &str) -> String {
    format!("sh/{bucket}")
}

/// `gz` plays the source, `sh` the destination; both buckets versioned.
async fn start(source: Kind, destination: Kind, pairs: &[(&str, &str)]) -> Env {
    let env = Env::start_with(source, destination).await;
    for (src, dst) in pairs {
        create_bucket(&env.gz, src, true).await;
        create_bucket(&env.sh, dst, true).await;
    }
    env
}

/// The precise-replica object: every header DESIGN section 4 names, metadata and tags.
fn precise_opts() -> PutOpts {
    PutOpts {
        content_type: Some("text/csv; charset=utf-8".into()),
        cache_control: Some("max-age=3600, public".into()),
        content_disposition: Some("attachment; filename=\"report.csv\"".into()),
        content_encoding: Some("gzip".into()),
        content_language: Some("zh-CN".into()),
        expires: Some(4_102_444_800), // 2100-01-01T00:00:00Z
        metadata: pairs(&[("owner", "alice"), ("project", "crr-test")]),
        tags: pairs(&[("team", "storage"), ("env", "test run")]),
        storage_class: None,
    }
}

/// The latest entry of `key` on the destination is a delete marker, GetObject answers 404, and
/// the one replicated version is kept with the bytes `kept`.
async fn assert_hidden_by_marker(dst: &Server, key: &str, kept: &[u8]) {
    assert!(
        get_bytes(dst, DST, key).await.is_none(),
        "{key}: the destination's latest should be a delete marker (GetObject 404)"
    );
    let entries = key_versions(dst, DST, key).await;
    let latest: Vec<&VersionEntry> = entries.iter().filter(|e| e.is_latest).collect();
    assert!(
        latest.len() == 1 && latest[0].is_delete_marker,
        "{key}: the latest entry on the destination should be a delete marker: {entries:?}"
    );
    let versions: Vec<&VersionEntry> = entries.iter().filter(|e| !e.is_delete_marker).collect();
    assert_eq!(
        versions.len(),
        1,
        "{key}: the replicated version is kept on the destination: {entries:?}"
    );
    assert_eq!(
        get_version_bytes(dst, DST, key, &versions[0].version_id).await,
        kept,
        "{key}: the kept version's bytes"
    );
}

/// The scenarios of tests/replication.rs, in four runs on one pair of servers: the enable point;
/// precise replicas (bytes, headers, metadata, tags), odd keys, a zero-byte object, multipart
/// sizes (one PUT and a multipart upload at the source) and prefix scope; delete markers under
/// `operations = "all"`; deletes of keys the destination never held.
async fn replicates_every_change(source: Kind, destination: Kind) {
    let env = start(source, destination, &[(SRC, DST), (SCOPED_SRC, SCOPED_DST)]).await;
    let (gz, sh) = (&env.gz, &env.sh);

    // Before the enable point.
    put(gz, SRC, "before/old.txt", "written before the rule ran").await;
    put(gz, SRC, "both.txt", "old version").await;
    put(gz, SCOPED_SRC, "logs/before.log", "old").await;
    env.write_config(&[
        Rule::new("all", &src_ref(SRC), &dst_ref(DST)).operations("all"),
        Rule::new("scoped", &src_ref(SCOPED_SRC), &dst_ref(SCOPED_DST)).prefixes(&["logs/", "img/"]),
    ]);
    env.run_once().await;
    for bucket in [DST, SCOPED_DST] {
        assert!(
            keys_with_versions(sh, bucket).await.is_empty(),
            "objects that existed at the enable point must not be replicated to {bucket}"
        );
    }

    // Puts after the enable point.
    put(gz, SRC, "after/new.txt", "written after the enable point").await;
    put(gz, SRC, "both.txt", "new version").await;
    let csv = b"id,name\n1,alpha\n2,beta\n".to_vec();
    put_with(gz, SRC, "reports/2024.csv", csv.clone(), &precise_opts()).await;
    for (key, body) in ODD_KEYS {
        put(gz, SRC, key, body).await;
    }
    let big = pseudo_random_bytes(BIG, 7);
    let big_opts = PutOpts {
        content_type: Some("application/x-big".into()),
        metadata: pairs(&[("kind", "large")]),
        ..PutOpts::default()
    };
    put_with(gz, SRC, "big/one-put.bin", big.clone(), &big_opts).await;
    let parted = pseudo_random_bytes(BIG + 1, 8);
    put_multipart(gz, SRC, "big/multipart.bin", &parted, 6 * 1024 * 1024).await;
    put(gz, SRC, "doomed.txt", "first").await;
    let inside = [
        ("logs/app.log", "log line"),
        ("img/cat.png", "meow"),
        ("logs/2024/01.log", "deep"),
    ];
    let outside = [
        ("other/file.txt", "no"),
        ("logsx/almost.txt", "no"),
        ("LOGS/upper.txt", "no"),
    ];
    for (k, v) in inside.iter().chain(outside.iter()) {
        put(gz, SCOPED_SRC, k, *v).await;
    }
    env.run_once().await;

    // Enable point: only what was written after it.
    assert_not_replicated(sh, DST, "before/old.txt").await;
    assert_not_replicated(sh, SCOPED_DST, "logs/before.log").await;
    assert_replica_bytes(sh, DST, "after/new.txt", b"written after the enable point").await;
    assert_replica_bytes(sh, DST, "both.txt", b"new version").await;
    let both = key_versions(sh, DST, "both.txt").await;
    assert_eq!(
        both.len(),
        1,
        "only the version written after the enable point: {both:?}"
    );
    // A precise replica.
    assert_replica_bytes(sh, DST, "reports/2024.csv", &csv).await;
    let src_head = head(gz, SRC, "reports/2024.csv").await.expect("source head");
    let dst_head = head(sh, DST, "reports/2024.csv").await.expect("destination head");
    assert!(
        src_head.expires.is_some(),
        "the source should keep Expires: {src_head:?}"
    );
    assert_eq!(src_head.metadata.len(), 2, "source metadata as put: {src_head:?}");
    assert_same_headers("reports/2024.csv", &src_head, &dst_head);
    let src_tags = tags(gz, SRC, "reports/2024.csv").await;
    assert_eq!(src_tags.len(), 2, "source tags as put: {src_tags:?}");
    assert_eq!(tags(sh, DST, "reports/2024.csv").await, src_tags, "tags");
    // Odd keys and the zero-byte object.
    for (key, body) in ODD_KEYS {
        assert_replica_bytes(sh, DST, key, body.as_bytes()).await;
    }
    let empty = head(sh, DST, "empty/zero-byte").await.expect("zero-byte replica");
    assert_eq!(empty.content_length, Some(0), "zero-byte replica");
    // Multipart sizes: exactly one version each, nothing half-written.
    for (key, body) in [("big/one-put.bin", &big), ("big/multipart.bin", &parted)] {
        assert_replica_bytes(sh, DST, key, body).await;
        let versions = key_versions(sh, DST, key).await;
        assert_eq!(versions.len(), 1, "{key}: exactly one version: {versions:?}");
        let src_head = head(gz, SRC, key).await.expect("source head");
        let dst_head = head(sh, DST, key).await.expect("destination head");
        assert_same_headers(key, &src_head, &dst_head);
    }
    let open = open_uploads(sh, DST).await;
    assert!(open.is_empty(), "no multipart upload may stay open: {open:?}");
    // Prefix scope.
    for (k, v) in &inside {
        assert_replica_bytes(sh, SCOPED_DST, k, v.as_bytes()).await;
    }
    for (k, _) in &outside {
        assert_not_replicated(sh, SCOPED_DST, k).await;
    }
    let mut want: Vec<String> = inside.iter().map(|(k, _)| k.to_string()).collect();
    want.sort();
    assert_eq!(keys_with_versions(sh, SCOPED_DST).await, want, "the scoped destination");
    // The destination holds exactly the keys written after the enable point.
    let mut want: Vec<String> = ["after/new.txt", "both.txt", "reports/2024.csv", "big/one-put.bin"]
        .into_iter()
        .chain(["big/multipart.bin", "doomed.txt"])
        .chain(ODD_KEYS.iter().map(|(k, _)| *k))
        .map(str::to_string)
        .collect();
    want.sort();
    assert_eq!(
        list_keys(sh, DST).await,
        want,
        "the destination holds exactly these keys"
    );
    // Status counts one per version copied.
    let status = env.rule_status("all").await;
    assert_eq!(status["replicated_objects"], want.len(), "{status}");
    assert_eq!(status["failed_tasks"], 0, "{status}");
    assert_eq!(env.rule_status("scoped").await["replicated_objects"], inside.len());

    // Delete markers, also for a put and a delete (and delete then put) before one run.
    delete(gz, SRC, "doomed.txt").await;
    put(gz, SRC, "flash.txt", "short-lived").await;
    delete(gz, SRC, "flash.txt").await;
    put(gz, SRC, "phoenix.txt", "before").await;
    delete(gz, SRC, "phoenix.txt").await;
    put(gz, SRC, "phoenix.txt", "reborn").await;
    env.run_once().await;
    assert_hidden_by_marker(sh, "doomed.txt", b"first").await;
    assert_hidden_by_marker(sh, "flash.txt", b"short-lived").await;
    assert_replica_bytes(sh, DST, "phoenix.txt", b"reborn").await;

    // Deletes of keys the destination never held: one that existed before the enable point,
    // one never written at all (SeaweedFS still places a delete marker for it, moto does not).
    // Either way the key must end hidden on the destination, and the run must succeed.
    delete(gz, SRC, "before/old.txt").await;
    delete(gz, SRC, "never/written.txt").await;
    let out = env.crr(&["run", "--once"]).await;
    out.assert_ok();
    for key in ["before/old.txt", "never/written.txt"] {
        assert!(
            get_bytes(sh, DST, key).await.is_none(),
            "{key}: deleted on the source, it must not be readable on the destination"
        );
    }
    let status = env.rule_status("all").await;
    assert_eq!(status["failed_tasks"], 0, "{status}");
    assert_eq!(status["pending_tasks"], 0, "{status}");
}

#[tokio::test]
async fn seaweedfs_to_moto_replicates_every_change() {
    replicates_every_change(Kind::Weed, Kind::Moto).await;
}

#[tokio::test]
async fn moto_to_seaweedfs_replicates_every_change() {
    replicates_every_change(Kind::Moto, Kind::Weed).await;
}

/// A key with a control character. SeaweedFS lists such a key with U+FFFD in its place and
/// serves nothing under that name, so crr cannot read the object: its task fails with a reason
/// that says why and what to do, `run --once` exits 1, and the other objects replicate. A server
/// that lists the key as written gets it replicated, byte for byte.
#[tokio::test]
async fn a_key_the_source_lists_under_another_name_fails_with_the_reason() {
    let env = start(Kind::Weed, Kind::Moto, &[(SRC, DST)]).await;
    let key = "ctl/bell\u{7}key";
    put(&env.gz, SRC, "ctl/plain", "plain").await;
    put(&env.gz, SRC, key, "behind a control character").await;
    let listed = env
        .gz
        .client
        .list_object_versions()
        .bucket(SRC)
        .prefix("ctl/")
        .send()
        .await
        .expect("list versions");
    let renamed = !listed.versions().iter().any(|v| v.key() == Some(key));
    env.write_config(&[Rule::new("ctl", &src_ref(SRC), &dst_ref(DST)).historical(true)]);

    let out = env.crr(&["run", "--once"]).await;
    assert_eq!(
        get_bytes(&env.sh, DST, "ctl/plain").await.as_deref(),
        Some(&b"plain"[..])
    );
    let rule = env.rule_status("ctl").await;
    if renamed {
        out.assert_code(1);
        assert_eq!(rule["failed_tasks"], 1, "{rule:#}");
        let text = out.combined();
        assert!(
            text.contains("U+FFFD") && text.contains("Rename the object on the source"),
            "the failure does not say why, nor what to do: {text}"
        );
    } else {
        out.assert_ok();
        assert_eq!(
            get_bytes(&env.sh, DST, key).await.as_deref(),
            Some(&b"behind a control character"[..])
        );
    }
}

// ---------------------------------------------------------------------------------------------
// crr serve killed with SIGKILL while the source changes
// ---------------------------------------------------------------------------------------------

/// How many times the fault test kills `crr serve`: `$CRR_SOAK_KILLS`, else 3.
fn soak_kills() -> usize {
    std::env::var("CRR_SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// The random schedule's seed: `$CRR_SOAK_SEED` to repeat a run, else the clock.
fn soak_seed() -> u64 {
    std::env::var("CRR_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// A small deterministic generator (xorshift), so a seed replays the same schedule.
struct Rng(Cell<u64>);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(Cell::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1))
    }

    fn next(&self) -> u64 {
        let mut x = self.0.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0.set(x);
        x
    }

    /// Uniform in `lo..hi`.
    fn range(&self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }

    fn millis(&self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

const SMALL_KEYS: [&str; 7] = [
    "s/a.txt",
    "s/b.txt",
    "s/c.txt",
    "s/deep/d.txt",
    "s/odd key+ü.txt",
    "s/e.txt",
    "s/f.txt",
];
const LARGE_KEYS: [&str; 3] = ["l/one.bin", "l/two.bin", "l/three.bin"];

/// One change to the source, chosen at random: small and multipart-sized puts, overwrites in
/// quick succession, deletes (also of keys never written), a put and a delete back to back.
async fn random_change(env: &Env, rng: &Rng, n: u64) {
    let gz = &env.gz;
    let all: Vec<&str> = SMALL_KEYS.iter().chain(LARGE_KEYS.iter()).copied().collect();
    let any_key = all[rng.range(0, all.len() as u64) as usize];
    let small_key = SMALL_KEYS[rng.range(0, SMALL_KEYS.len() as u64) as usize];
    let large_key = LARGE_KEYS[rng.range(0, LARGE_KEYS.len() as u64) as usize];
    let small_body = |n: u64| pseudo_random_bytes(rng.range(0, 64 * 1024) as usize, n);
    match rng.range(0, 100) {
        0..30 => {
            put(gz, SRC, small_key, small_body(n)).await;
        }
        30..45 => {
            // With headers, metadata and tags that change from write to write.
            let opts = PutOpts {
                content_type: Some(format!("text/x-soak-{n}")),
                metadata: pairs(&[("write", &n.to_string()), ("who", "soak")]),
                tags: pairs(&[("write", &n.to_string())]),
                ..Default::default()
            };
            put_with(gz, SRC, small_key, small_body(n), &opts).await;
        }
        45..60 => {
            let len = rng.range(5 * 1024 * 1024 + 1, 11 * 1024 * 1024) as usize;
            put(gz, SRC, large_key, pseudo_random_bytes(len, n)).await;
        }
        60..80 => delete(gz, SRC, any_key).await,
        80..90 => {
            put(gz, SRC, small_key, small_body(n)).await;
            put(gz, SRC, small_key, small_body(n + 1_000_000)).await;
        }
        _ => {
            put(gz, SRC, any_key, small_body(n)).await;
            delete(gz, SRC, any_key).await;
        }
    }
}

/// What differs between the source's and the destination's current objects, one line each.
async fn compare_current(env: &Env) -> Vec<String> {
    let mut problems = Vec::new();
    for key in SMALL_KEYS.iter().chain(LARGE_KEYS.iter()) {
        let src = get_bytes(&env.gz, SRC, key).await;
        let dst = get_bytes(&env.sh, DST, key).await;
        let problem = match (&src, &dst) {
            (Some(s), Some(d)) if s == d => None,
            (None, None) => None,
            (Some(s), Some(d)) => Some(format!(
                "{key}: the destination's current object differs ({} bytes, the source's has {})",
                d.len(),
                s.len()
            )),
            (Some(s), None) => Some(format!(
                "{key}: current on the source ({} bytes), missing or hidden on the destination",
                s.len()
            )),
            (None, Some(d)) => Some(format!(
                "{key}: deleted on the source, still readable on the destination ({} bytes)",
                d.len()
            )),
        };
        // The same bytes must come with the same headers, metadata and tags.
        let problem = problem.or(match (&src, &dst) {
            (Some(_), Some(_)) => {
                let (s, d) = (head(&env.gz, SRC, key).await, head(&env.sh, DST, key).await);
                let (s, d) = (
                    s.map(|h| (h.content_type, h.metadata)),
                    d.map(|h| (h.content_type, h.metadata)),
                );
                let (st, dt) = (tags(&env.gz, SRC, key).await, tags(&env.sh, DST, key).await);
                (s != d || st != dt).then(|| {
                    format!("{key}: same bytes, other headers or tags: source {s:?} {st:?}, destination {d:?} {dt:?}")
                })
            }
            _ => None,
        });
        if let Some(p) = problem {
            let history = |entries: Vec<VersionEntry>| -> Vec<String> {
                entries
                    .iter()
                    .map(|e| {
                        let what = if e.is_delete_marker {
                            "marker".to_string()
                        } else {
                            format!("{} B", e.size)
                        };
                        format!("{what}{}", if e.is_latest { " (latest)" } else { "" })
                    })
                    .collect()
            };
            problems.push(format!(
                "{p}\n    source versions:      {:?}\n    destination versions: {:?}",
                history(key_versions(&env.gz, SRC, key).await),
                history(key_versions(&env.sh, DST, key).await)
            ));
        }
    }
    let (src_keys, dst_keys) = (list_keys(&env.gz, SRC).await, list_keys(&env.sh, DST).await);
    if src_keys != dst_keys {
        problems.push(format!(
            "current keys differ: source {src_keys:?}, destination {dst_keys:?}"
        ));
    }
    problems
}

/// Seconds since `started`, and the UTC time of day (as in crr.log), e.g. `4.2s 10:31:07.123`.
fn moment(started: Instant) -> String {
    let utc = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let time_of_day = utc.split('T').nth(1).unwrap_or(&utc).trim_end_matches('Z');
    format!("{:.1}s {time_of_day}", started.elapsed().as_secs_f64())
}

/// Objects on the source before the rule is first enabled: its historical migration copies
/// them (the writes never touch them). One is multipart-sized.
const HISTORY: usize = 150;

fn history_key(i: usize) -> String {
    format!("h/{i:04}")
}

fn history_body(i: usize) -> Vec<u8> {
    if i == 0 {
        pseudo_random_bytes(7 * 1024 * 1024 + 3, 900)
    } else {
        pseudo_random_bytes(512 + i, 900 + i as u64)
    }
}

/// The historical objects the destination lacks or holds other bytes of, one line each.
async fn compare_history(env: &Env) -> Vec<String> {
    let mut problems = Vec::new();
    for i in 0..HISTORY {
        let key = history_key(i);
        let dst = get_bytes(&env.sh, DST, &key).await;
        if dst.as_deref() != Some(&history_body(i)[..]) {
            problems.push(format!(
                "{key}: existed before the rule was enabled; the destination has {:?} bytes",
                dst.map(|d| d.len())
            ));
        }
    }
    problems
}

/// Whether a rule's status (`crr status --json`) says every change made before `t` is
/// replicated: nothing queued, and a last sync point past `t` (it has a resolution of a second).
fn synced_past(rule: &serde_json::Value, t: std::time::SystemTime) -> bool {
    let synced = rule["last_sync_point"]
        .as_str()
        .and_then(|p| humantime::parse_rfc3339(p).ok());
    rule["pending_tasks"] == 0 && synced.is_some_and(|p| p >= t + Duration::from_secs(1))
}

/// `crr serve` runs while the source keeps changing and is killed with SIGKILL `n` times at
/// random moments, each time started again. The rule is enabled by the first serve, with
/// `historical = true` and objects already on the source, so the first kill lands while its
/// baseline is listed or its migration copies; the second comes just after the rule was
/// disabled and enabled again (writes pause for the toggle: what is written while a rule is
/// disabled is, by design, not replicated); the third lands while the rule is enabled again, as
/// its new baseline is listed. Then the writes stop, serve is stopped, and one
/// `crr run --once` must catch up: exit 0, the destination's current objects equal the source's,
/// every historical object copied, deleted keys hidden, no multipart upload left open.
async fn survives_sigkill(source: Kind, destination: Kind) {
    let kills = soak_kills();
    let seed = soak_seed();
    let env = start(source, destination, &[(SRC, DST)]).await;
    futures::stream::iter(0..HISTORY)
        .for_each_concurrent(16, |i| {
            let gz = &env.gz;
            async move {
                put(gz, SRC, &history_key(i), history_body(i)).await;
            }
        })
        .await;
    env.write_config(&[Rule::new("soak", &src_ref(SRC), &dst_ref(DST))
        .operations("all")
        .historical(true)]);

    let started = Instant::now();
    let writing = Cell::new(true);
    // Writes pause while the rule is toggled; `idle` says the writer has stopped.
    let paused = Cell::new(false);
    let idle = Cell::new(false);
    let changes = Cell::new(0u64);
    let writer_rng = Rng::new(seed);
    let writer = async {
        while writing.get() {
            if paused.get() {
                idle.set(true);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            idle.set(false);
            let n = changes.get();
            random_change(&env, &writer_rng, n).await;
            changes.set(n + 1);
            tokio::time::sleep(writer_rng.millis(20, 200)).await;
        }
    };
    let killer_rng = Rng::new(seed ^ 0x5EED);
    let killer = async {
        let mut serve = env.spawn_serve();
        let mut kill_times = Vec::new();
        for i in 0..kills {
            match i {
                // While the rule is enabled: its baseline listing or its migration.
                0 => tokio::time::sleep(killer_rng.millis(100, 1_500)).await,
                1 => {
                    // The toggle, once the writes have paused and every change before the pause
                    // is replicated (the migration too): a disable drops what is still queued,
                    // and a change not found yet belongs to the next enable point's baseline,
                    // by design (the catch-up for that is `crr migrate start`, tested in
                    // tests/control.rs).
                    paused.set(true);
                    while !idle.get() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let paused_at = std::time::SystemTime::now();
                    wait_until(Duration::from_secs(120), || async {
                        let r = env.rule_status("soak").await;
                        r["migration"]["state"] == "completed" && synced_past(&r, paused_at)
                    })
                    .await;
                    env.crr(&["rule", "disable", "soak"]).await.assert_ok();
                    env.crr(&["rule", "enable", "soak"]).await.assert_ok();
                    paused.set(false);
                    tokio::time::sleep(killer_rng.millis(0, 500)).await;
                }
                2 => {
                    // Killed while the rule is enabled again through the service: its new
                    // baseline is listed then. The kill may land before the enable, during it
                    // or after it; the command waits for its answer or for the service to go.
                    paused.set(true);
                    while !idle.get() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let paused_at = std::time::SystemTime::now();
                    wait_until(Duration::from_secs(120), || async {
                        synced_past(&env.rule_status("soak").await, paused_at)
                    })
                    .await;
                    env.crr(&["rule", "disable", "soak"]).await.assert_ok();
                    let enable = env.crr(&["rule", "enable", "soak"]);
                    tokio::pin!(enable);
                    let answered = tokio::select! {
                        out = &mut enable => Some(out),
                        _ = tokio::time::sleep(killer_rng.millis(0, 300)) => None,
                    };
                    serve.kill();
                    kill_times.push(moment(started));
                    let out = match answered {
                        Some(out) => out,
                        None => enable.await,
                    };
                    if out.code != 0 {
                        // The service went before it answered: the operator says it again.
                        eprintln!("the enable cut off by the kill said: {}", out.describe());
                        env.crr(&["rule", "enable", "soak"]).await.assert_ok();
                    }
                    serve = env.spawn_serve();
                    paused.set(false);
                    continue;
                }
                _ => tokio::time::sleep(killer_rng.millis(300, 4_000)).await,
            }
            if let Some(code) = serve.try_exit_code() {
                panic!(
                    "crr serve exited by itself with {code} before kill {} (seed {seed})\n{}",
                    i + 1,
                    serve.output()
                );
            }
            serve.kill();
            kill_times.push(moment(started));
            tokio::time::sleep(killer_rng.millis(0, 300)).await;
            serve = env.spawn_serve();
        }
        // Let the last one work for a moment, then stop the writes and the service.
        tokio::time::sleep(Duration::from_secs(2)).await;
        writing.set(false);
        kill_times.push(moment(started));
        (serve, kill_times)
    };
    let ((), (mut serve, kill_times)) = tokio::join!(writer, killer);
    let code = serve.terminate(Duration::from_secs(30)).await;
    assert_eq!(code, 0, "crr serve should exit 0 on SIGTERM\n{}", serve.output());

    let last_write = std::time::SystemTime::now();
    let out = env.crr(&["run", "--once"]).await;
    let mut problems = Vec::new();
    if out.code != 0 {
        let failed = env.crr(&["queue", "--failed"]).await;
        problems.push(format!(
            "the final run exited {}\n{}\n--- crr queue --failed ---\n{}",
            out.code,
            out.describe(),
            failed.combined()
        ));
    }
    problems.extend(compare_current(&env).await);
    problems.extend(compare_history(&env).await);
    let status = env.rule_status("soak").await;
    if status["failed_tasks"] != 0 {
        problems.push(format!("`crr status` shows failed tasks: {status}"));
    }
    let synced = status["last_sync_point"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339(t).ok());
    // The sync point has a resolution of a second.
    if synced.is_none_or(|t| t + Duration::from_secs(1) < last_write) {
        problems.push(format!(
            "the last sync point {:?} is before the last write ({})",
            status["last_sync_point"],
            humantime::format_rfc3339_millis(last_write)
        ));
    }
    let open = open_uploads(&env.sh, DST).await;
    if !open.is_empty() {
        problems.push(format!("multipart uploads left open on the destination: {open:?}"));
    }
    if problems.is_empty() {
        eprintln!(
            "{} → {}: survived {kills} SIGKILLs of crr serve with {} changes to the source (seed {seed}); \
             the destination matches",
            source.label(),
            destination.label(),
            changes.get()
        );
        return;
    }
    let kept = match std::env::var_os("CRR_TEST_KEEP") {
        Some(_) => format!("the test directory is kept: {}", env.dir.keep().display()),
        None => "CRR_TEST_KEEP=1 keeps the test directory (crr.log in state/)".to_string(),
    };
    panic!(
        "{} → {}: after {kills} SIGKILLs of crr serve at {} (writes stopped at {}) and {} changes \
         to the source, seed {seed} (CRR_SOAK_SEED={seed} repeats the schedule; {kept}):\n{}",
        source.label(),
        destination.label(),
        kill_times[..kills].join(", "),
        kill_times[kills],
        changes.get(),
        problems.join("\n")
    );
}

#[tokio::test]
async fn seaweedfs_to_moto_survives_sigkill_of_serve() {
    survives_sigkill(Kind::Weed, Kind::Moto).await;
}

#[tokio::test]
async fn moto_to_seaweedfs_survives_sigkill_of_serve() {
    survives_sigkill(Kind::Moto, Kind::Weed).await;
}
