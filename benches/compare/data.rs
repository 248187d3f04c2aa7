//! Seeding a source bucket, hashing what a bucket holds, verifying a destination against the
//! source, and removing a destination bucket afterwards.

use crate::common::{Server, create_bucket, list_versions, pseudo_random_bytes, put_multipart};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use std::collections::BTreeMap;

/// Objects above this size are seeded (and copied by the ceiling) in parts.
pub const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// The part size of those uploads: crr's default.
pub const PART_SIZE: u64 = 8 << 20;

/// One object of a workload.
#[derive(Clone, Debug)]
pub struct Obj {
    pub key: String,
    pub size: u64,
}

/// Size and MD5 of every object of a bucket, by key.
pub type Hashes = BTreeMap<String, (u64, [u8; 16])>;

/// The objects of a workload: `count` objects of `size` bytes under `prefix`.
pub fn objects(prefix: &str, count: usize, size: u64) -> Vec<Obj> {
    (0..count)
        .map(|i| Obj {
            key: format!("{prefix}/{i:06}"),
            size,
        })
        .collect()
}

/// The body of one seeded object: pseudo-random bytes that differ per key.
fn body_of(obj: &Obj) -> Vec<u8> {
    let seed = obj.key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    pseudo_random_bytes(obj.size as usize, seed)
}

/// Creates `bucket` (versioned) and puts every object into it, `concurrency` at a time.
pub async fn seed(s3: &Server, bucket: &str, objs: &[Obj], concurrency: usize) -> Result<(), String> {
    create_bucket(s3, bucket, true).await;
    put_all(s3, bucket, objs, concurrency).await
}

/// Puts every object into an existing bucket, `concurrency` at a time.
pub async fn put_all(s3: &Server, bucket: &str, objs: &[Obj], concurrency: usize) -> Result<(), String> {
    let large = objs.iter().any(|o| o.size > MULTIPART_THRESHOLD);
    // Large bodies live in memory while they are sent: fewer at once.
    let concurrency = if large { concurrency.min(4) } else { concurrency };
    futures::stream::iter(objs.iter().cloned())
        .map(|obj| async move {
            let body = body_of(&obj);
            if obj.size > MULTIPART_THRESHOLD {
                put_multipart(s3, bucket, &obj.key, &body, PART_SIZE as usize).await;
                return Ok(());
            }
            s3.client
                .put_object()
                .bucket(bucket)
                .key(&obj.key)
                .content_length(body.len() as i64)
                .body(ByteStream::from(body))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| format!("seed {bucket}/{}: {e:?}", obj.key))
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

/// Creates a fresh versioned destination bucket and writes (then removes, version and all) one
/// small object: SeaweedFS allocates a new bucket's storage on its first write, which takes
/// about a second that would otherwise be charged to whichever tool writes first.
pub async fn fresh_bucket(s3: &Server, bucket: &str) -> Result<(), String> {
    create_bucket(s3, bucket, true).await;
    let key = ".bench-warm-up";
    let put = s3
        .client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from_static(b"warm-up"))
        .send()
        .await
        .map_err(|e| format!("warm up {bucket} on {}: {e:?}", s3.name))?;
    s3.client
        .delete_object()
        .bucket(bucket)
        .key(key)
        .set_version_id(put.version_id().map(str::to_string))
        .send()
        .await
        .map_err(|e| format!("warm up {bucket} on {}: {e:?}", s3.name))?;
    Ok(())
}

/// Key and size of every current object of a bucket (ListObjectsV2).
pub async fn list_sizes(s3: &Server, bucket: &str) -> Result<BTreeMap<String, u64>, String> {
    let mut out = BTreeMap::new();
    let mut token: Option<String> = None;
    loop {
        let page = s3
            .client
            .list_objects_v2()
            .bucket(bucket)
            .set_continuation_token(token.clone())
            .send()
            .await
            .map_err(|e| format!("list {bucket} on {}: {e:?}", s3.name))?;
        for o in page.contents() {
            out.insert(o.key().unwrap_or_default().to_string(), o.size().unwrap_or(0) as u64);
        }
        match page.next_continuation_token() {
            Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => break,
        }
    }
    Ok(out)
}

/// Downloads every current object of `bucket` and returns its size and the MD5 of its bytes.
pub async fn hash_bucket(s3: &Server, bucket: &str, concurrency: usize) -> Result<Hashes, String> {
    let listed = list_sizes(s3, bucket).await?;
    let hashed: Vec<(String, (u64, [u8; 16]))> = futures::stream::iter(listed.into_keys())
        .map(|key| async move {
            let got = s3
                .client
                .get_object()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| format!("get {bucket}/{key} on {}: {e:?}", s3.name))?;
            let mut body = got.body;
            let mut md5 = Md5::new();
            let mut len = 0u64;
            while let Some(chunk) = body.try_next().await.map_err(|e| format!("read {bucket}/{key}: {e}"))? {
                len += chunk.len() as u64;
                md5.update(&chunk);
            }
            Ok::<_, String>((key, (len, md5.finalize().into())))
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    Ok(hashed.into_iter().collect())
}

/// Checks that `bucket` on `dst` holds exactly the keys of `want`, each with the same size and
/// the same MD5 of its bytes (downloaded, not taken from ETags). `Err` says what differs.
pub async fn verify(want: &Hashes, dst: &Server, bucket: &str) -> Result<(), String> {
    let got = hash_bucket(dst, bucket, 32).await?;
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let differ: Vec<&String> = want
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .map(|(k, _)| k)
        .collect();
    if missing.is_empty() && extra.is_empty() && differ.is_empty() {
        return Ok(());
    }
    let first = |v: &[&String]| v.iter().take(3).map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
    Err(format!(
        "{} of {} keys missing [{}], {} extra [{}], {} with other bytes [{}]",
        missing.len(),
        want.len(),
        first(&missing),
        extra.len(),
        first(&extra),
        differ.len(),
        first(&differ)
    ))
}

/// Removes every version and delete marker of `bucket`, then the bucket (destinations of
/// earlier runs, so a server's disk or memory does not fill up). Failures are reported, not
/// fatal.
pub async fn remove_bucket(s3: &Server, bucket: &str) {
    let entries = list_versions(s3, bucket, None).await;
    for batch in entries.chunks(1000) {
        let ids: Vec<ObjectIdentifier> = batch
            .iter()
            .filter_map(|e| {
                ObjectIdentifier::builder()
                    .key(&e.key)
                    .version_id(&e.version_id)
                    .build()
                    .ok()
            })
            .collect();
        let Ok(delete) = Delete::builder().set_objects(Some(ids)).quiet(true).build() else {
            continue;
        };
        if let Err(e) = s3.client.delete_objects().bucket(bucket).delete(delete).send().await {
            eprintln!("note: could not empty {bucket} on {}: {e:?}", s3.name);
            return;
        }
    }
    if let Err(e) = s3.client.delete_bucket().bucket(bucket).send().await {
        eprintln!("note: could not remove {bucket} on {}: {e:?}", s3.name);
    }
}
