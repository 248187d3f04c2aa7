//! The real-time workload (crr only): `crr serve` on a rule without history scanning every
//! second, while the harness writes a paced stream of changes (60% new keys, 20% overwrites,
//! 20% deletes) to the source, optionally while another rule migrates a large bucket. The lag
//! of each change, from the write's acknowledgement to the task's completion, is split with
//! crr's state database into detection (task created) and transfer (task done).

use crate::common::{Server, VersionEntry, create_bucket, list_versions, pseudo_random_bytes};
use crate::data::{fresh_bucket, hash_bucket, list_sizes, remove_bucket, verify};
use crate::measure::{Cost, Running};
use crate::tools::{Paths, Side, crr_command, crr_config, crr_rule};
use aws_sdk_s3::primitives::ByteStream;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// The scan interval crr runs with here.
pub const SCAN_INTERVAL: &str = "1s";

/// What one real-time run measured.
#[derive(Debug)]
pub struct Lag {
    pub label: String,
    pub changes: usize,
    /// Milliseconds, one per change that crr completed.
    pub detection: Vec<i64>,
    pub transfer: Vec<i64>,
    pub total: Vec<i64>,
    /// Changes crr has no completed task for (skipped as superseded, failed, or never seen).
    pub not_done: usize,
    pub verified: Result<(), String>,
    /// The whole `crr serve` process, from spawn to exit.
    pub serve: Cost,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One change the harness wrote: its version id (or delete marker's) and when it was acked.
struct Write {
    version: String,
    ack_ms: i64,
}

/// What crr's state says about one version: (created_at, updated_at, state).
fn tasks(state: &Path, rule: &str) -> Result<HashMap<String, (i64, i64, String)>, String> {
    let db = rusqlite::Connection::open_with_flags(state.join("crr.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("open crr.db: {e}"))?;
    let mut stmt = db
        .prepare("SELECT version_id, created_at, updated_at, state FROM tasks WHERE rule_id = ?1")
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([rule], |r| {
            Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?, r.get(3)?)))
        })
        .map_err(|e| e.to_string())?;
    rows.collect::<Result<_, _>>().map_err(|e| e.to_string())
}

/// Waits until `crr status --json` shows rule `rule` with an enable point.
async fn wait_enabled(paths: &Paths, dir: &Path, rule: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = crr_command(paths, dir, &["status", "--json"])
            .output()
            .map_err(|e| e.to_string())?;
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            && let Some(rules) = v["rules"].as_array()
            && rules.iter().any(|r| r["id"] == rule && r["enable_point"].is_string())
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("rule {rule} was not enabled within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `crr serve` in `dir` on a fresh pair of buckets named after `n`, writes `changes`
/// changes at `rate` per second, waits for crr to complete them and measures the lag. With
/// `migrate`, a second rule migrates that bucket of `src` meanwhile.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    label: &str,
    paths: &Paths,
    dir: &Path,
    src: &Server,
    dst: &Server,
    n: usize,
    changes: usize,
    rate: f64,
    migrate: Option<&str>,
) -> Lag {
    std::fs::create_dir_all(dir).expect("create the run directory");
    let side = |s: &Server, bucket: String| Side {
        url: s.url.clone(),
        region: s.region.clone(),
        bucket,
    };
    let (rt_src, rt_dst) = (side(src, format!("rt-src-{n}")), side(dst, format!("rt-dst-{n}")));
    create_bucket(src, &rt_src.bucket, true).await;
    if let Err(e) = fresh_bucket(dst, &rt_dst.bucket).await {
        eprintln!("note: {e}");
    }
    let mut rules = crr_rule("rt", &rt_src, &rt_dst, false);
    let mig_dst = side(dst, format!("mig-dst-{n}"));
    if let Some(bucket) = migrate {
        if let Err(e) = fresh_bucket(dst, &mig_dst.bucket).await {
            eprintln!("note: {e}");
        }
        rules.push('\n');
        rules.push_str(&crr_rule("mig", &side(src, bucket.to_string()), &mig_dst, true));
    }
    let engine = format!("scan_interval = \"{SCAN_INTERVAL}\"");
    std::fs::write(dir.join("crr.toml"), crr_config(&rt_src, &rt_dst, &engine, &rules)).expect("write the config");
    let serve = Running::spawn(crr_command(paths, dir, &["serve"]), &dir.join("serve.log")).expect("spawn crr serve");
    let fail = |serve: Running, why: String| async move {
        let cost = serve
            .stop(Duration::from_secs(30))
            .await
            .map(|e| e.cost)
            .unwrap_or_default();
        Lag {
            label: label.to_string(),
            changes,
            detection: vec![],
            transfer: vec![],
            total: vec![],
            not_done: changes,
            verified: Err(why),
            serve: cost,
        }
    };
    if let Err(e) = wait_enabled(paths, dir, "rt", Duration::from_secs(60)).await {
        return fail(serve, e).await;
    }

    // The stream: every fifth change overwrites, every fifth deletes, a key written before.
    let mut writes = Vec::with_capacity(changes);
    let mut live: Vec<String> = Vec::new();
    let mut rng = fastrand::Rng::with_seed(n as u64);
    let period = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let mut tick = tokio::time::interval(period);
    for i in 0..changes {
        tick.tick().await;
        let client = &src.client;
        let bucket = &rt_src.bucket;
        let result = match i % 5 {
            3 | 4 if !live.is_empty() => {
                let key = live[rng.usize(..live.len())].clone();
                if i % 5 == 3 {
                    let body = pseudo_random_bytes(4096, 1_000_000 + i as u64);
                    client
                        .put_object()
                        .bucket(bucket)
                        .key(&key)
                        .body(ByteStream::from(body))
                        .send()
                        .await
                        .map(|o| o.version_id().map(str::to_string))
                        .map_err(|e| format!("{e:?}"))
                } else {
                    live.retain(|k| *k != key);
                    client
                        .delete_object()
                        .bucket(bucket)
                        .key(&key)
                        .send()
                        .await
                        .map(|o| o.version_id().map(str::to_string))
                        .map_err(|e| format!("{e:?}"))
                }
            }
            _ => {
                let key = format!("rt/{i:06}");
                live.push(key.clone());
                client
                    .put_object()
                    .bucket(bucket)
                    .key(&key)
                    .body(ByteStream::from(pseudo_random_bytes(4096, i as u64)))
                    .send()
                    .await
                    .map(|o| o.version_id().map(str::to_string))
                    .map_err(|e| format!("{e:?}"))
            }
        };
        match result {
            Ok(Some(version)) => writes.push(Write {
                version,
                ack_ms: now_ms(),
            }),
            Ok(None) => return fail(serve, format!("change {i}: the source returned no version id")).await,
            Err(e) => return fail(serve, format!("change {i}: {e}")).await,
        }
    }

    // Wait until crr has an outcome for every change (or two minutes pass).
    let state = dir.join("state");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let finished = tasks(&state, "rt").is_ok_and(|t| {
            writes.iter().all(|w| {
                t.get(&w.version)
                    .is_some_and(|(_, _, s)| s != "queued" && s != "running")
            })
        });
        if finished || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let want = hash_bucket(src, &rt_src.bucket, 32).await;
    let mut verified = Err("not checked".to_string());
    for _ in 0..5 {
        verified = match &want {
            Ok(want) => verify(want, dst, &rt_dst.bucket).await,
            Err(e) => Err(e.clone()),
        };
        if verified.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if let Err(e) = &verified {
        verified = Err(format!(
            "{e}; {}",
            explain(src, dst, &rt_src.bucket, &rt_dst.bucket, &dir.join("state")).await
        ));
    }
    let serve_exit = serve.stop(Duration::from_secs(30)).await;
    let seen = tasks(&state, "rt").unwrap_or_default();
    let (mut detection, mut transfer, mut total, mut not_done) = (vec![], vec![], vec![], 0);
    for w in &writes {
        match seen.get(&w.version) {
            Some((created, updated, s)) if s == "done" => {
                detection.push(created - w.ack_ms);
                transfer.push(updated - created);
                total.push(updated - w.ack_ms);
            }
            _ => not_done += 1,
        }
    }
    for b in [&rt_dst.bucket] {
        remove_bucket(dst, b).await;
    }
    if migrate.is_some() {
        remove_bucket(dst, &mig_dst.bucket).await;
    }
    remove_bucket(src, &rt_src.bucket).await;
    Lag {
        label: label.to_string(),
        changes: writes.len(),
        detection,
        transfer,
        total,
        not_done,
        verified,
        serve: serve_exit.map(|e| e.cost).unwrap_or_default(),
    }
}

/// For up to three keys whose current state differs between the buckets: the versions on each
/// side (newest first, `*` latest, `DM` delete marker) and crr's tasks for the key.
async fn explain(src: &Server, dst: &Server, src_bucket: &str, dst_bucket: &str, state: &Path) -> String {
    let (Ok(a), Ok(b)) = (list_sizes(src, src_bucket).await, list_sizes(dst, dst_bucket).await) else {
        return String::new();
    };
    let mut keys: Vec<&String> = a.keys().filter(|k| b.get(*k) != a.get(*k)).collect();
    keys.extend(b.keys().filter(|k| !a.contains_key(*k)));
    let mut out = Vec::new();
    for key in keys.into_iter().take(3) {
        let show = |v: Vec<VersionEntry>| {
            v.iter()
                .filter(|e| e.key == *key)
                .map(|e| {
                    format!(
                        "{}{}{}",
                        if e.is_delete_marker { "DM " } else { "" },
                        e.version_id,
                        if e.is_latest { "*" } else { "" }
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let tasks =
            rusqlite::Connection::open_with_flags(state.join("crr.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .and_then(|db| {
                    let mut stmt = db.prepare(
                    "SELECT id, kind, version_id, state, created_at, updated_at FROM tasks WHERE key = ?1 ORDER BY id",
                )?;
                    let rows = stmt.query_map([key], |r| {
                        Ok(format!(
                            "#{} {} {} {} {}..{}",
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, i64>(5)?
                        ))
                    })?;
                    rows.collect::<Result<Vec<_>, _>>()
                })
                .map(|v| v.join(", "))
                .unwrap_or_else(|e| e.to_string());
        out.push(format!(
            "{key}: source [{}], destination [{}], crr tasks [{tasks}]",
            show(list_versions(src, src_bucket, Some(key)).await),
            show(list_versions(dst, dst_bucket, Some(key)).await)
        ));
    }
    out.join("; ")
}

/// p50, p99 and max of a set of milliseconds, as text.
pub fn percentiles(v: &[i64]) -> String {
    if v.is_empty() {
        return "–".to_string();
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let at = |q: f64| s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    format!("{} / {} / {}", at(0.50), at(0.99), s[s.len() - 1])
}
