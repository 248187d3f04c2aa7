//! A copy cut off by a crash, against two real moto servers: the retry must copy what is not on
//! the destination yet, and must not copy again a replica that landed before the crash.

mod common;

use common::{
    Env, PutOpts, Rule, create_bucket, get_bytes, head, key_versions, pairs, pseudo_random_bytes, put, put_with,
};
use crr::engine::Engine;
use std::sync::Arc;

const MIB: usize = 1 << 20;

fn credentials() {
    common::engine_credentials();
}

async fn open(env: &Env) -> Arc<Engine> {
    common::open_engine(env).await
}

async fn setup(env: &Env) -> Arc<Engine> {
    credentials();
    create_bucket(&env.gz, "src-bucket", true).await;
    create_bucket(&env.sh, "dst-bucket", true).await;
    env.write_config(&[Rule::new("r", "gz/src-bucket", "sh/dst-bucket")]);
    let engine = open(env).await;
    let rec = engine.reconcile(None).await.expect("reconcile");
    assert!(rec.refused.is_empty(), "{:?}", rec.refused);
    engine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_bytes_with_new_metadata_interrupted_is_copied() {
    let env = Env::start().await;
    let engine = setup(&env).await;
    let first = PutOpts {
        content_type: Some("text/plain".into()),
        metadata: pairs(&[("owner", "ann")]),
        tags: pairs(&[("tier", "gold")]),
        ..Default::default()
    };
    put_with(&env.gz, "src-bucket", "doc.txt", "the same bytes", &first).await;
    let summary = engine.run_once().await.expect("run");
    assert_eq!(summary.replicated, 1);

    // A new version: the same bytes (so the same ETag and size), new metadata and tags.
    let second = PutOpts {
        content_type: Some("text/markdown".into()),
        metadata: pairs(&[("owner", "bob")]),
        tags: pairs(&[("tier", "silver")]),
        ..Default::default()
    };
    put_with(&env.gz, "src-bucket", "doc.txt", "the same bytes", &second).await;
    engine.scan_all().await;
    // A worker took it, and the process died before its PUT.
    engine
        .store
        .claim(crr::store::now_ms())
        .expect("claim")
        .expect("queued");
    drop(engine);

    let engine = open(&env).await;
    let summary = engine.run_once().await.expect("run");
    assert!(summary.failed.is_empty(), "{:?}", summary.failed);
    let h = head(&env.sh, "dst-bucket", "doc.txt").await.expect("a replica");
    assert_eq!(h.content_type.as_deref(), Some("text/markdown"));
    assert_eq!(h.metadata.get("owner").map(String::as_str), Some("bob"));
    assert_eq!(
        common::tags(&env.sh, "dst-bucket", "doc.txt").await,
        pairs(&[("tier", "silver")])
    );
    assert_eq!(key_versions(&env.sh, "dst-bucket", "doc.txt").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_replica_that_landed_before_a_crash_is_not_copied_again() {
    let env = Env::start().await;
    let engine = setup(&env).await;
    // One PUT on the source: its ETag is the MD5 of the bytes; the replica, copied in 5 MiB
    // parts, gets a multipart ETag that differs from it.
    let body = pseudo_random_bytes(12 * MIB + 5, 21);
    put(&env.gz, "src-bucket", "big.bin", body.clone()).await;
    engine.scan_all().await;
    common::copy_then_crash(&engine).await;
    assert_eq!(key_versions(&env.sh, "dst-bucket", "big.bin").await.len(), 1);
    drop(engine);

    let engine = open(&env).await;
    let summary = engine.run_once().await.expect("run");
    assert!(summary.failed.is_empty(), "{:?}", summary.failed);
    assert_eq!(
        key_versions(&env.sh, "dst-bucket", "big.bin").await.len(),
        1,
        "the multipart replica that landed was copied a second time"
    );
    assert_eq!(get_bytes(&env.sh, "dst-bucket", "big.bin").await, Some(body));
    let state = engine.store.rule_state("r").expect("store").expect("rule");
    assert_eq!(state.replicated_objects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_put_replica_that_landed_before_a_crash_is_not_copied_again() {
    let env = Env::start().await;
    let engine = setup(&env).await;
    let opts = PutOpts {
        metadata: pairs(&[("k", "v")]),
        tags: pairs(&[("a", "b")]),
        ..Default::default()
    };
    put_with(&env.gz, "src-bucket", "small.txt", "landed once", &opts).await;
    engine.scan_all().await;
    common::copy_then_crash(&engine).await;
    drop(engine);

    let engine = open(&env).await;
    let summary = engine.run_once().await.expect("run");
    assert!(summary.failed.is_empty(), "{:?}", summary.failed);
    assert_eq!(key_versions(&env.sh, "dst-bucket", "small.txt").await.len(), 1);
}
