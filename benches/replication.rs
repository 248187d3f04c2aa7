//! End to end against two moto S3 servers on loopback: how closely the bandwidth limit holds
//! over every 5-second window of a large copy, and how many small objects a second crr
//! replicates beside how many PUTs a second moto itself takes (the ceiling on this machine).
//!
//! Run with `scripts/bench` (or `cargo bench --bench replication`). Figures are printed, not
//! asserted: machines are shared and noisy.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Env, Rule, create_bucket, pseudo_random_bytes, put};
use crr::engine::Engine;
use std::time::{Duration, Instant};

fn credentials() {
    // SAFETY: set before any thread of this process reads the environment.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }
}

async fn engine(env: &Env, engine_extra: &str) -> std::sync::Arc<Engine> {
    let text = env
        .config_text(&[Rule::new("bench", "gz/bench-src", "sh/bench-dst")])
        .replace("[engine]", &format!("[engine]\n{engine_extra}"));
    env.write_config_text(&text);
    let config = crr::config::load(&env.config_path).expect("config");
    let engine = Engine::open(config, &env.state_dir)
        .await
        .expect("state")
        .expect("lock");
    engine.reconcile(None).await.expect("reconcile");
    engine
}

async fn bandwidth_windows() {
    let env = Env::start().await;
    create_bucket(&env.gz, "bench-src", true).await;
    create_bucket(&env.sh, "bench-dst", true).await;
    let limit: u64 = 2 << 20;
    let size = 24 << 20;
    let engine = engine(&env, &format!("bandwidth_limit = \"{limit}\"")).await;
    put(&env.gz, "bench-src", "large.bin", pseudo_random_bytes(size, 1)).await;

    let mut snapshots = engine.subscribe();
    let runner = engine.clone();
    let started = Instant::now();
    let run = tokio::spawn(async move { runner.run_once().await });
    let mut samples: Vec<(f64, u64)> = vec![(0.0, 0)];
    while !run.is_finished() {
        let changed = tokio::time::timeout(Duration::from_millis(500), snapshots.changed()).await;
        if changed.is_err() {
            continue;
        }
        // Sending only: while the copy runs, up to the sample that shows every byte sent
        // (completing and verifying the upload come after it).
        let copy = snapshots.borrow_and_update().running.first().cloned();
        if let Some(copy) = copy
            && samples.last().is_none_or(|(_, b)| *b < size as u64)
        {
            samples.push((started.elapsed().as_secs_f64(), copy.bytes_done));
        }
    }
    run.await.expect("join").expect("run");
    let total = started.elapsed().as_secs_f64();
    // Every 5-second window between samples: bytes sent in it, as a rate. "Steady" leaves out
    // windows that start in the first second (connecting, heading, reading the first parts).
    let windows = |from: f64| {
        let (mut lowest, mut highest) = (f64::MAX, 0f64);
        for (i, (t0, b0)) in samples.iter().enumerate().filter(|(_, (t, _))| *t >= from) {
            if let Some((t1, b1)) = samples[i..].iter().find(|(t, _)| *t >= t0 + 5.0) {
                let rate = b1.saturating_sub(*b0) as f64 / (t1 - t0);
                lowest = lowest.min(rate);
                highest = highest.max(rate);
            }
        }
        (lowest, highest)
    };
    let pct = |r: f64| (r / limit as f64 - 1.0) * 100.0;
    let ((all_lo, all_hi), (steady_lo, steady_hi)) = (windows(0.0), windows(1.0));
    println!(
        "bandwidth: {} MiB at a limit of {:.2} MiB/s took {total:.2} s ({:+.1}% overall); \
         5-second windows: all {:+.1}% .. {:+.1}%, steady {:+.1}% .. {:+.1}% of the limit",
        size >> 20,
        limit as f64 / (1 << 20) as f64,
        pct(size as f64 / total),
        pct(all_lo),
        pct(all_hi),
        pct(steady_lo),
        pct(steady_hi)
    );
}

async fn small_objects() {
    let env = Env::start().await;
    create_bucket(&env.gz, "bench-src", true).await;
    create_bucket(&env.sh, "bench-dst", true).await;
    let count = 300;
    let body = vec![5u8; 4096];
    // moto's own ceiling on this machine: plain PUTs of the same objects to the destination.
    let started = Instant::now();
    for i in 0..count {
        put(&env.sh, "bench-dst", &format!("ceiling/{i}"), body.clone()).await;
    }
    let ceiling = count as f64 / started.elapsed().as_secs_f64();

    let engine = engine(&env, "").await;
    for i in 0..count {
        put(&env.gz, "bench-src", &format!("obj/{i}"), body.clone()).await;
    }
    let started = Instant::now();
    let summary = engine.run_once().await.expect("run");
    let took = started.elapsed().as_secs_f64();
    assert_eq!(summary.replicated, count as u64);
    println!(
        "small objects: {count} x 4 KiB replicated in {took:.2} s = {:.0} objects/s \
         (scan + GET + PUT each; moto alone takes {ceiling:.0} sequential PUTs/s here)",
        count as f64 / took
    );
}

fn main() {
    credentials();
    if std::env::var_os("CRR_BENCH_LOG").is_some() {
        tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        bandwidth_windows().await;
        small_objects().await;
    });
}
