//! Copying one task to the destination: a version (streamed in one PUT below the multipart
//! threshold, in verified parts above it) or a delete marker. Every replica is checked: ETags
//! are MD5 sums where the source's is one, part ETags against the MD5 of the bytes sent, and
//! sizes always. Part progress is persisted so a restart resumes a multipart upload.

use crate::config::Overwrite;
use crate::config::{EngineConfig, Rule};
use crate::engine::limit::Limiter;
use crate::engine::progress::{Metered, Progress, TaskProgress};
use crate::s3::{S3, S3Error, s3_error};
use crate::store::{Store, Task, TaskKind};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, StorageClass};
use futures::StreamExt;
use md5::{Digest, Md5};
use std::collections::HashMap;
use std::sync::Arc;

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

/// The object headers a replica must carry.
#[derive(Debug, Clone, Default)]
struct Headers {
    content_type: Option<String>,
    cache_control: Option<String>,
    content_disposition: Option<String>,
    content_encoding: Option<String>,
    content_language: Option<String>,
    expires: Option<String>,
    metadata: Option<HashMap<String, String>>,
    storage_class: Option<String>,
}

fn unquote(etag: &str) -> &str {
    etag.trim_matches('"')
}

/// Tags in the form the `x-amz-tagging` header takes: `k1=v1&k2=v2`, URL-encoded.
fn encode_tags(tags: &[(String, String)]) -> Option<String> {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    if tags.is_empty() {
        return None;
    }
    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    Some(
        tags.iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&"),
    )
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
        let Some(head) = self.dest_latest(&task.key).await? else {
            return Ok(None);
        };
        Ok(match overwrite {
            Overwrite::Always => None,
            Overwrite::Never => Some("exists on the destination (overwrite = \"never\")".into()),
            Overwrite::IfDifferent => {
                let same_size = head.content_length().unwrap_or(-1) as u64 == task.size;
                let same_etag = !task.etag.is_empty() && head.e_tag().map(unquote) == Some(unquote(&task.etag));
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
            return Err(CopyError::Retry(format!(
                "DeleteObject {}: the destination did not create a delete marker; is versioning still enabled on it?",
                self.dst_target(&task.key)
            )));
        }
        Ok(Copied {
            dest_version: out.version_id().map(str::to_string),
            bytes: 0,
        })
    }

    /// After an interrupted attempt the previous PUT may have landed: if the destination's
    /// latest version already has this version's size and ETag, it is not copied again.
    async fn already_there(&self, task: &Task) -> Result<Option<Copied>, CopyError> {
        match self.dest_latest(&task.key).await? {
            Some(h)
                if h.content_length().unwrap_or(-1) as u64 == task.size
                    && !task.etag.is_empty()
                    && h.e_tag().map(unquote) == Some(unquote(&task.etag)) =>
            {
                Ok(Some(Copied {
                    dest_version: h.version_id().map(str::to_string),
                    bytes: task.size,
                }))
            }
            _ => Ok(None),
        }
    }

    /// The destination's latest version of `key`, or `None` when there is none (or a delete
    /// marker is latest).
    async fn dest_latest(
        &self,
        key: &str,
    ) -> Result<Option<aws_sdk_s3::operation::head_object::HeadObjectOutput>, CopyError> {
        match self
            .dst
            .client
            .head_object()
            .bucket(&self.rule.destination.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(h) => Ok(Some(h)),
            Err(e) => {
                let e = s3_error("HeadObject", &self.dst_target(key), e);
                if e.is_not_found() {
                    Ok(None)
                } else {
                    Err(CopyError::Retry(e.message))
                }
            }
        }
    }

    async fn tags(&self, task: &Task) -> Result<Vec<(String, String)>, CopyError> {
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
        let src_etag = got.e_tag().unwrap_or_default().to_string();
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
        let tags = if got.tag_count() == Some(0) {
            Vec::new()
        } else {
            self.tags(task).await?
        };
        let mut put = self
            .dst
            .client
            .put_object()
            .bucket(&self.rule.destination.bucket)
            .key(&task.key)
            .content_length(size as i64)
            .body(Metered::stream(
                got.body,
                task.id,
                self.progress.clone(),
                self.limits.clone(),
                None,
            ))
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
        let out = put
            .send()
            .await
            .map_err(|e| s3_error("PutObject", &self.dst_target(&task.key), e))?;
        let dest_version = out.version_id().map(str::to_string);
        let put_etag = out.e_tag().unwrap_or_default();
        if !src_etag.contains('-') && !src_etag.is_empty() && !put_etag.is_empty() {
            // A single-part ETag is the MD5 of the bytes: equal ETags mean equal bytes.
            if unquote(put_etag) != unquote(&src_etag) {
                return Err(CopyError::Retry(format!(
                    "verification failed for {}: destination ETag {put_etag} differs from source ETag {src_etag}",
                    self.dst_target(&task.key)
                )));
            }
        } else {
            self.verify_size(task, dest_version.as_deref(), size).await?;
        }
        Ok(Copied {
            dest_version,
            bytes: size,
        })
    }

    async fn verify_size(&self, task: &Task, version: Option<&str>, size: u64) -> Result<(), CopyError> {
        let head = self
            .dst
            .client
            .head_object()
            .bucket(&self.rule.destination.bucket)
            .key(&task.key)
            .set_version_id(version.map(str::to_string))
            .send()
            .await
            .map_err(|e| s3_error("HeadObject", &self.dst_target(&task.key), e))?;
        let got = head.content_length().unwrap_or(-1);
        if got != size as i64 {
            return Err(CopyError::Retry(format!(
                "verification failed for {}: destination has {got} bytes, source {size}",
                self.dst_target(&task.key)
            )));
        }
        Ok(())
    }

    async fn multipart(&self, task: &Task) -> Result<Copied, CopyError> {
        let head = self
            .src
            .client
            .head_object()
            .bucket(&self.rule.source.bucket)
            .key(&task.key)
            .version_id(&task.version_id)
            .send()
            .await
            .map_err(|e| s3_error("HeadObject", &self.src_target(task), e))?;
        let size = head.content_length().unwrap_or(0).max(0) as u64;
        let headers = Headers {
            content_type: head.content_type().map(str::to_string),
            cache_control: head.cache_control().map(str::to_string),
            content_disposition: head.content_disposition().map(str::to_string),
            content_encoding: head.content_encoding().map(str::to_string),
            content_language: head.content_language().map(str::to_string),
            expires: head.expires_string().map(str::to_string),
            metadata: head.metadata().cloned(),
            storage_class: head.storage_class().map(|s| s.as_str().to_string()),
        };
        let (part_size, part_count) = part_layout(size, self.engine);
        let part_count = part_count as i32;

        // Resume the upload a previous attempt or process started, if it was cut into parts of
        // the same size (the settings may have changed since). Its recorded parts were each
        // verified when uploaded; if the server has since dropped the upload, the part upload or
        // the completion says NoSuchUpload and the next attempt starts a fresh one.
        let mut done: HashMap<i32, (String, u64)> = HashMap::new();
        let mut upload_id = task.upload_id.clone();
        if let Some(existing) = &upload_id {
            if self.store.upload_part_size(task.id)? == Some(part_size) {
                for (n, etag, sz) in self.store.parts(task.id)? {
                    done.insert(n, (etag, sz));
                }
                tracing::info!(task = task.id, parts = done.len(), "resuming a multipart upload");
            } else {
                tracing::info!(
                    task = task.id,
                    "the part size changed: starting the multipart upload again"
                );
                abort_upload(self.dst, &self.rule.destination.bucket, &task.key, existing).await?;
                self.store.set_upload(task.id, None)?;
                upload_id = None;
            }
        }
        let upload_id = match upload_id {
            Some(u) => u,
            None => {
                let tags = self.tags(task).await?;
                let mut create = self
                    .dst
                    .client
                    .create_multipart_upload()
                    .bucket(&self.rule.destination.bucket)
                    .key(&task.key)
                    .set_content_type(headers.content_type.clone())
                    .set_cache_control(headers.cache_control.clone())
                    .set_content_disposition(headers.content_disposition.clone())
                    .set_content_encoding(headers.content_encoding.clone())
                    .set_content_language(headers.content_language.clone())
                    .set_metadata(headers.metadata.clone())
                    .set_storage_class(self.storage_class(headers.storage_class.as_deref()))
                    .set_tagging(encode_tags(&tags))
                    .customize();
                if let Some(expires) = headers.expires.clone() {
                    create = create.mutate_request(move |req| {
                        req.headers_mut().insert("expires", expires.clone());
                    });
                }
                let out = create
                    .send()
                    .await
                    .map_err(|e| s3_error("CreateMultipartUpload", &self.dst_target(&task.key), e))?;
                let id = out
                    .upload_id()
                    .ok_or_else(|| CopyError::Retry("CreateMultipartUpload returned no upload id".into()))?
                    .to_string();
                self.store.set_upload(task.id, Some((&id, part_size)))?;
                id
            }
        };

        let done_bytes: u64 = done.values().map(|(_, s)| *s).sum();
        self.progress.set(task.id, |p: &mut TaskProgress| {
            p.parts_total = part_count as u32;
            p.parts_done = done.len() as u32;
            p.bytes_done = done_bytes;
        });
        let todo: Vec<i32> = (1..=part_count).filter(|n| !done.contains_key(n)).collect();
        let upload_id_ref = upload_id.as_str();
        let mut stream = futures::stream::iter(todo.into_iter().map(|n| {
            let start = (n as u64 - 1) * part_size;
            let end = (start + part_size).min(size);
            self.upload_part(task, upload_id_ref, n, start, end)
        }))
        .buffer_unordered(self.engine.part_concurrency);
        while let Some(result) = stream.next().await {
            let (n, etag, len) = result.map_err(|e| self.forget_lost_upload(task, e))?;
            self.store.add_part(task.id, n, &etag, len)?;
            self.progress.set(task.id, |p| p.parts_done += 1);
            done.insert(n, (etag, len));
        }
        drop(stream);

        let sent: u64 = done.values().map(|(_, len)| *len).sum();
        if done.len() != part_count as usize || sent != size {
            // Never complete an upload whose parts do not add up to the object: that would
            // create a wrong version on the destination.
            self.store.set_upload(task.id, None)?;
            abort_upload(self.dst, &self.rule.destination.bucket, &task.key, &upload_id).await?;
            return Err(CopyError::Retry(format!(
                "the parts of {} add up to {sent} bytes in {} parts, not {size} in {part_count}; starting again",
                self.dst_target(&task.key),
                done.len()
            )));
        }
        let mut parts: Vec<(i32, String)> = done.iter().map(|(n, (e, _))| (*n, e.clone())).collect();
        parts.sort_by_key(|(n, _)| *n);
        let expected = {
            let mut all = Vec::new();
            for (_, e) in &parts {
                all.extend(hex::decode(unquote(e)).unwrap_or_default());
            }
            format!("{}-{}", hex::encode(Md5::digest(&all)), parts.len())
        };
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|(n, e)| CompletedPart::builder().part_number(*n).e_tag(e).build())
                    .collect(),
            ))
            .build();
        let out = self
            .dst
            .client
            .complete_multipart_upload()
            .bucket(&self.rule.destination.bucket)
            .key(&task.key)
            .upload_id(&upload_id)
            .multipart_upload(completed)
            .send()
            .await
            .map_err(|e| {
                self.forget_lost_upload(
                    task,
                    s3_error("CompleteMultipartUpload", &self.dst_target(&task.key), e).into(),
                )
            })?;
        self.store.set_upload(task.id, None)?;
        let dest_version = out.version_id().map(str::to_string);
        let final_etag = out.e_tag().map(unquote).unwrap_or_default();
        if final_etag.contains('-') && final_etag != expected {
            return Err(CopyError::Retry(format!(
                "verification failed for {}: multipart ETag {final_etag}, expected {expected} from the parts sent",
                self.dst_target(&task.key)
            )));
        }
        self.verify_size(task, dest_version.as_deref(), size).await?;
        Ok(Copied {
            dest_version,
            bytes: size,
        })
    }

    /// When the destination no longer knows the upload, forgets it and its parts so the next
    /// attempt starts a new one.
    fn forget_lost_upload(&self, task: &Task, err: CopyError) -> CopyError {
        if let CopyError::Retry(msg) = &err
            && msg.contains("NoSuchUpload")
            && let Err(e) = self.store.set_upload(task.id, None)
        {
            tracing::warn!(task = task.id, error = %e, "could not forget a lost multipart upload");
        }
        err
    }

    /// Streams one byte range of the source version into an uploaded part (memory: one chunk,
    /// not one part), hashing the bytes as they go, and checks that the part's ETag is their MD5.
    async fn upload_part(
        &self,
        task: &Task,
        upload_id: &str,
        n: i32,
        start: u64,
        end: u64,
    ) -> Result<(i32, String, u64), CopyError> {
        let got = self
            .src
            .client
            .get_object()
            .bucket(&self.rule.source.bucket)
            .key(&task.key)
            .version_id(&task.version_id)
            .range(format!("bytes={}-{}", start, end - 1))
            .send()
            .await
            .map_err(|e| s3_error("GetObject", &self.src_target(task), e))?;
        let len = end - start;
        if got.content_length() != Some(len as i64) {
            return Err(CopyError::Retry(format!(
                "reading part {n} of {}: the source sent {:?} bytes, expected {len}",
                self.src_target(task),
                got.content_length()
            )));
        }
        let digest = Arc::new(std::sync::Mutex::new(Md5::new()));
        let body = Metered::stream(
            got.body,
            task.id,
            self.progress.clone(),
            self.limits.clone(),
            Some(digest.clone()),
        );
        let out = self
            .dst
            .client
            .upload_part()
            .bucket(&self.rule.destination.bucket)
            .key(&task.key)
            .upload_id(upload_id)
            .part_number(n)
            .content_length(len as i64)
            .body(body)
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| s3_error("UploadPart", &self.dst_target(&task.key), e))?;
        let md5 = hex::encode(std::mem::take(&mut *digest.lock().unwrap_or_else(|p| p.into_inner())).finalize());
        let etag = out.e_tag().unwrap_or_default().to_string();
        if unquote(&etag) != md5 {
            return Err(CopyError::Retry(format!(
                "verification failed for part {n} of {}: ETag {etag}, MD5 of the bytes sent {md5}",
                self.dst_target(&task.key)
            )));
        }
        Ok((n, etag, len))
    }
}

/// How an object of `size` bytes is copied: (part size, number of parts); one part below the
/// multipart threshold. Parts grow past `part_size` only to stay within S3's 10,000 parts.
pub fn part_layout(size: u64, engine: &EngineConfig) -> (u64, u32) {
    if size <= engine.multipart_threshold {
        return (size, 1);
    }
    let part_size = engine.part_size.max(size.div_ceil(10_000));
    (part_size, size.div_ceil(part_size).max(1) as u32)
}

/// Aborts a multipart upload left by a dropped task, so no parts stay billed and nothing
/// half-written can ever become a version.
pub async fn abort_upload(dst: &S3, bucket: &str, key: &str, upload_id: &str) -> Result<(), S3Error> {
    match dst
        .client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => {
            let e = s3_error("AbortMultipartUpload", &format!("{}/{bucket}/{key}", dst.endpoint), e);
            if e.is_code("NoSuchUpload") || e.status == Some(404) {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_url_encoded() {
        assert_eq!(encode_tags(&[]), None);
        assert_eq!(
            encode_tags(&[("a b".into(), "x&y=z".into()), ("k".into(), "v".into())]).as_deref(),
            Some("a%20b=x%26y%3Dz&k=v")
        );
    }
}
