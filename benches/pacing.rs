//! The cost of metering and pacing a copy's bytes, with no network: how fast a request body
//! passes through `Metered` with no limit, and what one `Limiter::reserve` costs.

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crr::engine::limit::Limiter;
use crr::engine::progress::{Metered, Progress};
use std::sync::Arc;

fn metered_body(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let data = Bytes::from(vec![7u8; 16 << 20]);
    let mut group = c.benchmark_group("metered_body");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("16MiB_unlimited", |b| {
        b.iter(|| {
            rt.block_on(async {
                let progress = Arc::new(Progress::default());
                let source = ByteStream::from(data.clone());
                let body = Metered::stream(source, 1, progress, vec![Arc::new(Limiter::new(0))], Vec::new());
                let collected = body.collect().await.expect("collect").into_bytes();
                assert_eq!(collected.len(), data.len());
            })
        })
    });
    group.finish();
}

fn limiter(c: &mut Criterion) {
    // A limit so high that reserving never asks for a wait: the bookkeeping alone.
    let l = Limiter::new(u64::MAX / 4);
    c.bench_function("limiter_reserve_64KiB", |b| b.iter(|| l.reserve(64 * 1024)));
}

criterion_group!(benches, metered_body, limiter);
criterion_main!(benches);
