//! What replication does (DESIGN.md section 4), seen from the buckets: enable point, precise
//! replicas, odd keys, multipart sizes, storage class, deletes, prefix scope, per-key order,
//! and the counters of `crr status --json` (section 7).

mod common;

use common::*;

const SRC: &str = "repl-src";
const DST: &str = "repl-dst";

/// Two versioned buckets `gz/repl-src` and `sh/repl-dst`, a config with `rules`, and a first
/// `crr run --once` that records the enable point (the source is empty at that time).
async fn setup(rules: &[Rule]) -> Env {
    let env = Env::start().await;
    create_bucket(&env.gz, SRC, true).await;
    create_bucket(&env.sh, DST, true).await;
    env.write_config(rules);
    env.run_once().await;
    env
}

fn rule(id: &str) -> Rule {
    Rule::new(id, &format!("gz/{SRC}"), &format!("sh/{DST}"))
}

async fn assert_replica_bytes(env: &Env, key: &str, want: &[u8]) {
    common::assert_replica_bytes(&env.sh, DST, key, want).await;
}

async fn assert_not_replicated(env: &Env, key: &str) {
    common::assert_not_replicated(&env.sh, DST, key).await;
}

#[tokio::test]
async fn objects_before_the_enable_point_are_not_replicated() {
    let env = Env::start().await;
    create_bucket(&env.gz, SRC, true).await;
    create_bucket(&env.sh, DST, true).await;
    put(&env.gz, SRC, "before/old.txt", "written before the rule ran").await;
    put(&env.gz, SRC, "both.txt", "old version").await;
    env.write_config(&[rule("enable-point")]);

    // The first run records the enable point; nothing that existed is copied.
    env.run_once().await;
    assert!(
        keys_with_versions(&env.sh, DST).await.is_empty(),
        "pre-existing objects must not be replicated"
    );

    // Written after the enable point: replicated by the next run.
    put(&env.gz, SRC, "after/new.txt", "written after the enable point").await;
    put(&env.gz, SRC, "both.txt", "new version").await;
    env.run_once().await;

    assert_not_replicated(&env, "before/old.txt").await;
    assert_replica_bytes(&env, "after/new.txt", b"written after the enable point").await;
    assert_replica_bytes(&env, "both.txt", b"new version").await;
    let both = key_versions(&env.sh, DST, "both.txt").await;
    assert_eq!(
        both.len(),
        1,
        "only the version written after the enable point is copied: {both:?}"
    );
}

#[tokio::test]
async fn replica_keeps_bytes_headers_metadata_and_tags() {
    let env = setup(&[rule("precise")]).await;
    let opts = PutOpts {
        content_type: Some("text/csv; charset=utf-8".into()),
        cache_control: Some("max-age=3600, public".into()),
        content_disposition: Some("attachment; filename=\"report.csv\"".into()),
        content_encoding: Some("gzip".into()),
        content_language: Some("zh-CN".into()),
        expires: Some(4_102_444_800), // 2100-01-01T00:00:00Z
        metadata: pairs(&[("owner", "alice"), ("project", "crr-test")]),
        tags: pairs(&[("team", "storage"), ("env", "test run")]),
        storage_class: None,
    };
    let body = b"id,name\n1,alpha\n2,beta\n".to_vec();
    put_with(&env.gz, SRC, "reports/2024.csv", body.clone(), &opts).await;
    env.run_once().await;

    assert_replica_bytes(&env, "reports/2024.csv", &body).await;
    let src = head(&env.gz, SRC, "reports/2024.csv").await.expect("source head");
    let dst = head(&env.sh, DST, "reports/2024.csv").await.expect("destination head");
    assert_eq!(dst.content_length, src.content_length, "Content-Length");
    assert_eq!(dst.content_type, src.content_type, "Content-Type");
    assert_eq!(dst.cache_control, src.cache_control, "Cache-Control");
    assert_eq!(dst.content_disposition, src.content_disposition, "Content-Disposition");
    assert_eq!(dst.content_encoding, src.content_encoding, "Content-Encoding");
    assert_eq!(dst.content_language, src.content_language, "Content-Language");
    assert!(src.expires.is_some(), "moto should keep Expires on the source");
    assert_eq!(dst.expires, src.expires, "Expires");
    assert_eq!(
        dst.metadata, src.metadata,
        "user metadata must be equal (and crr adds none of its own)"
    );
    assert_eq!(
        dst.metadata.get("owner").map(String::as_str),
        Some("alice"),
        "user metadata"
    );
    let src_tags = tags(&env.gz, SRC, "reports/2024.csv").await;
    let dst_tags = tags(&env.sh, DST, "reports/2024.csv").await;
    assert_eq!(src_tags.len(), 2, "source tags as put: {src_tags:?}");
    assert_eq!(dst_tags, src_tags, "tags");
}

#[tokio::test]
async fn odd_keys_and_empty_objects_are_replicated() {
    let env = setup(&[rule("odd-keys")]).await;
    let objects: Vec<(&str, Vec<u8>)> = vec![
        ("with space/and more spaces.txt", b"spaces".to_vec()),
        ("plus+sign+key", b"plus".to_vec()),
        ("percent%20literal%2F", b"percent".to_vec()),
        ("hash#fragment", b"hash".to_vec()),
        ("question?mark=1&x=y", b"question".to_vec()),
        ("dir/ünïcødé 文件.txt", "unicode 文件".as_bytes().to_vec()),
        ("empty/zero-byte", Vec::new()),
        ("trailing/dot.", b"dot".to_vec()),
    ];
    for (key, body) in &objects {
        put(&env.gz, SRC, key, body.clone()).await;
    }
    env.run_once().await;

    for (key, body) in &objects {
        assert_replica_bytes(&env, key, body).await;
    }
    let mut want: Vec<String> = objects.iter().map(|(k, _)| k.to_string()).collect();
    want.sort();
    assert_eq!(
        list_keys(&env.sh, DST).await,
        want,
        "the destination holds exactly these keys"
    );
    let empty = head(&env.sh, DST, "empty/zero-byte").await.expect("head");
    assert_eq!(empty.content_length, Some(0), "zero-byte replica");
}

#[tokio::test]
async fn multipart_sized_object_is_replicated_exactly() {
    let env = setup(&[rule("big")]).await;
    // Above multipart_threshold (5MiB) and not a multiple of part_size.
    let body = pseudo_random_bytes(12 * 1024 * 1024 + 12_345, 7);
    let opts = PutOpts {
        content_type: Some("application/x-big".into()),
        metadata: pairs(&[("kind", "large")]),
        ..PutOpts::default()
    };
    put_with(&env.gz, SRC, "big/blob.bin", body.clone(), &opts).await;
    env.run_once().await;

    assert_replica_bytes(&env, "big/blob.bin", &body).await;
    let dst = head(&env.sh, DST, "big/blob.bin").await.expect("head");
    assert_eq!(dst.content_length, Some(body.len() as i64));
    assert_eq!(dst.content_type.as_deref(), Some("application/x-big"));
    assert_eq!(dst.metadata.get("kind").map(String::as_str), Some("large"));
    let versions = key_versions(&env.sh, DST, "big/blob.bin").await;
    assert_eq!(
        versions.len(),
        1,
        "exactly one version, nothing half-written: {versions:?}"
    );
}

#[tokio::test]
async fn storage_class_is_the_rules_or_else_the_sources() {
    let env = Env::start().await;
    create_bucket(&env.gz, "class-src-a", true).await;
    create_bucket(&env.sh, "class-dst-a", true).await;
    create_bucket(&env.gz, "class-src-b", true).await;
    create_bucket(&env.sh, "class-dst-b", true).await;
    env.write_config(&[
        Rule::new("class-set", "gz/class-src-a", "sh/class-dst-a").storage_class("STANDARD_IA"),
        Rule::new("class-same", "gz/class-src-b", "sh/class-dst-b"),
    ]);
    env.run_once().await;

    put(&env.gz, "class-src-a", "a.txt", "standard at the source").await;
    put(&env.gz, "class-src-b", "plain.txt", "standard at the source").await;
    let onezone = PutOpts {
        storage_class: Some("ONEZONE_IA".into()),
        ..PutOpts::default()
    };
    put_with(&env.gz, "class-src-b", "onezone.txt", "one zone", &onezone).await;
    env.run_once().await;

    let a = head(&env.sh, "class-dst-a", "a.txt").await.expect("a.txt replicated");
    assert_eq!(
        a.storage_class.as_deref(),
        Some("STANDARD_IA"),
        "the rule's storage_class"
    );
    let oz = head(&env.sh, "class-dst-b", "onezone.txt")
        .await
        .expect("onezone.txt replicated");
    assert_eq!(
        oz.storage_class.as_deref(),
        Some("ONEZONE_IA"),
        "same class as the source"
    );
    let plain = head(&env.sh, "class-dst-b", "plain.txt")
        .await
        .expect("plain.txt replicated");
    assert_eq!(
        plain.storage_class.as_deref().unwrap_or("STANDARD"),
        "STANDARD",
        "same class as the source"
    );
}

#[tokio::test]
async fn delete_markers_are_replicated_with_operations_all() {
    let env = setup(&[rule("deletes-all").operations("all")]).await;
    put(&env.gz, SRC, "doomed.txt", "first").await;
    env.run_once().await;
    assert_replica_bytes(&env, "doomed.txt", b"first").await;

    delete(&env.gz, SRC, "doomed.txt").await;
    // Put and delete (and delete then put) in the same second, before one run.
    put(&env.gz, SRC, "flash.txt", "short-lived").await;
    delete(&env.gz, SRC, "flash.txt").await;
    put(&env.gz, SRC, "phoenix.txt", "before").await;
    delete(&env.gz, SRC, "phoenix.txt").await;
    put(&env.gz, SRC, "phoenix.txt", "reborn").await;
    env.run_once().await;

    for key in ["doomed.txt", "flash.txt"] {
        assert!(
            get_bytes(&env.sh, DST, key).await.is_none(),
            "{key}: the destination's latest should be a delete marker (GetObject 404)"
        );
        let entries = key_versions(&env.sh, DST, key).await;
        let latest: Vec<&VersionEntry> = entries.iter().filter(|e| e.is_latest).collect();
        assert!(
            latest.len() == 1 && latest[0].is_delete_marker,
            "{key}: the latest entry on the destination should be a delete marker: {entries:?}"
        );
        let versions: Vec<&VersionEntry> = entries.iter().filter(|e| !e.is_delete_marker).collect();
        assert_eq!(
            versions.len(),
            1,
            "{key}: the replicated version is kept on the destination: {entries:?}"
        );
    }
    // The earlier version is still readable by its version id.
    let doomed = key_versions(&env.sh, DST, "doomed.txt").await;
    let kept = doomed.iter().find(|e| !e.is_delete_marker).expect("kept version");
    assert_eq!(
        get_version_bytes(&env.sh, DST, "doomed.txt", &kept.version_id).await,
        b"first"
    );
    let flash = key_versions(&env.sh, DST, "flash.txt").await;
    let kept = flash.iter().find(|e| !e.is_delete_marker).expect("kept version");
    assert_eq!(
        get_version_bytes(&env.sh, DST, "flash.txt", &kept.version_id).await,
        b"short-lived"
    );
    // A key deleted and written again ends with the new object as latest.
    assert_replica_bytes(&env, "phoenix.txt", b"reborn").await;
}

#[tokio::test]
async fn deletes_are_not_replicated_with_operations_put() {
    let env = setup(&[rule("deletes-put").operations("put")]).await;
    put(&env.gz, SRC, "keep.txt", "keep me").await;
    env.run_once().await;
    assert_replica_bytes(&env, "keep.txt", b"keep me").await;

    delete(&env.gz, SRC, "keep.txt").await;
    put(&env.gz, SRC, "quick.txt", "put then deleted").await;
    delete(&env.gz, SRC, "quick.txt").await;
    env.run_once().await;

    assert!(
        get_bytes(&env.gz, SRC, "keep.txt").await.is_none(),
        "the source object is deleted"
    );
    assert_replica_bytes(&env, "keep.txt", b"keep me").await;
    assert_replica_bytes(&env, "quick.txt", b"put then deleted").await;
    let markers: Vec<VersionEntry> = list_versions(&env.sh, DST, None)
        .await
        .into_iter()
        .filter(|e| e.is_delete_marker)
        .collect();
    assert!(
        markers.is_empty(),
        "no delete marker may be placed with operations = \"put\": {markers:?}"
    );
}

#[tokio::test]
async fn only_keys_under_the_rules_prefixes_are_replicated() {
    let env = setup(&[rule("scoped").prefixes(&["logs/", "img/"])]).await;
    let inside = [
        ("logs/app.log", "log line"),
        ("img/cat.png", "meow"),
        ("logs/2024/01.log", "deep"),
    ];
    let outside = [
        ("other/file.txt", "no"),
        ("logsx/almost.txt", "no"),
        ("root.txt", "no"),
        ("LOGS/upper.txt", "no"),
        ("im/g.txt", "no"),
    ];
    for (k, v) in inside.iter().chain(outside.iter()) {
        put(&env.gz, SRC, k, *v).await;
    }
    env.run_once().await;

    for (k, v) in &inside {
        assert_replica_bytes(&env, k, v.as_bytes()).await;
    }
    for (k, _) in &outside {
        assert_not_replicated(&env, k).await;
    }
    let mut want: Vec<String> = inside.iter().map(|(k, _)| k.to_string()).collect();
    want.sort();
    assert_eq!(keys_with_versions(&env.sh, DST).await, want);
}

#[tokio::test]
async fn versions_of_one_key_are_replicated_in_order() {
    let env = setup(&[rule("ordered")]).await;
    // Several versions of one key in quick succession (mostly the same second), interleaved
    // with other keys.
    for i in 1..=6 {
        put(&env.gz, SRC, "hot/key.txt", format!("version {i}")).await;
        put(&env.gz, SRC, &format!("cold/{i}.txt"), format!("cold {i}")).await;
    }
    put(&env.gz, SRC, "hot/other.txt", "a").await;
    put(&env.gz, SRC, "hot/other.txt", "b").await;
    env.run_once().await;

    assert_replica_bytes(&env, "hot/key.txt", b"version 6").await;
    assert_replica_bytes(&env, "hot/other.txt", b"b").await;

    // Every version was copied, and the destination's history reads in the same order.
    let src_versions = key_versions(&env.gz, SRC, "hot/key.txt").await;
    let dst_versions = key_versions(&env.sh, DST, "hot/key.txt").await;
    assert_eq!(dst_versions.len(), src_versions.len(), "{dst_versions:?}");
    let mut src_bodies = Vec::new();
    for v in &src_versions {
        src_bodies.push(get_version_bytes(&env.gz, SRC, "hot/key.txt", &v.version_id).await);
    }
    let mut dst_bodies = Vec::new();
    for v in &dst_versions {
        dst_bodies.push(get_version_bytes(&env.sh, DST, "hot/key.txt", &v.version_id).await);
    }
    let show =
        |b: &Vec<Vec<u8>>| -> Vec<String> { b.iter().map(|x| String::from_utf8_lossy(x).into_owned()).collect() };
    assert_eq!(
        show(&dst_bodies),
        show(&src_bodies),
        "destination versions (newest first) should match the source's"
    );
    assert!(dst_versions[0].is_latest, "newest listed version is the latest");
}

#[tokio::test]
async fn status_json_counts_what_a_run_did() {
    let env = setup(&[rule("counted")]).await;

    let before = env.rule_status("counted").await;
    assert_eq!(before["id"], "counted");
    assert_eq!(before["enabled"], true);
    assert_eq!(before["source"], format!("gz/{SRC}"));
    assert_eq!(before["destination"], format!("sh/{DST}"));
    let enable_point = before["enable_point"]
        .as_str()
        .unwrap_or_else(|| panic!("enable_point should be set after a run: {before}"))
        .to_string();
    assert!(
        enable_point.ends_with('Z'),
        "timestamps are RFC 3339 UTC: {enable_point}"
    );
    assert_eq!(before["replicated_objects"], 0, "{before}");

    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("a.txt", b"alpha".to_vec()),
        ("b/c.txt", b"charlie!".to_vec()),
        ("d.bin", vec![7u8; 1000]),
        ("a.txt", b"alpha two".to_vec()),
        ("empty", Vec::new()),
    ];
    let total_bytes: u64 = bodies.iter().map(|(_, b)| b.len() as u64).sum();
    for (k, b) in &bodies {
        put(&env.gz, SRC, k, b.clone()).await;
    }
    env.run_once().await;

    let after = env.rule_status("counted").await;
    assert_eq!(after["pending_tasks"], 0, "{after}");
    assert_eq!(after["pending_bytes"], 0, "{after}");
    assert_eq!(after["failed_tasks"], 0, "{after}");
    assert_eq!(
        after["replicated_objects"],
        bodies.len() as u64,
        "one per version copied: {after}"
    );
    assert_eq!(after["replicated_bytes"], total_bytes, "{after}");
    assert!(
        after["last_sync_point"].is_string(),
        "last_sync_point should be set after a run: {after}"
    );
    assert!(
        after["last_sync_point"].as_str().unwrap().ends_with('Z'),
        "timestamps are RFC 3339 UTC: {after}"
    );
    assert_eq!(
        after["enable_point"].as_str(),
        Some(enable_point.as_str()),
        "a run does not move the enable point"
    );
    assert!(
        after.get("migration").is_some() && after["migration"].is_null(),
        "no migration was started: {after}"
    );

    // Another run with nothing new copies nothing again.
    let versions_before = list_versions(&env.sh, DST, None).await.len();
    env.run_once().await;
    let again = env.rule_status("counted").await;
    assert_eq!(again["replicated_objects"], bodies.len() as u64, "{again}");
    assert_eq!(
        list_versions(&env.sh, DST, None).await.len(),
        versions_before,
        "a second run must not copy anything twice"
    );
}
