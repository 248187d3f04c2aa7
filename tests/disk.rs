//! Disk trouble under `crr serve`: the state directory fills up while the
//! source keeps changing. crr keeps running, says why no copy starts, loses nothing, and
//! catches up once the directory takes writes again.
//!
//! The state directory sits on a small tmpfs mounted for the test, which needs root (and a
//! system that allows mounts); elsewhere the test says so and does nothing. A damaged database
//! and one from a newer crr are refused by unit tests of the store.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const SRC: &str = "disk-src";
const DST: &str = "disk-dst";

/// A tmpfs of `size` at `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?
            .status
            .success();
        mounted.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

/// Subscribes to the service's events and collects their lines until one contains any of
/// `wanted`, or `wait` passes.
async fn events_until(state: &Path, wanted: &[&str], wait: Duration) -> String {
    let stream = tokio::net::UnixStream::connect(state.join("crr.sock"))
        .await
        .expect("connect to crr.sock");
    let (read, mut write) = stream.into_split();
    write
        .write_all(b"{\"type\":\"subscribe\",\"events\":true,\"snapshots\":false}\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(read).lines();
    let mut all = String::new();
    let _ = tokio::time::timeout(wait, async {
        while let Ok(Some(line)) = lines.next_line().await {
            all.push_str(&line);
            all.push('\n');
            if wanted.iter().any(|w| line.contains(w)) {
                return;
            }
        }
    })
    .await;
    all
}

async fn replicated(env: &Env, keys: &[String]) -> bool {
    for k in keys {
        if get_bytes(&env.gz, SRC, k).await != get_bytes(&env.sh, DST, k).await {
            return false;
        }
    }
    true
}

/// One spell of trouble: `start` makes the state directory refuse writes, changes are written
/// to the source meanwhile, `end` lets it take writes again, and everything must replicate.
async fn ride_out(env: &Env, serve: &mut Serve, name: &str, start: impl FnOnce(), end: impl FnOnce()) {
    let subscriber = tokio::spawn({
        let state = env.state_dir.clone();
        async move {
            events_until(
                &state,
                &["cannot be written", "disk is full", "readonly", "read-only"],
                Duration::from_secs(60),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    start();
    let keys: Vec<String> = (0..5).map(|i| format!("{name}/{i}.txt")).collect();
    for (i, k) in keys.iter().enumerate() {
        put(&env.gz, SRC, k, format!("{name} {i}")).await;
    }
    let events = subscriber.await.unwrap();
    eprintln!("{name}: events while the state directory refused writes:\n{events}");
    assert!(
        events.contains("cannot be written") || (events.contains("scan_failed") && events.contains("disk is full")),
        "{name}: crr never said why nothing replicates; its events:\n{events}\n{}",
        serve.output()
    );
    assert!(
        serve.try_exit_code().is_none(),
        "{name}: crr serve died\n{}",
        serve.output()
    );
    end();
    let caught_up = wait_until(Duration::from_secs(60), || replicated(env, &keys)).await;
    assert!(
        caught_up,
        "{name}: the changes made while the state directory refused writes did not replicate\n{}",
        serve.output()
    );
}

#[tokio::test]
async fn a_full_state_directory_loses_nothing() {
    let mut env = Env::start().await;
    create_bucket(&env.gz, SRC, true).await;
    create_bucket(&env.sh, DST, true).await;
    let Some(fs) = Tmpfs::mount(&env.path().join("small"), "8m") else {
        eprintln!("cannot mount a tmpfs here (not root, or mounts not allowed): the disk-trouble test did nothing");
        return;
    };
    env.state_dir = fs.0.join("state");
    env.write_config(&[Rule::new("r", &format!("gz/{SRC}"), &format!("sh/{DST}")).operations("all")]);
    env.run_once().await.assert_ok();
    let mut serve = env.spawn_serve();
    put(&env.gz, SRC, "before.txt", "before").await;
    let before = ["before.txt".to_string()];
    assert!(
        wait_until(Duration::from_secs(30), || replicated(&env, &before)).await,
        "{}",
        serve.output()
    );

    let filler = fs.0.join("filler");
    ride_out(
        &env,
        &mut serve,
        "full",
        || {
            // Fill every byte the tmpfs has left, then make the database's journal need more.
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).expect("create the filler");
            let chunk = vec![0u8; 64 * 1024];
            while f.write_all(&chunk).is_ok() {}
            let _ = f.flush();
        },
        || std::fs::remove_file(&filler).expect("remove the filler"),
    )
    .await;

    let code = serve.terminate(Duration::from_secs(30)).await;
    assert_eq!(code, 0, "{}", serve.output());
    let status = env.rule_status("r").await;
    assert_eq!(status["failed_tasks"], 0, "{status}");
}

/// Remounts the tmpfs at `dir` read-only (`ro = true`) or read-write.
fn remount(dir: &Path, ro: bool) {
    let how = if ro { "remount,ro" } else { "remount,rw" };
    let out = Command::new("mount")
        .args(["-o", how])
        .arg(dir)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mount -o {how} {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A state directory that cannot be written (a read-only mount) is refused with a reason and a
/// way forward, by `run --once` and by `serve`, and nothing in it changes; `status` still reads
/// it. Once it takes writes again, the change made meanwhile replicates.
#[tokio::test]
async fn a_read_only_state_directory_is_refused_and_loses_nothing() {
    let mut env = Env::start().await;
    create_bucket(&env.gz, SRC, true).await;
    create_bucket(&env.sh, DST, true).await;
    let Some(fs) = Tmpfs::mount(&env.path().join("small"), "8m") else {
        eprintln!("cannot mount a tmpfs here (not root, or mounts not allowed): the read-only test did nothing");
        return;
    };
    env.state_dir = fs.0.join("state");
    env.write_config(&[Rule::new("r", &format!("gz/{SRC}"), &format!("sh/{DST}"))]);
    env.run_once().await.assert_ok();
    put(
        &env.gz,
        SRC,
        "while-read-only.txt",
        "written while the state could not be",
    )
    .await;

    remount(&fs.0, true);
    for args in [&["run", "--once"][..], &["serve"][..]] {
        let out = tokio::time::timeout(Duration::from_secs(30), env.crr(args))
            .await
            .unwrap_or_else(|_| panic!("crr {args:?} did not stop on a read-only state directory"));
        assert_eq!(
            out.code, 1,
            "crr {args:?} on a read-only state directory: {}",
            out.stderr
        );
        let said = out.stderr.to_lowercase();
        assert!(
            said.contains("cannot be written") && said.contains("read-only") && said.contains("--state"),
            "crr {args:?} did not say what is wrong and what to do: {}",
            out.stderr
        );
        assert!(!said.contains("panicked"), "{}", out.stderr);
    }
    let status = env.crr(&["status", "--json"]).await;
    assert_eq!(
        status.code, 0,
        "status on a read-only state directory: {}",
        status.stderr
    );
    assert_eq!(
        find_rule_status(&status.json(), "r")["state"],
        "enabled",
        "{}",
        status.stdout
    );
    assert_eq!(get_bytes(&env.sh, DST, "while-read-only.txt").await, None);

    remount(&fs.0, false);
    env.run_once().await.assert_ok();
    assert_eq!(
        get_bytes(&env.sh, DST, "while-read-only.txt").await.as_deref(),
        Some(&b"written while the state could not be"[..]),
        "the change made while the state directory was read-only was lost"
    );
}
