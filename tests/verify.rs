//! How a copy is verified and timed, against real moto servers with one S3 call altered by a
//! local fault-injecting proxy (tests/fault): ETags that are not MD5 sums, ETags in upper case,
//! a body corrupted on the way, a slow but moving upload, and a destination that stalls.

mod common;
mod fault;

use common::{Env, Rule, create_bucket, failures, get_bytes, key_versions, pseudo_random_bytes, put};
use crr::engine::Engine;
use fault::{Call, Fault, Proxy};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

fn credentials() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: set once, before this test binary's engines read the environment; every test
        // sets the same values.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
            std::env::set_var("AWS_CONFIG_FILE", "/nonexistent/crr-test-aws-config");
            std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/crr-test-aws-credentials");
        }
    });
}

/// Both buckets, a proxy in front of the destination with `faults`, and an engine whose
/// destination endpoint is the proxy. `engine_extra` lines go into `[engine]`.
async fn setup(env: &Env, faults: Vec<Fault>, engine_extra: &str) -> (Arc<Engine>, Proxy) {
    setup_at(env, &env.sh.url, faults, engine_extra).await
}

/// `setup`, with the proxy in front of the endpoint at `proxied` (the source's or the
/// destination's URL).
async fn setup_at(env: &Env, proxied: &str, faults: Vec<Fault>, engine_extra: &str) -> (Arc<Engine>, Proxy) {
    credentials();
    create_bucket(&env.gz, "src-bucket", true).await;
    create_bucket(&env.sh, "dst-bucket", true).await;
    let proxy = Proxy::start(proxied, faults).await;
    let text = env
        .config_text(&[Rule::new("r", "gz/src-bucket", "sh/dst-bucket")])
        .replace(&format!("url = \"{proxied}\""), &format!("url = \"{}\"", proxy.url))
        .replace("[engine]", &format!("[engine]\n{engine_extra}"));
    assert!(text.contains(&proxy.url), "the harness config changed shape: {text}");
    env.write_config_text(&text);
    let config = crr::config::load(&env.config_path).expect("config loads");
    let engine = Engine::open(config, &env.state_dir)
        .await
        .expect("state opens")
        .expect("no other engine holds the lock");
    let rec = engine.reconcile(None).await.expect("reconcile");
    assert!(rec.refused.is_empty(), "{:?}", rec.refused);
    (engine, proxy)
}

/// Uploads `body` to the source in two parts (the first 5 MiB), so its ETag is "...-2".
async fn put_multipart(env: &Env, key: &str, body: &[u8]) -> String {
    let c = &env.gz.client;
    let created = c
        .create_multipart_upload()
        .bucket("src-bucket")
        .key(key)
        .send()
        .await
        .expect("create upload");
    let id = created.upload_id().expect("upload id").to_string();
    let mut parts = Vec::new();
    for (n, range) in [(1, 0..5 * MIB), (2, 5 * MIB..body.len())] {
        let out = c
            .upload_part()
            .bucket("src-bucket")
            .key(key)
            .upload_id(&id)
            .part_number(n)
            .body(body[range].to_vec().into())
            .send()
            .await
            .expect("upload part");
        parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(n)
                .e_tag(out.e_tag().expect("part etag"))
                .build(),
        );
    }
    let done = c
        .complete_multipart_upload()
        .bucket("src-bucket")
        .key(key)
        .upload_id(&id)
        .multipart_upload(
            aws_sdk_s3::types::CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .expect("complete upload");
    done.e_tag().expect("etag").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_source_copied_in_one_put_is_checked_by_content_md5() {
    let env = Env::start().await;
    // The first PUT's body is corrupted on the way; a server that checks Content-MD5 refuses it.
    let faults = vec![Fault::CorruptBody {
        call: Call::PutObject,
        times: 1,
    }];
    let (engine, proxy) = setup(&env, faults, "").await;
    let text = env
        .read_config_text()
        .replace("multipart_threshold = \"5MiB\"", "multipart_threshold = \"8MiB\"");
    env.write_config_text(&text);
    engine.reload().await.expect("reload");
    let body = pseudo_random_bytes(6 * MIB + 3, 5);
    let etag = put_multipart(&env, "parts.bin", &body).await;
    assert!(etag.trim_matches('"').ends_with("-2"), "{etag}");

    let summary = engine.run_once().await.expect("run");
    assert!(summary.failed.is_empty(), "{:?}", failures(&summary));
    assert!(
        get_bytes(&env.sh, "dst-bucket", "parts.bin").await.as_deref() == Some(&body[..]),
        "the replica's bytes differ from the source's"
    );
    assert_eq!(
        key_versions(&env.sh, "dst-bucket", "parts.bin").await.len(),
        1,
        "exactly one version on the destination"
    );
    let puts = proxy.calls(Call::PutObject);
    assert!(
        puts.len() == 2 && puts.iter().all(|p| p.content_md5.is_some()),
        "two PUTs, the corrupted one refused, each with Content-MD5: {puts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_fails_to_tell_its_parts_still_gets_its_multipart_object_copied() {
    let env = Env::start().await;
    let (engine, proxy) = setup_at(&env, &env.gz.url, vec![Fault::PartHeadError], "").await;
    let body = pseudo_random_bytes(6 * MIB + 3, 11);
    let etag = put_multipart(&env, "parts.bin", &body).await;
    assert!(etag.trim_matches('"').ends_with("-2"), "{etag}");

    let summary = engine.run_once().await.expect("run");
    assert!(summary.failed.is_empty(), "{:?}", failures(&summary));
    let refused: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.method == "HEAD" && s.target.contains("partNumber="))
        .collect();
    assert!(
        refused.len() >= 2 && refused.iter().all(|s| s.status == 500),
        "the source was asked for its parts on the first attempt and again on the next: {refused:?}"
    );
    assert!(
        get_bytes(&env.sh, "dst-bucket", "parts.bin").await.as_deref() == Some(&body[..]),
        "the replica's bytes differ from the source's"
    );
    assert_eq!(key_versions(&env.sh, "dst-bucket", "parts.bin").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upper_case_etag_is_the_same_etag() {
    let env = Env::start().await;
    let faults = vec![Fault::UppercaseEtag];
    let (engine, _proxy) = setup(&env, faults, "").await;
    put(&env.gz, "src-bucket", "case.txt", "same bytes, upper-case ETag").await;

    let summary = engine.run_once().await.expect("run");
    assert!(summary.failed.is_empty(), "{:?}", failures(&summary));
    assert_eq!(
        key_versions(&env.sh, "dst-bucket", "case.txt").await.len(),
        1,
        "a good write was failed and written again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kms_destination_etag_does_not_fail_a_good_write() {
    let env = Env::start().await;
    let faults = vec![Fault::KmsEtag];
    let (engine, proxy) = setup(&env, faults, "").await;
    let body = pseudo_random_bytes(300 * KIB, 3);
    put(&env.gz, "src-bucket", "kms.bin", body.clone()).await;

    let summary = engine.run_once().await.expect("run");
    assert!(summary.failed.is_empty(), "{:?}", failures(&summary));
    assert_eq!(
        key_versions(&env.sh, "dst-bucket", "kms.bin").await.len(),
        1,
        "a good write was failed and written again"
    );
    assert_eq!(get_bytes(&env.sh, "dst-bucket", "kms.bin").await, Some(body));
    // The ETag could not say the bytes arrived whole: the server checked them by Content-MD5.
    let puts = proxy.calls(Call::PutObject);
    assert!(puts.iter().all(|p| p.content_md5.is_some()), "{puts:?}");
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_moving_upload_longer_than_the_stall_window_completes() {
    let env = Env::start().await;
    let (engine, _proxy) = setup(&env, Vec::new(), "bandwidth_limit = \"100KiB\"\nstall_timeout = \"2s\"").await;
    let body = pseudo_random_bytes(600 * KIB, 8);
    put(&env.gz, "src-bucket", "slow.bin", body.clone()).await;

    let started = Instant::now();
    let summary = engine.run_once().await.expect("run");
    let took = started.elapsed();
    assert!(summary.failed.is_empty(), "{:?}", failures(&summary));
    assert!(took >= Duration::from_secs(4), "not paced: {took:?}");
    assert_eq!(get_bytes(&env.sh, "dst-bucket", "slow.bin").await, Some(body));
    assert_eq!(key_versions(&env.sh, "dst-bucket", "slow.bin").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_fails_and_says_it_stalled() {
    let env = Env::start().await;
    let faults = vec![Fault::BlackHole { call: Call::PutObject }];
    let (engine, _proxy) = setup(&env, faults, "stall_timeout = \"2s\"").await;
    let text = env.read_config_text().replace("max_attempts = 3", "max_attempts = 1");
    env.write_config_text(&text);
    engine.reload().await.expect("reload");
    put(&env.gz, "src-bucket", "stuck.bin", pseudo_random_bytes(600 * KIB, 9)).await;

    let started = Instant::now();
    let summary = tokio::time::timeout(Duration::from_secs(30), engine.run_once())
        .await
        .expect("the stalled upload was still waiting after 30 s")
        .expect("run");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    let why = failures(&summary);
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(
        why[0].contains("stalled"),
        "the failure does not say it stalled: {why:?}"
    );
    assert!(!why[0].contains("cannot connect"), "{why:?}");
    eprintln!("stall message: {}", why[0]);
}
