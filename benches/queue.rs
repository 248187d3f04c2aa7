//! The durable queue with a large backlog: how fast a batch of changes is queued, and how fast a
//! task is claimed and completed, while `CRR_BENCH_QUEUE_TASKS` tasks (default 1,000,000) wait
//! in the queue of one enabled rule. No network.
//! A claim is timed together with the complete that follows it (a claimed task must be finished
//! before the next is timed), and the split between the two is printed.
//!
//! Run with the other micro-benchmarks:
//!     cargo bench --bench queue --bench scan --bench render
//! A quick run with a smaller backlog:
//!     CRR_BENCH_QUEUE_TASKS=100000 cargo bench --bench queue
//!
//! The state database is built once in a temporary directory, outside criterion's timing; how
//! long that took (the fill rate), how long reopening it takes, and the process's memory
//! (VmRSS, VmHWM) are printed. Each measurement moves a few tasks (claims take queued ones,
//! enqueues add some); the queued count is printed before and after, so the drift shows.
//!
//! The store's methods go through `store::blocking`, which runs SQLite directly when no
//! multi-threaded tokio runtime is current. The bench calls them that way, without a runtime,
//! so the figures leave out `block_in_place`'s hand-off of a worker's other tasks.

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use crr::store::{NewChange, Store, TaskKind, now_ms};
use std::time::{Duration, Instant};

const RULE: &str = "bench";
/// Changes per `queue_new` call while filling, and the enqueue bench's batch: a scan's batch.
const BATCH: usize = 500;

fn tasks_wanted() -> usize {
    std::env::var("CRR_BENCH_QUEUE_TASKS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(1_000_000)
}

fn change(key: String, version_id: String) -> NewChange {
    NewChange {
        queue: true,
        kind: TaskKind::Put,
        key,
        version_id,
        size: 4096,
        etag: "\"0123456789abcdef0123456789abcdef\"".into(),
        source_time: 1_790_000_000,
        dest_absent: false,
    }
}

/// The key of the backlog's `i`th task: one version per key, in listing (key) order.
fn key(i: usize) -> String {
    format!("data/{i:08}.bin")
}

/// The process's resident memory now and at its peak, as /proc/self/status tells it (Linux).
fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    format!("VmRSS {}, VmHWM {}", field("VmRSS:"), field("VmHWM:"))
}

fn queued(store: &Store) -> i64 {
    store.tally(RULE, None).queued.objects
}

struct Backlog {
    store: Store,
    generation: i64,
    tasks: usize,
    _dir: tempfile::TempDir,
}

/// A state database with one enabled rule and `tasks` queued tasks, queued in scan-sized batches.
fn build(tasks: usize) -> Backlog {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("open the store");
    let generation = store
        .begin_enable(RULE, "src/bucket", "dst/bucket")
        .expect("begin enable");
    assert!(store.finish_enable(RULE, generation, now_ms()).expect("finish enable"));
    let started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    for start in (0..tasks).step_by(BATCH) {
        batch.clear();
        batch.extend((start..(start + BATCH).min(tasks)).map(|i| change(key(i), format!("v{i}"))));
        store.queue_new(RULE, generation, &batch).expect("queue");
    }
    let took = started.elapsed();
    println!(
        "queue: filled {tasks} tasks in {:.1} s ({:.0} tasks/s); {}",
        took.as_secs_f64(),
        tasks as f64 / took.as_secs_f64(),
        memory()
    );
    drop(store);
    // Opening counts every task once (the in-memory tally): what a restart pays.
    let started = Instant::now();
    let store = Store::open(dir.path()).expect("reopen the store");
    println!(
        "queue: reopened the store with {} queued in {:.2} s; {}",
        queued(&store),
        started.elapsed().as_secs_f64(),
        memory()
    );
    let db = dir.path().join("crr.db");
    let wal = dir.path().join("crr.db-wal");
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) >> 20;
    println!("queue: database {} MiB, WAL {} MiB", size(&db), size(&wal));
    Backlog {
        store,
        generation,
        tasks,
        _dir: dir,
    }
}

fn queue(c: &mut Criterion) {
    let backlog = build(tasks_wanted());
    let store = &backlog.store;
    // The backlog's size is in the group's name: criterion compares a run only with earlier
    // runs of the same size.
    let mut group = c.benchmark_group(format!("queue_{}_queued", backlog.tasks));
    // Flat sampling: few iterations when one is slow (a claim can take seconds).
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let before = |what: &str| println!("queue: {} queued before {what}", queued(store));

    // Claims come first, with the backlog as filled. Each claim and complete is timed apart
    // and the split printed; criterion times the pair.
    before("claim_and_complete");
    let (mut claims, mut completes, mut pairs) = (Duration::ZERO, Duration::ZERO, 0u32);
    group.throughput(Throughput::Elements(1));
    group.bench_function("claim_and_complete", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let task = store.claim(now_ms()).expect("claim").expect("a queued task");
                let claimed = t.elapsed();
                let t = Instant::now();
                store.complete(&task, Some("dest"), task.size).expect("complete");
                let completed = t.elapsed();
                claims += claimed;
                completes += completed;
                pairs += 1;
                spent += claimed + completed;
            }
            spent
        })
    });
    if pairs > 0 {
        println!(
            "queue: over {pairs} claim_and_complete pairs: claim {:.3} ms, complete {:.3} ms on average",
            claims.as_secs_f64() * 1e3 / pairs as f64,
            completes.as_secs_f64() * 1e3 / pairs as f64
        );
    }

    // New versions of keys already queued, landing all through the indexes: 500 keys in a row
    // from a spread offset (as a scan lists them, in key order), or 500 keys far apart. Timed
    // briefly, since every batch makes the queue longer.
    group
        .warm_up_time(Duration::from_millis(250))
        .measurement_time(Duration::from_secs(1));
    let mut n = 0usize;
    group.throughput(Throughput::Elements(BATCH as u64));
    for (order, stride) in [("scan_order", 1), ("scattered", 7919)] {
        before(&format!("enqueue_batch/{order}"));
        group.bench_function(BenchmarkId::new("enqueue_batch", order), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let offset = n * 7919 * BATCH;
                    let batch: Vec<NewChange> = (0..BATCH)
                        .map(|j| change(key((offset + j * stride) % backlog.tasks), format!("n{n}-{j}")))
                        .collect();
                    n += 1;
                    let t = Instant::now();
                    let added = store.queue_new(RULE, backlog.generation, &batch).expect("queue");
                    spent += t.elapsed();
                    assert_eq!(added, BATCH);
                }
                spent
            })
        });
    }

    group.finish();
    println!("queue: {} queued after the benches; {}", queued(store), memory());
}

criterion_group!(benches, queue);
criterion_main!(benches);
