//! Who checks the bytes of a whole-object copy (src/s3/body_check.rs). crr sends the source's
//! ETag as `Content-MD5`; once it has sent a few MiB to a destination, it asks that destination
//! (a part with a `Content-MD5` that does not match it, in an upload it aborts) whether it
//! refuses such a body or answers with the MD5 of what it stored, and leaves the check to it
//! if so. Against real moto servers, with a proxy in front of each: one that damages a read
//! from the source (tests/netfault), and one that makes the destination check `Content-MD5`
//! as S3 does, or not at all, or echo it as its ETag (tests/fault).

mod common;
mod fault;
mod netfault;

use common::{
    Env, Kind as ServerKind, Rule, create_bucket, failures, get_bytes, key_versions, open_engine, open_uploads,
    pseudo_random_bytes, put,
};
use crr::engine::Engine;
use fault::{Call, Fault, Proxy};
use netfault::{Kind, NetProxy, Plan};
use std::sync::Arc;

const MIB: usize = 1 << 20;
/// Objects of 1 MiB: more than crr hashes for a destination before it asks it.
const ENOUGH: usize = 6;

struct Setup {
    env: Env,
    engine: Arc<Engine>,
    /// In front of the source: damages reads when told to.
    src: NetProxy,
    /// In front of the destination, with the faults given.
    dst: Proxy,
}

async fn setup(dst_faults: Vec<Fault>) -> Setup {
    setup_on(ServerKind::Moto, dst_faults).await
}

/// `setup` with a destination server of `kind`.
async fn setup_on(kind: ServerKind, dst_faults: Vec<Fault>) -> Setup {
    let env = Env::start_with(ServerKind::Moto, kind).await;
    create_bucket(&env.gz, "src-bucket", true).await;
    create_bucket(&env.sh, "dst-bucket", true).await;
    let src = NetProxy::start(&env.gz.url, Plan::none()).await;
    let dst = Proxy::start(&env.sh.url, dst_faults).await;
    let text = env
        .config_text(&[Rule::new("r", "gz/src-bucket", "sh/dst-bucket")])
        .replace(&format!("url = \"{}\"", env.gz.url), &format!("url = \"{}\"", src.url))
        .replace(&format!("url = \"{}\"", env.sh.url), &format!("url = \"{}\"", dst.url));
    assert!(
        text.contains(&src.url) && text.contains(&dst.url),
        "the harness config changed shape: {text}"
    );
    env.write_config_text(&text);
    let engine = open_engine(&env).await;
    let rec = engine.reconcile(None).await.expect("reconcile");
    assert!(rec.refused.is_empty(), "{:?}", rec.refused);
    Setup { env, engine, src, dst }
}

/// Copies [`ENOUGH`] objects of 1 MiB, checks them, and returns the one question crr asked the
/// destination: an UploadPart whose `Content-MD5` is not that of its body.
async fn copy_enough_to_ask(s: &Setup) -> fault::Seen {
    let mut bodies = Vec::new();
    for i in 0..ENOUGH {
        let body = pseudo_random_bytes(MIB, 100 + i as u64);
        put(&s.env.gz, "src-bucket", &format!("early/{i}.bin"), body.clone()).await;
        bodies.push(body);
    }
    let summary = s.engine.run_once().await.expect("run");
    assert!(summary.failed.is_empty(), "{:?}", failures(&summary));
    for (i, body) in bodies.iter().enumerate() {
        let key = format!("early/{i}.bin");
        assert!(
            get_bytes(&s.env.sh, "dst-bucket", &key).await.as_deref() == Some(&body[..]),
            "{key}: the replica's bytes differ from the source's"
        );
        assert_eq!(key_versions(&s.env.sh, "dst-bucket", &key).await.len(), 1, "{key}");
    }
    let parts = s.dst.calls(Call::UploadPart);
    assert!(
        (1..=2).contains(&parts.len())
            && parts
                .iter()
                .all(|p| p.content_md5.is_some() && p.body_len > 0 && p.body_len < 1024),
        "one question (small parts with a Content-MD5), and no other part: {parts:?}"
    );
    let asked = parts[0].clone();
    assert_ne!(
        asked.content_md5,
        parts.get(1).and_then(|p| p.content_md5.clone()),
        "a part refused is sent again with its own MD5: {parts:?}"
    );
    assert_eq!(
        open_uploads(&s.env.sh, "dst-bucket").await.len(),
        0,
        "the upload that asked was aborted"
    );
    asked
}

/// The PutObject requests the destination saw for `key`.
fn puts_of(s: &Setup, key: &str) -> Vec<fault::Seen> {
    s.dst
        .calls(Call::PutObject)
        .into_iter()
        .filter(|p| p.target.contains(key))
        .collect()
}

/// Writes `late.bin` (1 MiB), damages the next read from the source, and runs: the damaged
/// body must not stay on the destination, and the object is copied all the same.
async fn a_damaged_read_is_caught(s: &Setup) {
    s.src
        .set_plan(Plan::none().with(Kind::CorruptBody, 1000).at_most(Kind::CorruptBody, 1));
    let body = pseudo_random_bytes(MIB, 7);
    put(&s.env.gz, "src-bucket", "late.bin", body.clone()).await;
    let summary = s.engine.run_once().await.expect("run");
    assert!(summary.failed.is_empty(), "{:?}", failures(&summary));
    assert_eq!(
        s.src.injected().get(&Kind::CorruptBody).copied(),
        Some(1),
        "one read from the source was damaged"
    );
    assert!(
        get_bytes(&s.env.sh, "dst-bucket", "late.bin").await.as_deref() == Some(&body[..]),
        "the replica's bytes differ from the source's"
    );
    assert_eq!(
        key_versions(&s.env.sh, "dst-bucket", "late.bin").await.len(),
        1,
        "the damaged write was refused or removed: one version on the destination"
    );
    let puts = puts_of(s, "late.bin");
    assert_eq!(puts.len(), 2, "the damaged body was sent, then a good one: {puts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_checks_content_md5_is_asked_once_and_refuses_a_damaged_read() {
    // The proxy refuses a body that does not match its Content-MD5, as S3 does.
    let s = setup(Vec::new()).await;
    let asked = copy_enough_to_ask(&s).await;
    assert_eq!(asked.status, 400, "refused: {asked:?}");
    let statuses: Vec<_> = s.dst.calls(Call::UploadPart).iter().map(|p| p.status).collect();
    assert_eq!(statuses, [400, 200], "then taken with its own MD5");
    a_damaged_read_is_caught(&s).await;
    let refused: Vec<_> = s
        .dst
        .calls(Call::PutObject)
        .into_iter()
        .filter(|p| p.status == 400)
        .collect();
    assert_eq!(refused.len(), 1, "the damaged body was refused: {refused:?}");
    assert_eq!(s.dst.calls(Call::UploadPart).len(), 2, "asked once only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_whose_etag_is_the_md5_of_what_it_stored_shows_a_damaged_read() {
    // moto behind the proxy stores any body and answers with its MD5.
    let s = setup(vec![Fault::IgnoresContentMd5]).await;
    let asked = copy_enough_to_ask(&s).await;
    assert_eq!(asked.status, 200, "stored: {asked:?}");
    a_damaged_read_is_caught(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_echoes_content_md5_as_its_etag_leaves_crr_hashing() {
    // Nothing the destination answers says what it stored: only crr's own hash of what it
    // read can catch the damage.
    let s = setup(vec![Fault::EchoesContentMd5]).await;
    let asked = copy_enough_to_ask(&s).await;
    assert_eq!(asked.status, 200, "stored: {asked:?}");
    a_damaged_read_is_caught(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etag_that_is_no_md5_from_a_destination_trusted_for_its_etags_sends_the_copy_again() {
    let s = setup(vec![Fault::IgnoresContentMd5]).await;
    copy_enough_to_ask(&s).await;
    // The bucket now answers as one with SSE-KMS default encryption does: its ETags are no
    // MD5 sums, so they cannot show what was stored.
    s.dst.set_faults(vec![Fault::KmsEtag]);
    let body = pseudo_random_bytes(MIB, 8);
    put(&s.env.gz, "src-bucket", "kms.bin", body.clone()).await;
    let summary = s.engine.run_once().await.expect("run");
    assert!(summary.failed.is_empty(), "{:?}", failures(&summary));
    assert!(
        get_bytes(&s.env.sh, "dst-bucket", "kms.bin").await.as_deref() == Some(&body[..]),
        "the replica's bytes differ from the source's"
    );
    assert_eq!(
        key_versions(&s.env.sh, "dst-bucket", "kms.bin").await.len(),
        1,
        "the write nothing vouched for was removed"
    );
    let puts = puts_of(&s, "kms.bin");
    assert_eq!(
        puts.len(),
        2,
        "sent again, checked by crr's own hash this time: {puts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seaweedfs_destination_keeps_no_damaged_read() {
    // SeaweedFS behind a proxy that lets it decide: whatever it answers the question, a read
    // damaged after it must not stay on the destination.
    let s = setup_on(ServerKind::Weed, vec![Fault::IgnoresContentMd5]).await;
    copy_enough_to_ask(&s).await;
    let statuses: Vec<_> = s.dst.calls(Call::UploadPart).iter().map(|p| p.status).collect();
    // What this test is for: SeaweedFS refuses the question's part, so crr stops hashing what
    // it sends there, and the damaged PutObject below is left to SeaweedFS to refuse.
    assert_eq!(
        statuses,
        [400, 200],
        "SeaweedFS no longer refuses a part against its Content-MD5"
    );
    a_damaged_read_is_caught(&s).await;
    let answers: Vec<_> = puts_of(&s, "late.bin").iter().map(|p| p.status).collect();
    assert_eq!(answers, [400, 200], "SeaweedFS refused the damaged PutObject");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_write_an_echoing_destination_took_before_a_crash_is_copied_again() {
    let Setup {
        env,
        engine,
        src: _src,
        dst,
    } = setup(vec![Fault::EchoesContentMd5]).await;
    let body = pseudo_random_bytes(300 << 10, 21);
    put(&env.gz, "src-bucket", "crash.bin", body.clone()).await;
    engine.scan_all().await;
    // crr's copy lands; the process dies before it records the outcome.
    common::copy_then_crash(&engine).await;
    drop(engine);
    // What an attempt that died before comparing its hash could have left instead: the same
    // size and headers, other bytes, and as its ETag the Content-MD5 crr sent.
    let landed = key_versions(&env.sh, "dst-bucket", "crash.bin").await;
    assert_eq!(landed.len(), 1, "{landed:?}");
    let head = env
        .sh
        .client
        .head_object()
        .bucket("dst-bucket")
        .key("crash.bin")
        .send()
        .await
        .expect("head the replica");
    let mut damaged = body.clone();
    damaged[1000] ^= 0x5a;
    common::s3_client(&dst.url, &env.sh.region)
        .put_object()
        .bucket("dst-bucket")
        .key("crash.bin")
        .set_content_type(head.content_type().map(str::to_string))
        .content_md5(fault::content_md5(&body))
        .body(damaged.into())
        .send()
        .await
        .expect("put the damaged body");
    env.sh
        .client
        .delete_object()
        .bucket("dst-bucket")
        .key("crash.bin")
        .version_id(landed[0].version_id.clone())
        .send()
        .await
        .expect("remove the good write");

    let engine = open_engine(&env).await;
    let summary = engine.run_once().await.expect("run");
    assert!(summary.failed.is_empty(), "{:?}", failures(&summary));
    assert!(
        get_bytes(&env.sh, "dst-bucket", "crash.bin").await.as_deref() == Some(&body[..]),
        "the damaged write was taken for the replica"
    );
    assert_eq!(
        key_versions(&env.sh, "dst-bucket", "crash.bin").await.len(),
        1,
        "the damaged write was removed"
    );
}
