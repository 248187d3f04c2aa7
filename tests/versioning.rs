//! Versioning suspended on the source or the destination while `crr serve` runs, on moto and on
//! SeaweedFS each way round. The rule goes to `error` with the reason, nothing is written to or
//! deleted from the destination meanwhile, and everything written during the hold replicates
//! once versioning is enabled again.

mod common;

use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
use common::*;
use std::time::Duration;

const SRC: &str = "vs-src";
const DST: &str = "vs-dst";

async fn suspend_versioning(s3: &Server, bucket: &str) {
    s3.client
        .put_bucket_versioning()
        .bucket(bucket)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Suspended)
                .build(),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("suspend versioning on {bucket} ({}): {e:?}", s3.name));
}

/// The destination's versions of `key`: (bytes or "marker", latest), newest first.
async fn dst_history(env: &Env, key: &str) -> Vec<(String, bool)> {
    key_versions(&env.sh, DST, key)
        .await
        .iter()
        .map(|e| {
            let what = if e.is_delete_marker {
                "marker".to_string()
            } else {
                format!("{} B", e.size)
            };
            (what, e.is_latest)
        })
        .collect()
}

async fn wait_for(env: &Env, what: &str, serve: &Serve, check: impl AsyncFn(&Env) -> bool) {
    if !wait_until(Duration::from_secs(60), || check(env)).await {
        fail(env, serve, &format!("timed out waiting for {what}")).await;
    }
}

async fn fail(env: &Env, serve: &Serve, what: &str) -> ! {
    let status = env.crr(&["status"]).await;
    let log = std::fs::read_to_string(env.state_dir.join("crr.log")).unwrap_or_default();
    panic!(
        "{what}\n--- crr status ---\n{}\n--- serve ---\n{}\n--- crr.log ---\n{log}",
        status.combined(),
        serve.output()
    );
}

/// One hold: versioning suspended on `side`'s bucket, changes written on the source during the
/// hold, then versioning enabled again. `round` keeps each round's keys and bodies apart.
async fn hold_and_resume(env: &Env, serve: &Serve, side: &str, round: &str) {
    let (server, bucket) = if side == "source" {
        (&env.gz, SRC)
    } else {
        (&env.sh, DST)
    };
    let (keep, gone, new) = (format!("{round}/keep"), format!("{round}/gone"), format!("{round}/new"));
    put(&env.gz, SRC, &keep, format!("{round} keep v1")).await;
    put(&env.gz, SRC, &gone, format!("{round} gone v1")).await;
    wait_for(env, "the first versions to replicate", serve, async |env: &Env| {
        get_bytes(&env.sh, DST, &keep).await.is_some() && get_bytes(&env.sh, DST, &gone).await.is_some()
    })
    .await;

    suspend_versioning(server, bucket).await;
    wait_for(env, "the rule to go to error", serve, async |env: &Env| {
        env.rule_status("v").await["state"] == "error"
    })
    .await;
    let status = env.rule_status("v").await;
    let reason = status["error"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.contains("versioning is Suspended")
            && reason.contains(&format!("{side} bucket"))
            && reason.contains(bucket),
        "the reason should say which bucket stopped versioning: {status}"
    );
    let human = env.crr(&["status"]).await;
    human.assert_ok();
    assert!(
        human.combined().contains("[error]") && human.combined().contains("versioning is Suspended"),
        "`crr status` should show the rule in error with the reason:\n{}",
        human.combined()
    );

    // Changes during the hold: an overwrite, a delete and a new key.
    let before = (dst_history(env, &keep).await, dst_history(env, &gone).await);
    put(&env.gz, SRC, &keep, format!("{round} keep v2, written during the hold")).await;
    delete(&env.gz, SRC, &gone).await;
    put(&env.gz, SRC, &new, format!("{round} new, written during the hold")).await;
    // Several scan intervals (1s): nothing may reach the destination.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        (dst_history(env, &keep).await, dst_history(env, &gone).await),
        before,
        "the destination changed while the rule was held"
    );
    assert!(
        key_versions(&env.sh, DST, &new).await.is_empty(),
        "{new} reached the destination while the rule was held"
    );
    assert_eq!(env.rule_status("v").await["state"], "error", "the hold ended by itself");

    enable_versioning(server, bucket).await;
    wait_for(env, "the rule to run again", serve, async |env: &Env| {
        env.rule_status("v").await["state"] == "enabled"
    })
    .await;
    // Converged: each key's current object on the destination is the source's. How a server
    // treats a delete while versioning is suspended is its own: S3 leaves a delete marker, which
    // replicates; a server that erases every version of the key leaves nothing to replicate, and
    // a version removed for good is never removed from the destination (DESIGN section 3), so
    // the destination then keeps what it had.
    let converged = async |env: &Env| {
        let mut same = true;
        for key in [&keep, &gone, &new] {
            let expected = if key_versions(&env.gz, SRC, key).await.is_empty() {
                Some(format!("{round} gone v1").into_bytes())
            } else {
                get_bytes(&env.gz, SRC, key).await
            };
            same &= get_bytes(&env.sh, DST, key).await == expected;
        }
        same
    };
    if !wait_until(Duration::from_secs(60), || converged(env)).await {
        let mut views = Vec::new();
        for key in [&keep, &gone, &new] {
            views.push(format!(
                "{key}: source {:?}, destination {:?}",
                key_versions(&env.gz, SRC, key).await,
                dst_history(env, key).await
            ));
        }
        let what = format!(
            "the changes made during the hold did not replicate:\n{}",
            views.join("\n")
        );
        fail(env, serve, &what).await;
    }
    assert_eq!(
        get_bytes(&env.sh, DST, &keep).await,
        Some(format!("{round} keep v2, written during the hold").into_bytes())
    );
    assert!(get_bytes(&env.sh, DST, &new).await.is_some());
    let status = env.rule_status("v").await;
    assert_eq!(status["failed_tasks"], 0, "{status}");
    assert!(status["error"].is_null(), "{status}");
    // The version written before the hold is still there under the new one.
    let history = dst_history(env, &keep).await;
    assert_eq!(history.len(), 2, "{keep} on the destination: {history:?}");
}

async fn held_while_either_bucket_stops_versioning(source: Kind, destination: Kind) {
    let env = Env::start_with(source, destination).await;
    create_bucket(&env.gz, SRC, true).await;
    create_bucket(&env.sh, DST, true).await;
    env.write_config(&[Rule::new("v", &format!("gz/{SRC}"), &format!("sh/{DST}")).operations("all")]);
    env.run_once().await.assert_ok();
    let mut serve = env.spawn_serve();
    hold_and_resume(&env, &serve, "source", "s").await;
    hold_and_resume(&env, &serve, "destination", "d").await;
    let code = serve.terminate(Duration::from_secs(30)).await;
    assert_eq!(code, 0, "{}", serve.output());
    let log = std::fs::read_to_string(env.state_dir.join("crr.log")).unwrap_or_default();
    assert!(log.contains("held"), "the hold should be logged:\n{log}");
}

#[tokio::test]
async fn seaweedfs_to_moto_holds_while_versioning_is_suspended() {
    held_while_either_bucket_stops_versioning(Kind::Weed, Kind::Moto).await;
}

#[tokio::test]
async fn moto_to_seaweedfs_holds_while_versioning_is_suspended() {
    held_while_either_bucket_stops_versioning(Kind::Moto, Kind::Weed).await;
}
