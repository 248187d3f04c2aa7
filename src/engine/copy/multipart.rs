//! Copying a version in parts: the upload is recorded before it is asked for, every part is
//! verified as it lands, and the parts recorded survive a restart, so a resumed copy sends only
//! what did not arrive.
//!
//! A part's ETag at the destination vouches only for what crr sent, not for what the source
//! holds: a range read from the source has no checksum of its own. So before the upload becomes
//! a version, the source's ETag must agree with the bytes read. For an object uploaded in parts,
//! crr cuts its parts where the source's are (HeadObject with `partNumber` tells their size),
//! so the MD5 of the part MD5s must be the source's ETag, and the replica carries that ETag
//! too. For an object uploaded whole, the parts go in order and feed one MD5, which must be the
//! source's ETag. When they disagree, each part is read again: those that differ from what was
//! sent go again; when none does, the source's ETag does not follow its bytes the way S3's do
//! and two reads agree.

use super::*;
use vouch::Vouch;

mod vouch;

impl CopyCtx<'_> {
    pub(super) async fn multipart(&self, task: &Task) -> Result<Copied, CopyError> {
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
        let headers = Headers::from_head(&head);
        // A multipart copy takes dozens of requests: one more for the tags is cheap, and does
        // not depend on HeadObject reporting counts the way GetObject does.
        let tags = match head.tag_count() {
            Some(0) => Vec::new(),
            _ => self.fetch_tags(task).await?,
        };
        // What the replica will carry; its ETag follows from the parts, recorded before the
        // upload is completed.
        self.store.record_replica(
            task.id,
            &Replica {
                size,
                etag: None,
                digest: headers.digest(&tags),
            },
        )?;
        // Where the parts are cut, and what vouches for the bytes read from the source.
        let (part_size, part_count, vouch) = self.plan_parts(task, &head, size).await?;
        let part_count = part_count as i32;
        // Whether the destination's part ETags are not MD5 sums (SSE-KMS there): then every
        // part goes with its Content-MD5, which the server checks.
        let dst_opaque = AtomicBool::new(false);

        // Resume the upload a previous attempt or process started, if it was cut into parts of
        // the same size (the settings may have changed since). Its recorded parts were each
        // verified when uploaded; if the server has since dropped the upload, the part upload or
        // the completion says NoSuchUpload and the next attempt starts a fresh one.
        let mut done: HashMap<i32, (String, u64)> = HashMap::new();
        let mut upload_id = task.upload_id.clone();
        if let Some(existing) = &upload_id {
            if existing == UPLOAD_UNKNOWN {
                // Asked for, but its id never came back before the process died.
                abort_upload(self.dst, &self.rule.destination.bucket, &task.key, existing).await?;
                self.store.set_upload(task.id, None)?;
                upload_id = None;
            } else if self.store.upload_part_size(task.id)? == Some(part_size) {
                for (n, etag, sz) in self.store.parts(task.id)? {
                    if etag_md5(Some(&etag), false).is_none() {
                        dst_opaque.store(true, Ordering::Relaxed);
                    }
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
                // Recorded before asking: a process that dies before the answer is stored
                // leaves an upload whose id crr never learns, and the next run aborts it by key.
                self.store.set_upload(task.id, Some((UPLOAD_UNKNOWN, part_size)))?;
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
                if opaque_etag(out.server_side_encryption(), out.sse_customer_algorithm()) {
                    dst_opaque.store(true, Ordering::Relaxed);
                }
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
        let layout = Layout {
            part_size,
            size,
            count: part_count,
        };
        // Parts the source's ETag finds wrong are read again and sent again, a few rounds
        // before the attempt gives up.
        let mut round = 0;
        let (parts, expected) = loop {
            round += 1;
            let whole = match vouch {
                Vouch::Whole(md5) => Some((md5, Md5Sink::default())),
                _ => None,
            };
            let all_read = match &whole {
                // In order, one part at a time: the whole object's MD5 is fed as the bytes go.
                Some((_, sink)) => {
                    self.upload_in_order(task, &upload_id, layout, &mut done, sink, &dst_opaque)
                        .await?
                }
                None => {
                    self.upload_parts(task, &upload_id, layout, &mut done, &dst_opaque)
                        .await?;
                    true
                }
            };
            if !all_read {
                if round < VERIFY_ROUNDS {
                    continue;
                }
                return Err(CopyError::Retry(format!(
                    "reading {}: parts uploaded before differ from the source's bytes read again",
                    self.src_target(task)
                )));
            }
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
            let expected = if dst_opaque.load(Ordering::Relaxed) {
                None
            } else {
                multipart_etag(parts.iter().map(|(_, e)| e.as_str()))
            };
            // Before the upload becomes a version: the source's ETag vouches for what was read.
            let read_as_source_says = match (&vouch, &whole) {
                (Vouch::Parts(source), _) => expected.as_deref().map(|e| e == source.as_str()),
                (Vouch::Whole(_), Some((md5, sink))) => Some(take_md5(sink) == *md5),
                _ => None,
            };
            if read_as_source_says != Some(false) {
                break (parts, expected);
            }
            let differ = self.check_parts_again(task, layout, &mut done).await?;
            if differ.is_empty() {
                break (parts, expected);
            }
            let list: Vec<String> = differ.iter().map(i32::to_string).collect();
            let why = format!(
                "the parts read from {} do not add up to the source's ETag; read again, part {} differed from what was sent",
                self.src_target(task),
                list.join(", ")
            );
            if round >= VERIFY_ROUNDS {
                return Err(CopyError::Retry(format!("verification failed: {why}")));
            }
            tracing::info!(key = %task.key, "{why}: sending it again");
        };
        // A migration's copy that a real-time change of the key overtook while its parts went
        // would only add an old version: the upload is aborted instead.
        if self.store.superseded(task)? {
            return Err(CopyError::Gone(
                "a newer change of this key came while it was copied; its upload is aborted".into(),
            ));
        }
        if let Some(expected) = &expected {
            self.store.set_replica_etag(task.id, expected)?;
        }
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
        let final_etag = out.e_tag().map(normal_etag).unwrap_or_default();
        if let Some(expected) = expected
            && !opaque_etag(out.server_side_encryption(), None)
            && final_etag.contains('-')
            && final_etag != expected
        {
            self.discard(task, dest_version.as_deref()).await;
            return Err(CopyError::Retry(format!(
                "verification failed for {}: multipart ETag {final_etag}, expected {expected} from the parts sent",
                self.dst_target(&task.key)
            )));
        }
        if let Err(e) = self.verify_size(task, dest_version.as_deref(), size).await {
            self.discard(task, dest_version.as_deref()).await;
            return Err(e);
        }
        Ok(Copied {
            dest_version,
            bytes: size,
        })
    }

    /// Uploads the parts not in `done`, `part_concurrency` at a time, recording each once it is
    /// verified. After a part fails, the parts already on their way finish and are recorded (no
    /// new one starts), so that the next attempt sends only what did not arrive.
    async fn upload_parts(
        &self,
        task: &Task,
        upload_id: &str,
        layout: Layout,
        done: &mut HashMap<i32, (String, u64)>,
        dst_opaque: &AtomicBool,
    ) -> Result<(), CopyError> {
        let todo: Vec<i32> = (1..=layout.count).filter(|n| !done.contains_key(n)).collect();
        let stop = AtomicBool::new(false);
        let stop_ref = &stop;
        let mut stream = futures::stream::iter(todo.into_iter().map(|n| {
            let upload = self.upload_part(task, upload_id, layout.part(n), dst_opaque, None);
            async move {
                if stop_ref.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                upload.await.map(Some)
            }
        }))
        .buffer_unordered(self.engine.part_concurrency);
        let mut failed: Option<CopyError> = None;
        while let Some(result) = stream.next().await {
            match result {
                Ok(Some((n, etag, len))) => self.record_part(task, done, n, etag, len)?,
                Ok(None) => {}
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    failed.get_or_insert(e);
                }
            }
        }
        drop(stream);
        match failed {
            Some(e) => Err(self.forget_lost_upload(task, e)),
            None => Ok(()),
        }
    }

    /// Uploads the parts in order, one at a time, feeding every byte read into `whole` (the
    /// whole object's MD5). Parts uploaded before are read again only to feed it, and checked
    /// against what the destination acknowledged then: `false` when one differs (it is
    /// forgotten, and `whole` is of no use).
    async fn upload_in_order(
        &self,
        task: &Task,
        upload_id: &str,
        layout: Layout,
        done: &mut HashMap<i32, (String, u64)>,
        whole: &Md5Sink,
        dst_opaque: &AtomicBool,
    ) -> Result<bool, CopyError> {
        for n in 1..=layout.count {
            let part = layout.part(n);
            if let Some((etag, _)) = done.get(&n) {
                let again = Md5Sink::default();
                self.hash_source_part(task, part, &[whole.clone(), again.clone()])
                    .await?;
                if !dst_opaque.load(Ordering::Relaxed) && etag_md5(Some(etag), false) != Some(take_md5(&again)) {
                    tracing::info!(key = %task.key, part = n, "a part uploaded before differs from the source's bytes read again: it goes again");
                    self.forget_part(task, done, n)?;
                    return Ok(false);
                }
                continue;
            }
            let (n, etag, len) = self
                .upload_part(task, upload_id, part, dst_opaque, Some(whole))
                .await
                .map_err(|e| self.forget_lost_upload(task, e))?;
            self.record_part(task, done, n, etag, len)?;
        }
        Ok(true)
    }

    fn record_part(
        &self,
        task: &Task,
        done: &mut HashMap<i32, (String, u64)>,
        n: i32,
        etag: String,
        len: u64,
    ) -> Result<(), CopyError> {
        self.store.add_part(task.id, n, &etag, len)?;
        self.progress.set(task.id, |p| p.parts_done += 1);
        done.insert(n, (etag, len));
        Ok(())
    }

    /// Forgets an uploaded part, so that the next attempt sends it again.
    fn forget_part(&self, task: &Task, done: &mut HashMap<i32, (String, u64)>, n: i32) -> Result<(), CopyError> {
        self.store.remove_part(task.id, n)?;
        if let Some((_, len)) = done.remove(&n) {
            self.progress.set(task.id, |p| {
                p.parts_done = p.parts_done.saturating_sub(1);
                p.bytes_done = p.bytes_done.saturating_sub(len);
            });
        }
        Ok(())
    }

    /// The source's answer to a GET of one part's byte range, once it says the range's length.
    async fn get_part(
        &self,
        task: &Task,
        part: PartRange,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, CopyError> {
        let PartRange { n, start, end } = part;
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
        Ok(got)
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

    /// Copies one byte range of the source version into an uploaded part and checks it; every
    /// byte read also feeds `whole` when given. Streamed (memory: one chunk, hashed on the way)
    /// unless the destination's part ETags turned out not to be MD5 sums; then the part is read
    /// into memory first and sent with its Content-MD5, which the server checks.
    async fn upload_part(
        &self,
        task: &Task,
        upload_id: &str,
        part: PartRange,
        dst_opaque: &AtomicBool,
        whole: Option<&Md5Sink>,
    ) -> Result<(i32, String, u64), CopyError> {
        let PartRange { n, start, end } = part;
        let got = self.get_part(task, part).await?;
        let len = end - start;
        if dst_opaque.load(Ordering::Relaxed) {
            return self
                .upload_part_buffered(task, upload_id, (n, len), got.body, dst_opaque, (whole, None))
                .await;
        }
        let digest = Md5Sink::default();
        let activity = Activity::new(len);
        let body = Metered::watched(
            got.body,
            task.id,
            self.progress.clone(),
            self.limits.clone(),
            std::iter::once(digest.clone()).chain(whole.cloned()).collect(),
            Some(activity.clone()),
        );
        let out = self.send_part(task, upload_id, n, len, None, body, &activity).await?;
        let md5 = take_md5(&digest);
        let etag = out.e_tag().unwrap_or_default().to_string();
        match etag_md5(
            Some(&etag),
            opaque_etag(out.server_side_encryption(), out.sse_customer_algorithm()),
        ) {
            Some(got) if got == md5 => Ok((n, etag, len)),
            Some(_) => Err(CopyError::Retry(format!(
                "verification failed for part {n} of {}: ETag {etag}, MD5 of the bytes sent {}",
                self.dst_target(&task.key),
                hex::encode(md5)
            ))),
            None => {
                // The ETag cannot vouch for the part: send it again, checked by Content-MD5
                // (the same part number replaces it), and so every later part.
                tracing::info!(key = %task.key, part = n, "the destination's part ETags are not MD5 sums: parts go with Content-MD5");
                dst_opaque.store(true, Ordering::Relaxed);
                self.progress
                    .set(task.id, |p| p.bytes_done = p.bytes_done.saturating_sub(len));
                let again = self.get_part(task, part).await?;
                // Read twice, the part's bytes must be the same (what `whole` has seen).
                self.upload_part_buffered(task, upload_id, (n, len), again.body, dst_opaque, (None, Some(md5)))
                    .await
            }
        }
    }

    /// Sends one part (with its Content-MD5 when given), watched for stalls.
    #[allow(clippy::too_many_arguments)]
    async fn send_part(
        &self,
        task: &Task,
        upload_id: &str,
        n: i32,
        len: u64,
        md5: Option<&[u8; 16]>,
        body: ByteStream,
        activity: &Activity,
    ) -> Result<aws_sdk_s3::operation::upload_part::UploadPartOutput, CopyError> {
        let send = self
            .dst
            .streaming
            .upload_part()
            .bucket(&self.rule.destination.bucket)
            .key(&task.key)
            .upload_id(upload_id)
            .part_number(n)
            .content_length(len as i64)
            .set_content_md5(md5.map(|m| base64(m)))
            .body(body)
            .customize()
            .disable_payload_signing()
            .send();
        watch(send, activity, self.engine.stall_timeout)
            .await
            .map_err(|stall| self.stalled(task, "UploadPart", stall))?
            .map_err(|e| s3_error("UploadPart", &self.dst_target(&task.key), e).into())
    }

    /// One part (number, length) read into memory, then sent with its Content-MD5. The bytes
    /// read also feed `whole` when given, and must have the MD5 `read_before` when given (the
    /// part was read once already).
    async fn upload_part_buffered(
        &self,
        task: &Task,
        upload_id: &str,
        (n, len): (i32, u64),
        body: ByteStream,
        dst_opaque: &AtomicBool,
        (whole, read_before): (Option<&Md5Sink>, Option<[u8; 16]>),
    ) -> Result<(i32, String, u64), CopyError> {
        let read = Activity::new(len);
        let bytes = self.read_source(task, body, len, Some(n), &read).await?;
        let md5 = md5_of(&bytes);
        if read_before.is_some_and(|before| before != md5) {
            return Err(CopyError::Retry(format!(
                "reading part {n} of {}: two reads of its bytes differ",
                self.src_target(task)
            )));
        }
        if let Some(whole) = whole {
            whole.lock().unwrap_or_else(|p| p.into_inner()).update(&bytes);
        }
        let activity = Activity::new(len);
        let body = Metered::watched(
            ByteStream::from(bytes),
            task.id,
            self.progress.clone(),
            self.limits.clone(),
            Vec::new(),
            Some(activity.clone()),
        );
        let out = self
            .send_part(task, upload_id, n, len, Some(&md5), body, &activity)
            .await?;
        let etag = out.e_tag().unwrap_or_default().to_string();
        let opaque = opaque_etag(out.server_side_encryption(), out.sse_customer_algorithm());
        if opaque {
            dst_opaque.store(true, Ordering::Relaxed);
        }
        match etag_md5(Some(&etag), opaque) {
            Some(got) if got != md5 => Err(CopyError::Retry(format!(
                "verification failed for part {n} of {}: ETag {etag}, MD5 of the bytes sent {}",
                self.dst_target(&task.key),
                hex::encode(md5)
            ))),
            // Equal, or not an MD5: the server checked the bytes against their Content-MD5.
            _ => Ok((n, etag, len)),
        }
    }
}

/// Rounds of sending again the parts found wrong, within one attempt.
const VERIFY_ROUNDS: usize = 3;

/// How a version is cut into parts: all `part_size` bytes but the last.
#[derive(Clone, Copy)]
pub(super) struct Layout {
    part_size: u64,
    size: u64,
    count: i32,
}

impl Layout {
    fn part(&self, n: i32) -> PartRange {
        let start = (n as u64 - 1) * self.part_size;
        PartRange {
            n,
            start,
            end: (start + self.part_size).min(self.size),
        }
    }
}

/// One part's number and byte range in the source version.
#[derive(Clone, Copy)]
struct PartRange {
    n: i32,
    start: u64,
    end: u64,
}

/// The ETag S3 gives a multipart upload of these parts: the MD5 of their MD5 sums, then "-"
/// and their number. `None` when a part ETag is not an MD5.
fn multipart_etag<'a>(part_etags: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut all = Vec::new();
    let mut count = 0;
    for e in part_etags {
        all.extend(etag_md5(Some(e), false)?);
        count += 1;
    }
    Some(format!("{}-{count}", hex::encode(Md5::digest(&all))))
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
/// An empty `upload_id` is an upload crr asked for but whose id it never learnt (the process
/// died while CreateMultipartUpload was answered): every open upload of that key is aborted.
pub async fn abort_upload(dst: &S3, bucket: &str, key: &str, upload_id: &str) -> Result<(), S3Error> {
    if upload_id == UPLOAD_UNKNOWN {
        return abort_uploads_of_key(dst, bucket, key).await;
    }
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

/// What the store holds as the upload id while CreateMultipartUpload is on its way.
pub const UPLOAD_UNKNOWN: &str = "";

/// Aborts every open multipart upload of exactly `key` in the bucket. The destination belongs
/// to one rule's replication (the topology checks see to that), so these are crr's own.
async fn abort_uploads_of_key(dst: &S3, bucket: &str, key: &str) -> Result<(), S3Error> {
    let target = format!("{}/{bucket}/{key}", dst.endpoint);
    let mut markers: (Option<String>, Option<String>) = (None, None);
    loop {
        let out = dst
            .client
            .list_multipart_uploads()
            .bucket(bucket)
            .prefix(key)
            .set_key_marker(markers.0.clone())
            .set_upload_id_marker(markers.1.clone())
            .send()
            .await
            .map_err(|e| s3_error("ListMultipartUploads", &target, e))?;
        for u in out.uploads() {
            if u.key() == Some(key)
                && let Some(id) = u.upload_id()
                && !id.is_empty()
            {
                Box::pin(abort_upload(dst, bucket, key, id)).await?;
            }
        }
        if out.is_truncated() != Some(true) {
            return Ok(());
        }
        let next = (
            out.next_key_marker().map(str::to_string),
            out.next_upload_id_marker().map(str::to_string),
        );
        if next == markers || next.0.is_none() {
            return Ok(());
        }
        markers = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_etag_is_the_md5_of_the_part_md5s() {
        let (a, b) = (md5_of(b"part one"), md5_of(b"part two"));
        let mut both = a.to_vec();
        both.extend(b);
        let want = format!("{}-2", hex::encode(md5_of(&both)));
        let parts = [format!("\"{}\"", hex::encode(a)), hex::encode(b).to_ascii_uppercase()];
        assert_eq!(multipart_etag(parts.iter().map(String::as_str)), Some(want));
        assert_eq!(multipart_etag(["\"kms-opaque\""].into_iter()), None);
    }

    #[test]
    fn a_layout_cuts_every_part_but_the_last_to_size() {
        let l = Layout {
            part_size: 5,
            size: 12,
            count: 3,
        };
        let cut: Vec<(u64, u64)> = (1..=3).map(|n| l.part(n)).map(|p| (p.start, p.end)).collect();
        assert_eq!(cut, [(0, 5), (5, 10), (10, 12)]);
    }
}
