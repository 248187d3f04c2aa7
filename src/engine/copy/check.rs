//! How a copy's write is checked: whether the destination vouches for a streamed body itself,
//! the checks of a write just made and the removal of one that failed them, and whether the
//! write of an interrupted attempt landed.

use super::*;

impl CopyCtx<'_> {
    /// After an interrupted attempt the previous write may have landed. The destination's
    /// latest version is that write when it matches what crr recorded of the replica before
    /// sending it: size, expected ETag, content headers, user metadata and tags. Comparing with
    /// the source instead would take a replica of an earlier version with the same bytes for
    /// this one, and would not know a multipart replica, whose ETag depends on its parts.
    pub(super) async fn already_there(&self, task: &Task) -> Result<Option<Copied>, CopyError> {
        let Some(recorded) = self.store.replica(task.id)? else {
            return Ok(None);
        };
        let Some(etag) = recorded.etag.as_deref() else {
            // The write was never sent whole (a multipart upload not completed).
            return Ok(None);
        };
        let Some(h) = self.dest_latest(&task.key).await? else {
            return Ok(None);
        };
        let same_bytes = h.content_length().unwrap_or(-1) as u64 == recorded.size
            && !opaque_etag(h.server_side_encryption(), h.sse_customer_algorithm())
            && h.e_tag().map(normal_etag).as_deref() == Some(etag);
        if !same_bytes {
            return Ok(None);
        }
        let tags = self.dest_tags(&task.key, h.version_id()).await?;
        if Headers::from_head(&h).digest(&tags) != recorded.digest {
            return Ok(None);
        }
        if !self.dst.body_checks.guard().vouches()
            && etag_md5(Some(etag), false).is_some()
            && !self.reads_back_as(task, h.version_id(), etag).await?
        {
            // Not what crr sent, though the ETag says so: a destination not known to check
            // what it stores may give back the Content-MD5 it was sent (the attempt died before
            // crr compared the bytes it streamed with the source's ETag).
            self.discard(task, h.version_id()).await;
            return Ok(None);
        }
        tracing::info!(task = task.id, key = %task.key, "the write of an interrupted attempt landed: not copied again");
        Ok(Some(Copied {
            dest_version: h.version_id().map(str::to_string),
            bytes: recorded.size,
        }))
    }

    /// Whether the destination's version of the task's key reads back as bytes whose MD5 is
    /// `etag`.
    pub(super) async fn reads_back_as(
        &self,
        task: &Task,
        version: Option<&str>,
        etag: &str,
    ) -> Result<bool, CopyError> {
        let got = self
            .dst
            .client
            .get_object()
            .bucket(&self.rule.destination.bucket)
            .key(&task.key)
            .set_version_id(version.map(str::to_string))
            .send()
            .await
            .map_err(|e| s3_error("GetObject", &self.dst_target(&task.key), e))?;
        let mut body = got.body;
        let mut md5 = Md5::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                CopyError::Retry(format!(
                    "GetObject {}: reading the body: {e}",
                    self.dst_target(&task.key)
                ))
            })?;
            md5.update(&chunk);
        }
        Ok(hex::encode(md5.finalize()) == etag)
    }

    pub(super) async fn dest_tags(&self, key: &str, version: Option<&str>) -> Result<Vec<(String, String)>, CopyError> {
        let out = self
            .dst
            .client
            .get_object_tagging()
            .bucket(&self.rule.destination.bucket)
            .key(key)
            .set_version_id(version.map(str::to_string))
            .send()
            .await
            .map_err(|e| s3_error("GetObjectTagging", &self.dst_target(key), e))?;
        Ok(out
            .tag_set()
            .iter()
            .map(|t| (t.key().to_string(), t.value().to_string()))
            .collect())
    }

    /// The destination's latest version of `key`, or `None` when there is none (or a delete
    /// marker is latest).
    pub(super) async fn dest_latest(&self, key: &str) -> Result<Option<HeadObjectOutput>, CopyError> {
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

    /// How the destination vouches for a streamed body, when it may be left to: it has shown
    /// that it refuses a body that does not match its `Content-MD5` or answers with the MD5 of
    /// what it stored (see [`crate::s3::body_check`]), and the source has shown that its ETags
    /// are the MD5 sums of its bytes, so that the `Content-MD5` crr sends is the bytes' own.
    /// Otherwise (`None`) crr hashes the body itself; once it has hashed enough for this
    /// destination, this copy first asks it.
    pub(super) async fn destination_vouches(&self, task: &Task) -> Result<Option<Guard>, CopyError> {
        let checks = &self.dst.body_checks;
        if checks.guard() == Guard::Unknown && checks.hashing(task.size) {
            // The question's upload is recorded on this task first, as a multipart copy's is: if
            // the process dies before it is aborted, the task's next attempt (or the sweep of
            // a task that ended) aborts the key's open uploads.
            self.store.set_upload(task.id, Some((UPLOAD_UNKNOWN, 0)))?;
            // A task of its own, which this copy waits for: a copy cancelled meanwhile (its rule
            // disabled, say) does not cut the question short before its upload is aborted.
            let asked = body_check::ask(self.dst.clone(), self.rule.destination.bucket.clone(), task.key.clone());
            let _ = tokio::spawn(asked).await;
            self.store.set_upload(task.id, None)?;
        }
        let guard = checks.guard();
        Ok((guard.vouches() && self.src.etag_is_md5.load(Ordering::Relaxed)).then_some(guard))
    }

    /// Accepts a whole-object write: by its ETag when that is the MD5 of the bytes sent;
    /// otherwise (SSE-KMS on the destination) by its size, the bytes having been checked
    /// against their Content-MD5 by the server.
    pub(super) async fn verify_written(
        &self,
        task: &Task,
        version: Option<&str>,
        etag: Option<&str>,
        opaque: bool,
        md5: &[u8; 16],
        size: u64,
    ) -> Result<(), CopyError> {
        match etag_md5(etag, opaque) {
            Some(got) if got == *md5 => Ok(()),
            Some(_) => Err(CopyError::Retry(format!(
                "verification failed for {}: destination ETag {} is not {}, the MD5 of the bytes sent",
                self.dst_target(&task.key),
                etag.unwrap_or_default(),
                hex::encode(md5)
            ))),
            None => self.verify_size(task, version, size).await,
        }
    }

    /// Removes the version this attempt just wrote and found wrong: a server that does not
    /// check Content-MD5 keeps a body damaged on the way, and it must not stay on the
    /// destination as if it were a replica. Only that exact version id is removed, one crr
    /// itself created moments ago; replicas and anything else on the destination are never
    /// deleted. Without a version id (nothing to name) the next attempt's write goes on top.
    pub(super) async fn discard(&self, task: &Task, version: Option<&str>) {
        // Whether or not it can be removed, the next attempt must not take it for a replica
        // that landed (a server that echoes Content-MD5 as the ETag would vouch for it).
        if let Err(e) = self.store.forget_replica(task.id) {
            tracing::error!(task = task.id, key = %task.key, error = %format!("{e:#}"), "could not forget a write that failed verification");
        }
        let Some(version) = version.filter(|v| *v != "null") else {
            return;
        };
        let mut removed = Ok(());
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
            }
            removed = self
                .dst
                .client
                .delete_object()
                .bucket(&self.rule.destination.bucket)
                .key(&task.key)
                .version_id(version)
                .send()
                .await
                .map(|_| ());
            if removed.is_ok() {
                break;
            }
        }
        match removed {
            Ok(_) => tracing::warn!(
                task = task.id, key = %task.key, version,
                "removed the version just written: it failed verification"
            ),
            Err(e) => tracing::error!(
                task = task.id, key = %task.key, version,
                error = %s3_error("DeleteObject", &self.dst_target(&task.key), e).message,
                "could not remove a version that failed verification"
            ),
        }
    }

    pub(super) async fn verify_size(&self, task: &Task, version: Option<&str>, size: u64) -> Result<(), CopyError> {
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
}
