//! A scan's planning, with no network: a listing of 100,000 versions of which 10 are new, against
//! a seen set holding the other 99,990. Timed: what the scan does with each listing page in the
//! store, which is deciding which versions are unseen (`Store::unseen` over 1,000-entry pages,
//! the size of a ListObjectVersions page) and queueing those (`Store::queue_new`).
//!
//! Run with the other micro-benchmarks:
//!     cargo bench --bench queue --bench scan --bench render
//!
//! The scan's own loop (`list_scope` in the engine's scan module) is private and needs an S3
//! source, so this drives the store the same way it does; the regrouping of the few new
//! versions by key is left out. A second case adds what a scan does once an hour: recording the
//! listing (`begin_listing`, `add_listed`) and pruning the seen set (`prune_seen`).
//! Store calls run without a tokio runtime (see `store::blocking`).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crr::s3::VersionEntry;
use crr::store::{NewChange, Store, TaskKind, now_ms};
use std::time::{Duration, Instant};

const RULE: &str = "bench";
const LISTED: usize = 100_000;
const NEW: usize = 10;
const PAGE: usize = 1_000;

fn entry(i: usize, version_id: String) -> VersionEntry {
    VersionEntry {
        key: format!("photos/{i:08}.jpg"),
        version_id,
        is_latest: true,
        last_modified: 1_790_000_000,
        size: 1 << 20,
        etag: "\"0123456789abcdef0123456789abcdef\"".into(),
        delete_marker: false,
        list_index: i % PAGE,
    }
}

/// Where the new versions sit in the listing: spread over it.
fn is_new(i: usize) -> bool {
    i % (LISTED / NEW) == LISTED / NEW / 2
}

/// What a scan does with one listing in the store: returns how many tasks it queued.
fn plan(store: &Store, generation: i64, listing: &[VersionEntry], prune: bool) -> usize {
    if prune {
        store.begin_listing(RULE).expect("begin listing");
    }
    let mut changes = Vec::new();
    for page in listing.chunks(PAGE) {
        if prune {
            store.add_listed(RULE, page).expect("add listed");
        }
        let unseen = store.unseen(RULE, page).expect("unseen");
        changes.extend(page.iter().zip(unseen).filter(|(_, new)| *new).map(|(e, _)| NewChange {
            queue: true,
            kind: TaskKind::Put,
            key: e.key.clone(),
            version_id: e.version_id.clone(),
            size: e.size,
            etag: e.etag.clone(),
            source_time: e.last_modified,
            dest_absent: false,
        }));
    }
    let queued = store.queue_new(RULE, generation, &changes).expect("queue");
    if prune {
        store.prune_seen(RULE, generation, now_ms()).expect("prune");
    }
    queued
}

fn scan(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("open the store");
    let generation = store
        .begin_enable(RULE, "src/photos", "dst/photos")
        .expect("begin enable");
    let mut listing: Vec<VersionEntry> = (0..LISTED).map(|i| entry(i, format!("v{i}"))).collect();
    let seen: Vec<(String, String)> = listing
        .iter()
        .enumerate()
        .filter(|(i, _)| !is_new(*i))
        .map(|(_, e)| (e.key.clone(), e.version_id.clone()))
        .collect();
    let started = Instant::now();
    store.add_baseline(RULE, generation, &seen).expect("baseline");
    assert!(store.finish_enable(RULE, generation, now_ms()).expect("finish enable"));
    println!(
        "scan: recorded a seen set of {} versions in {:.2} s",
        seen.len(),
        started.elapsed().as_secs_f64()
    );

    let mut group = c.benchmark_group("scan");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(LISTED as u64));
    let mut round = 0usize;
    for (name, prune) in [
        ("plan_100k_listed_10_new", false),
        ("plan_100k_listed_10_new_with_prune", true),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    // Fresh versions at the new places: the last round's are seen by now.
                    round += 1;
                    for (i, e) in listing.iter_mut().enumerate().filter(|(i, _)| is_new(*i)) {
                        e.version_id = format!("r{round}-v{i}");
                    }
                    let t = Instant::now();
                    let queued = plan(&store, generation, &listing, prune);
                    spent += t.elapsed();
                    assert_eq!(queued, NEW);
                }
                spent
            })
        });
    }
    group.finish();
}

criterion_group!(benches, scan);
criterion_main!(benches);
