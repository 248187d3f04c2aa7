//! Copying one task to the destination: a version (in one PUT below the multipart threshold, in
//! verified parts above it) or a delete marker. Part progress is persisted so a restart resumes a
//! multipart upload.
//!
//! A whole-object PUT carries `Content-MD5`, so the destination refuses a body corrupted on the
//! way rather than storing it as a version. Where the source's ETag is the MD5 of its bytes, that
//! is known before the body is read, and the body streams from source to destination. Where it
//! is not (multipart ETags "...-N", SSE-KMS, SSE-C, some providers), the object (at most the
//! multipart threshold) is read into memory first to compute it. A replica is then accepted when
//! its ETag is the MD5 of the bytes sent (compared without quotes or case); where the
//! destination's ETags are not MD5 sums (SSE-KMS there), by its size and the Content-MD5 the
//! server checked.
//!
//! A streamed body is hashed on its way too, so that one damaged on its way from the source is
//! caught whatever the destination does, until the destination has shown that it catches that
//! itself: that it refuses a body not matching its Content-MD5, or answers with the MD5 of what
//! it stored (see `crate::s3::body_check`).
//!
//! Parts stream, each checked by the ETag the destination gives it; before the upload is
//! completed, the source's ETag vouches for the bytes read (see `multipart`).

use crate::config::Overwrite;
use crate::config::{EngineConfig, Rule};
use crate::engine::limit::{Limiter, reserve_all};
use crate::engine::progress::{Activity, Md5Sink, Metered, Progress, Stalled, TaskProgress, read_all, watch};
use crate::s3::body_check::{self, Guard};
use crate::s3::{S3, S3Error, s3_error};
use crate::store::replica::Replica;
use crate::store::{Store, Task, TaskKind};
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption, StorageClass};
use futures::StreamExt;
use md5::{Digest, Md5};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Why a copy did not complete.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The source version no longer exists: nothing to copy.
    #[error("{0}")]
    Gone(String),
    /// Worth another attempt (network, throttling, server errors, verification mismatch).
    #[error("{0}")]
    Retry(String),
}

impl From<S3Error> for CopyError {
    fn from(e: S3Error) -> Self {
        if e.is_code("NoSuchVersion") || (e.is_not_found() && e.message.starts_with("Get")) {
            CopyError::Gone(format!("the source version no longer exists ({})", e.message))
        } else {
            CopyError::Retry(e.message)
        }
    }
}

impl From<anyhow::Error> for CopyError {
    fn from(e: anyhow::Error) -> Self {
        CopyError::Retry(format!("{e:#}"))
    }
}

pub struct Copied {
    pub dest_version: Option<String>,
    pub bytes: u64,
}

/// What a copy needs: both clients, the rule, the engine settings and the store.
pub struct CopyCtx<'a> {
    pub src: &'a S3,
    pub dst: &'a S3,
    pub rule: &'a Rule,
    pub engine: &'a EngineConfig,
    pub store: &'a Store,
    pub progress: &'a Arc<Progress>,
    /// The bandwidth limits this copy shares (global, the rule's).
    pub limits: Vec<Arc<Limiter>>,
}

/// An ETag the way providers differ in writing it: without quotes, in lower case.
pub fn normal_etag(etag: &str) -> String {
    etag.trim().trim_matches('"').to_ascii_lowercase()
}

/// Whether an object's ETag is not its MD5 whatever it looks like: SSE-KMS (and DSSE-KMS)
/// and SSE-C give other ETags. SSE-S3 keeps MD5 ETags.
fn opaque_etag(sse: Option<&ServerSideEncryption>, sse_customer: Option<&str>) -> bool {
    sse.is_some_and(|s| s.as_str().starts_with("aws:kms")) || sse_customer.is_some()
}

/// The MD5 an ETag stands for, when it stands for one: 32 hex digits, on an object whose
/// encryption keeps ETags as MD5 sums.
fn etag_md5(etag: Option<&str>, opaque: bool) -> Option<[u8; 16]> {
    if opaque {
        return None;
    }
    let etag = normal_etag(etag?);
    let mut md5 = [0u8; 16];
    hex::decode_to_slice(etag.as_bytes(), &mut md5).ok()?;
    Some(md5)
}

fn md5_of(bytes: &[u8]) -> [u8; 16] {
    let mut md5 = [0u8; 16];
    md5.copy_from_slice(&Md5::digest(bytes));
    md5
}

fn take_md5(digest: &std::sync::Mutex<Md5>) -> [u8; 16] {
    let mut md5 = [0u8; 16];
    md5.copy_from_slice(&std::mem::take(&mut *digest.lock().unwrap_or_else(|p| p.into_inner())).finalize());
    md5
}

/// Standard base64 with padding, as the `Content-MD5` header wants it.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// How a whole-object PUT ended.
enum Whole {
    Done(Copied),
    /// The source's ETag looked like an MD5 but is not the MD5 of the bytes it sent (given):
    /// the destination refused them against it. Nothing was written.
    EtagNotMd5([u8; 16]),
}

impl CopyCtx<'_> {
    fn src_target(&self, task: &Task) -> String {
        format!(
            "{}/{}/{} (version {})",
            self.src.endpoint, self.rule.source.bucket, task.key, task.version_id
        )
    }

    fn dst_target(&self, key: &str) -> String {
        format!("{}/{}/{}", self.dst.endpoint, self.rule.destination.bucket, key)
    }

    pub async fn run(&self, task: &Task) -> Result<Copied, CopyError> {
        match task.kind {
            TaskKind::Delete => self.delete_marker(task).await,
            TaskKind::Put => {
                if (task.attempts > 1 || task.interrupted)
                    && let Some(done) = self.already_there(task).await?
                {
                    return Ok(done);
                }
                if task.size > self.engine.multipart_threshold {
                    self.multipart(task).await
                } else {
                    if let Some(stale) = &task.upload_id {
                        // Started in parts under another threshold: that upload is dropped.
                        abort_upload(self.dst, &self.rule.destination.bucket, &task.key, stale).await?;
                        self.store.set_upload(task.id, None)?;
                    }
                    self.single(task).await
                }
            }
        }
    }

    /// For a migration task: why it need not be copied, per the `overwrite` policy, or `None`
    /// to copy it. "if-different" treats as identical a destination object of the same size and
    /// ETag, or the replica crr itself wrote of this very version.
    pub async fn migration_skip(&self, task: &Task, overwrite: Overwrite) -> Result<Option<String>, CopyError> {
        match overwrite {
            Overwrite::Always => return Ok(None),
            // The destination's listing beside the migration's did not hold the key.
            Overwrite::IfDifferent if task.dest_absent => return Ok(None),
            _ => {}
        }
        let Some(head) = self.dest_latest(&task.key).await? else {
            return Ok(None);
        };
        Ok(match overwrite {
            Overwrite::Always => None,
            Overwrite::Never => Some("exists on the destination (overwrite = \"never\")".into()),
            Overwrite::IfDifferent => {
                let same_size = head.content_length().unwrap_or(-1) as u64 == task.size;
                let same_etag = !task.etag.is_empty() && head.e_tag().map(normal_etag) == Some(normal_etag(&task.etag));
                let ours = match head.version_id() {
                    Some(v) => self
                        .store
                        .is_our_replica(&self.rule.id, &task.key, &task.version_id, v)?,
                    None => false,
                };
                if (same_size && same_etag) || ours {
                    Some("identical on the destination".into())
                } else {
                    None
                }
            }
        })
    }

    async fn delete_marker(&self, task: &Task) -> Result<Copied, CopyError> {
        let out = self
            .dst
            .client
            .delete_object()
            .bucket(&self.rule.destination.bucket)
            .key(&task.key)
            .send()
            .await
            .map_err(|e| s3_error("DeleteObject", &self.dst_target(&task.key), e))?;
        if out.delete_marker() != Some(true) {
            // Some servers create no marker for a key they never held (moto does not); the key is
            // hidden all the same, which is what replicating a delete means.
            if self.dest_latest(&task.key).await?.is_none() {
                return Ok(Copied {
                    dest_version: None,
                    bytes: 0,
                });
            }
            return Err(CopyError::Retry(format!(
                "DeleteObject {}: the destination created no delete marker and the object is still there; is versioning still enabled on it?",
                self.dst_target(&task.key)
            )));
        }
        Ok(Copied {
            dest_version: out.version_id().map(str::to_string),
            bytes: 0,
        })
    }

    /// The source version's tags, given the tag count its GetObject answer
    /// carried (see [`crate::s3::tag_count`]): asked for only when there may be some.
    async fn tags(&self, task: &Task, count: Option<i32>) -> Result<Vec<(String, String)>, CopyError> {
        let counts = &self.src.tag_counts;
        if !counts.must_fetch(count) {
            return Ok(Vec::new());
        }
        let tags = self.fetch_tags(task).await?;
        if count.is_none() && counts.fetched_without_count(tags.len()) {
            tracing::warn!(
                endpoint = %self.src.endpoint,
                key = %task.key,
                "this endpoint does not send x-amz-tagging-count for tagged objects: asking for the tags of every object from now on"
            );
        }
        Ok(tags)
    }

    /// The source version's tags (GetObjectTagging).
    async fn fetch_tags(&self, task: &Task) -> Result<Vec<(String, String)>, CopyError> {
        let out = self
            .src
            .client
            .get_object_tagging()
            .bucket(&self.rule.source.bucket)
            .key(&task.key)
            .version_id(&task.version_id)
            .send()
            .await
            .map_err(|e| s3_error("GetObjectTagging", &self.src_target(task), e))?;
        Ok(out
            .tag_set()
            .iter()
            .map(|t| (t.key().to_string(), t.value().to_string()))
            .collect())
    }

    fn storage_class(&self, source: Option<&str>) -> Option<StorageClass> {
        match (&self.rule.storage_class, source) {
            (Some(rule), _) => Some(StorageClass::from(rule.as_str())),
            (None, Some(src)) if !src.is_empty() && src != "STANDARD" => Some(StorageClass::from(src)),
            _ => None,
        }
    }

    async fn single(&self, task: &Task) -> Result<Copied, CopyError> {
        // Boxed: its future is large (two SDK requests in flight), and each async level that
        // holds it inline would copy it as the copy starts.
        match Box::pin(self.put_whole(task, None)).await? {
            Whole::Done(copied) => Ok(copied),
            Whole::EtagNotMd5(first_read) => {
                tracing::info!(
                    task = task.id,
                    key = %task.key,
                    "the source's ETag is not the MD5 of its bytes: sending them again with their own MD5"
                );
                match self.put_whole(task, Some(first_read)).await? {
                    Whole::Done(copied) => Ok(copied),
                    Whole::EtagNotMd5(_) => Err(CopyError::Retry(format!(
                        "PutObject {}: the destination refused the body against its own MD5",
                        self.dst_target(&task.key)
                    ))),
                }
            }
        }
    }

    /// One PUT of the whole version. Streamed when the source's ETag gives the MD5 and no
    /// earlier read is given; otherwise read into memory first (at most the multipart
    /// threshold). `first_read` is the MD5 of the bytes an earlier attempt read, which did not
    /// match the source's ETag: this read must give the same bytes, or they were damaged on the
    /// way and nothing is written.
    async fn put_whole(&self, task: &Task, first_read: Option<[u8; 16]>) -> Result<Whole, CopyError> {
        let buffer = first_read.is_some();
        let guard = if buffer {
            None
        } else {
            self.destination_vouches(task).await?
        };
        let got = self
            .src
            .client
            .get_object()
            .bucket(&self.rule.source.bucket)
            .key(&task.key)
            .version_id(&task.version_id)
            .send()
            .await
            .map_err(|e| s3_error("GetObject", &self.src_target(task), e))?;
        let size = got.content_length().unwrap_or(0).max(0) as u64;
        let src_md5 = if buffer {
            None
        } else {
            etag_md5(
                got.e_tag(),
                opaque_etag(got.server_side_encryption(), got.sse_customer_algorithm()),
            )
        };
        let headers = Headers {
            content_type: got.content_type().map(str::to_string),
            cache_control: got.cache_control().map(str::to_string),
            content_disposition: got.content_disposition().map(str::to_string),
            content_encoding: got.content_encoding().map(str::to_string),
            content_language: got.content_language().map(str::to_string),
            expires: got.expires_string().map(str::to_string),
            metadata: got.metadata().cloned(),
            storage_class: got.storage_class().map(|s| s.as_str().to_string()),
        };
        let tags = self.tags(task, got.tag_count()).await?;
        // A streamed body is hashed on its way unless the destination vouches for it.
        let hashed = src_md5.is_some() && guard.is_none();
        let streamed = Arc::new(std::sync::Mutex::new(Md5::new()));
        let activity = Activity::new(size);
        let (body, md5) = match src_md5 {
            Some(md5) => (
                Metered::watched(
                    got.body,
                    task.id,
                    self.progress.clone(),
                    self.limits.clone(),
                    if hashed { vec![streamed.clone()] } else { Vec::new() },
                    Some(activity.clone()),
                ),
                md5,
            ),
            None => {
                let bytes = self
                    .read_source(task, got.body, size, None, &Activity::new(size))
                    .await?;
                let md5 = md5_of(&bytes);
                if first_read.is_some_and(|first| first != md5) {
                    return Err(CopyError::Retry(format!(
                        "GetObject {}: two reads of the body gave different bytes: damaged on the way",
                        self.src_target(task)
                    )));
                }
                let body = Metered::watched(
                    ByteStream::from(bytes),
                    task.id,
                    self.progress.clone(),
                    self.limits.clone(),
                    Vec::new(),
                    Some(activity.clone()),
                );
                (body, md5)
            }
        };
        let mut put = self
            .dst
            .streaming
            .put_object()
            .bucket(&self.rule.destination.bucket)
            .key(&task.key)
            .content_length(size as i64)
            .content_md5(base64(&md5))
            .body(body)
            .set_content_type(headers.content_type.clone())
            .set_cache_control(headers.cache_control.clone())
            .set_content_disposition(headers.content_disposition.clone())
            .set_content_encoding(headers.content_encoding.clone())
            .set_content_language(headers.content_language.clone())
            .set_metadata(headers.metadata.clone())
            .set_storage_class(self.storage_class(headers.storage_class.as_deref()))
            .set_tagging(encode_tags(&tags))
            .customize()
            // The body is a one-pass stream; hashing it for the signature would need it twice.
            .disable_payload_signing();
        if let Some(expires) = headers.expires.clone() {
            // Copied as the exact header text: a parsed date could be re-written differently.
            put = put.mutate_request(move |req| {
                req.headers_mut().insert("expires", expires.clone());
            });
        }
        self.store
            .record_replica_grouped(
                task.id,
                Replica {
                    size,
                    etag: Some(hex::encode(md5)),
                    digest: headers.digest(&tags),
                },
            )
            .await?;
        let sent = watch(put.send(), &activity, self.engine.stall_timeout)
            .await
            .map_err(|stall| self.stalled(task, "PutObject", stall))?;
        let out = match sent {
            Ok(out) => out,
            Err(e) => {
                let e = s3_error("PutObject", &self.dst_target(&task.key), e);
                if e.is_code("BadDigest") && src_md5.is_some() && !hashed {
                    // The source's ETags are MD5 sums (the check is left to the destination only
                    // then), so the bytes were damaged on their way.
                    return Err(CopyError::Retry(format!(
                        "{}: the bytes that arrived are not the ones the source's ETag names (damaged on the way from the source or to the destination, or this object's ETag is not its MD5), so the destination refused them",
                        e.message
                    )));
                }
                if e.is_code("BadDigest") && src_md5.is_some() {
                    let read = take_md5(&streamed);
                    if read != md5 && !self.src.etag_is_md5.load(Ordering::Relaxed) {
                        return Ok(Whole::EtagNotMd5(read));
                    }
                    if read != md5 {
                        return Err(CopyError::Retry(format!(
                            "GetObject {}: the body read does not match the source's ETag (damaged on the way), so the destination refused it",
                            self.src_target(task)
                        )));
                    }
                    return Err(CopyError::Retry(format!(
                        "{}: the body did not arrive as it was sent (its Content-MD5 did not match), so the destination refused it",
                        e.message
                    )));
                }
                return Err(e.into());
            }
        };
        let dest_version = out.version_id().map(str::to_string);
        // The bytes streamed must be the ones the source's ETag names: a server that neither
        // checks Content-MD5 nor answers with the MD5 of what it stored would otherwise keep a
        // body damaged on its way from the source. (One that does either has vouched.)
        if hashed && take_md5(&streamed) == md5 {
            self.src.etag_is_md5.store(true, Ordering::Relaxed);
        } else if hashed {
            self.discard(task, dest_version.as_deref()).await;
            return Err(CopyError::Retry(format!(
                "GetObject {}: the body read does not match the source's ETag; the write was removed",
                self.src_target(task)
            )));
        }
        let opaque = opaque_etag(out.server_side_encryption(), out.sse_customer_algorithm());
        if guard == Some(Guard::EtagOfBytes) && src_md5.is_some() && etag_md5(out.e_tag(), opaque).is_none() {
            // Left to an ETag that turned out to be no MD5 (SSE-KMS on this bucket): nothing
            // vouches for these bytes.
            self.dst.body_checks.distrust();
            tracing::info!(
                endpoint = %self.dst.endpoint,
                bucket = %self.rule.destination.bucket,
                "the destination answered with an ETag that is no MD5 (SSE-KMS?): crr hashes what it sends there from now on"
            );
            self.discard(task, dest_version.as_deref()).await;
            return Err(CopyError::Retry(format!(
                "PutObject {}: the destination's ETag is not the MD5 of what it stored, so it cannot vouch for the bytes; sent again, checked by crr",
                self.dst_target(&task.key)
            )));
        }
        let verified = self
            .verify_written(task, dest_version.as_deref(), out.e_tag(), opaque, &md5, size)
            .await;
        if let Err(e) = verified {
            self.discard(task, dest_version.as_deref()).await;
            return Err(e);
        }
        Ok(Whole::Done(Copied {
            dest_version,
            bytes: size,
        }))
    }

    /// Reads a source body (one object or one part of `len` bytes) into memory, watched for
    /// stalls.
    async fn read_source(
        &self,
        task: &Task,
        body: ByteStream,
        len: u64,
        part: Option<i32>,
        activity: &Activity,
    ) -> Result<bytes::Bytes, CopyError> {
        let what = match part {
            Some(n) => format!("reading part {n} of {}", self.src_target(task)),
            None => format!("GetObject {}: reading the body", self.src_target(task)),
        };
        let read = watch(
            read_all(body, activity, len as usize),
            activity,
            self.engine.stall_timeout,
        )
        .await
        .map_err(|stall| CopyError::Retry(format!("{what}: {}", stall.from_source())))?;
        let bytes = read.map_err(|e| CopyError::Retry(format!("{what}: {e}")))?;
        if bytes.len() as u64 != len {
            return Err(CopyError::Retry(format!(
                "{what}: the source sent {} bytes, expected {len}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// The error for a transfer abandoned by the stall watchdog, naming the side that stalled.
    fn stalled(&self, task: &Task, op: &str, stall: Stalled) -> CopyError {
        if stall.on_source {
            CopyError::Retry(format!("GetObject {}: {stall}", self.src_target(task)))
        } else {
            CopyError::Retry(format!("{op} {}: {stall}", self.dst_target(&task.key)))
        }
    }
}

mod check;
mod headers;
mod multipart;
use headers::{Headers, encode_tags};
pub use multipart::{UPLOAD_UNKNOWN, abort_upload, part_layout};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_md5_is_padded_base64() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        // The MD5 of "" as S3 wants it in Content-MD5.
        assert_eq!(base64(&md5_of(b"")), "1B2M2Y8AsgTpgAmY7PhCfg==");
    }

    #[test]
    fn etags_compare_without_quotes_or_case() {
        let md5 = md5_of(b"abc");
        let upper = format!("\"{}\"", hex::encode(md5).to_ascii_uppercase());
        assert_eq!(etag_md5(Some(&upper), false), Some(md5));
        assert_eq!(normal_etag(&upper), hex::encode(md5));
        // Not an MD5: multipart, encrypted with KMS or a customer key, or another form.
        assert_eq!(etag_md5(Some("\"9b2cf535f27731c974343645a3985328-2\""), false), None);
        assert_eq!(etag_md5(Some(&upper), true), None);
        assert_eq!(etag_md5(Some("W/\"x\""), false), None);
        assert!(opaque_etag(Some(&ServerSideEncryption::AwsKms), None));
        assert!(opaque_etag(Some(&ServerSideEncryption::AwsKmsDsse), None));
        assert!(!opaque_etag(Some(&ServerSideEncryption::Aes256), None));
        assert!(opaque_etag(None, Some("AES256")));
    }
}
