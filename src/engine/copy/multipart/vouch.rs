//! What vouches for the bytes a multipart copy reads from the source: the source's ETag, for
//! parts cut where the source's are or fed in order to the whole object's MD5, and reading a
//! part again when they disagree.

use super::*;

impl CopyCtx<'_> {
    /// Where the parts of a copy of `size` bytes are cut (part size, count), and what vouches for
    /// the bytes read from the source:
    /// - an MD5 ETag: the whole object's MD5, fed as the parts go in order;
    /// - a multipart ETag, when the source tells its parts (HeadObject with `partNumber`) and
    ///   they are even: the parts are cut where the source's are, and the MD5 of their MD5 sums
    ///   must be that ETag (the replica then carries the source's ETag too);
    /// - otherwise (ETags of encrypted objects, a layout the server does not tell) nothing
    ///   beyond each part's own check at the destination.
    pub(super) async fn plan_parts(
        &self,
        task: &Task,
        head: &HeadObjectOutput,
        size: u64,
    ) -> Result<(u64, u32, Vouch), CopyError> {
        let (part_size, count) = part_layout(size, self.engine);
        if opaque_etag(head.server_side_encryption(), head.sse_customer_algorithm()) {
            return Ok((part_size, count, Vouch::Nothing));
        }
        if let Some(md5) = etag_md5(head.e_tag(), false) {
            return Ok((part_size, count, Vouch::Whole(md5)));
        }
        let etag = head.e_tag().map(normal_etag).unwrap_or_default();
        if let Some(parts) = multipart_etag_parts(&etag)
            && let Some(source_part) = self.source_part_size(task, size, parts).await?
        {
            return Ok((source_part, parts, Vouch::Parts(etag)));
        }
        tracing::debug!(key = %task.key, etag = %etag, "nothing vouches for the source's bytes beyond each part's check");
        Ok((part_size, count, Vouch::Nothing))
    }

    /// The size of the source version's parts, when the server tells it and they are even (all
    /// but the last that size, `parts` of them, the last the rest) and between 5 MiB (S3's
    /// least) and the most a copy cuts ([`MIRRORED_PART_MAX`] or `part_size`).
    async fn source_part_size(&self, task: &Task, size: u64, parts: u32) -> Result<Option<u64>, CopyError> {
        let Some(first) = self.head_part(task, 1).await? else {
            return Ok(None);
        };
        let p = first.len;
        if first.parts_count != Some(parts)
            || first.start.is_some_and(|s| s != 0)
            || p == 0
            || size.div_ceil(p) != u64::from(parts)
            || p > MIRRORED_PART_MAX.max(self.engine.part_size)
            || (parts > 1 && p < MIN_PART)
        {
            return Ok(None);
        }
        if parts > 1 {
            let last_start = u64::from(parts - 1) * p;
            let Some(last) = self.head_part(task, parts).await? else {
                return Ok(None);
            };
            if last.len != size - last_start || last.start.is_some_and(|s| s != last_start) {
                return Ok(None);
            }
        }
        Ok(Some(p))
    }

    /// What HeadObject says of part `n` of the source version; `None` when the server refuses
    /// the question (an error that is not worth another attempt) or gives no length.
    async fn head_part(&self, task: &Task, n: u32) -> Result<Option<PartHead>, CopyError> {
        let asked = self
            .src
            .client
            .head_object()
            .bucket(&self.rule.source.bucket)
            .key(&task.key)
            .version_id(&task.version_id)
            .part_number(n as i32)
            .send()
            .await;
        match asked {
            Ok(out) => Ok(out.content_length().filter(|l| *l >= 0).map(|len| PartHead {
                len: len as u64,
                parts_count: out.parts_count().and_then(|c| u32::try_from(c).ok()),
                start: out.content_range().and_then(range_start),
            })),
            Err(e) => {
                let e = s3_error("HeadObject", &format!("{} part {n}", self.src_target(task)), e);
                // The network or a server error: ask again later (S3 answers 500 and 503 to be
                // retried). Any other answer (501 Not Implemented, 400, 416) means it does not
                // tell, and the copy goes on without what the answer would vouch for. So does a
                // server error again on a later attempt: a server that answers 500 to the
                // question (its plain HEAD and GET work, or the copy would not be here) would
                // otherwise fail the copy for good.
                match e.status {
                    None => return Err(CopyError::Retry(e.message)),
                    Some(s) if (s >= 500 && s != 501) || s == 429 => {
                        if task.attempts < 2 {
                            return Err(CopyError::Retry(e.message));
                        }
                        tracing::warn!(key = %task.key, attempt = task.attempts, error = %e.message,
                            "the source fails to tell the object's parts again: copied without its part layout, so the replica's ETag may differ from the source's");
                    }
                    Some(_) => {
                        tracing::debug!(key = %task.key, error = %e.message, "the source does not tell its parts")
                    }
                }
                Ok(None)
            }
        }
    }

    /// The parts sent do not add up to what the source's ETag says. Each is read again and
    /// compared with the MD5 the destination acknowledged for it: the parts that differ were
    /// damaged on their way from the source, and are forgotten (returned) so that they go again.
    /// When none differs, two reads agree and the source's ETag does not follow its bytes the way
    /// S3's do (parts of uneven sizes, another scheme): the upload may be completed.
    pub(super) async fn check_parts_again(
        &self,
        task: &Task,
        layout: Layout,
        done: &mut HashMap<i32, (String, u64)>,
    ) -> Result<Vec<i32>, CopyError> {
        let sent: Option<Vec<(i32, [u8; 16])>> = done
            .iter()
            .map(|(n, (etag, _))| etag_md5(Some(etag), false).map(|md5| (*n, md5)))
            .collect();
        let Some(sent) = sent else {
            // The destination's part ETags are not MD5 sums: nothing tells which part went
            // wrong, so all of them go again.
            let mut all: Vec<i32> = done.keys().copied().collect();
            all.sort_unstable();
            for n in &all {
                self.forget_part(task, done, *n)?;
            }
            return Ok(all);
        };
        let checks = futures::stream::iter(sent.into_iter().map(|(n, md5)| async move {
            let again = Md5Sink::default();
            let read = self
                .hash_source_part(task, layout.part(n), std::slice::from_ref(&again))
                .await;
            (n, read.map(|()| take_md5(&again) == md5))
        }))
        .buffer_unordered(self.engine.part_concurrency)
        .collect::<Vec<_>>()
        .await;
        let mut differ = Vec::new();
        let mut failed = None;
        for (n, check) in checks {
            match check {
                Ok(true) => {}
                Ok(false) => differ.push(n),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        differ.sort_unstable();
        for n in &differ {
            self.forget_part(task, done, *n)?;
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if differ.is_empty() {
            tracing::warn!(
                key = %task.key,
                "the source's ETag is not the MD5 of its parts as read (twice, alike): completing the upload"
            );
        }
        Ok(differ)
    }

    /// Reads one part of the source version again, only to feed its bytes to `into`. A read
    /// cut off is tried again at once, a few times, with `into` as it was before it.
    pub(super) async fn hash_source_part(
        &self,
        task: &Task,
        part: PartRange,
        into: &[Md5Sink],
    ) -> Result<(), CopyError> {
        let lock = |d: &Md5Sink| d.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let before: Vec<Md5> = into.iter().map(lock).collect();
        let mut tries = 0;
        loop {
            tries += 1;
            match self.read_source_part(task, part, into).await {
                Err(CopyError::Retry(e)) if tries < REREAD_TRIES => {
                    tracing::debug!(key = %task.key, part = part.n, error = %e, "reading a part again");
                    for (d, was) in into.iter().zip(&before) {
                        *d.lock().unwrap_or_else(|p| p.into_inner()) = was.clone();
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200 * tries as u64)).await;
                }
                other => return other,
            }
        }
    }

    async fn read_source_part(&self, task: &Task, part: PartRange, into: &[Md5Sink]) -> Result<(), CopyError> {
        let PartRange { n, start, end } = part;
        let len = end - start;
        let what = format!("reading part {n} of {} again", self.src_target(task));
        let got = self.get_part(task, part).await?;
        let activity = Activity::new(len);
        let limits: Vec<&Limiter> = self.limits.iter().map(Arc::as_ref).collect();
        let read = async {
            let mut body = got.body;
            let mut read = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                for d in into {
                    d.lock().unwrap_or_else(|p| p.into_inner()).update(&chunk);
                }
                read += chunk.len() as u64;
                activity.touch();
                let wait = reserve_all(&limits, chunk.len() as u64);
                if !wait.is_zero() {
                    activity.pause_until(std::time::Instant::now() + wait);
                    tokio::time::sleep(wait).await;
                }
            }
            Ok::<u64, aws_sdk_s3::primitives::ByteStreamError>(read)
        };
        let read = watch(read, &activity, self.engine.stall_timeout)
            .await
            .map_err(|stall| CopyError::Retry(format!("{what}: {}", stall.from_source())))?
            .map_err(|e| CopyError::Retry(format!("{what}: {e}")))?;
        if read != len {
            return Err(CopyError::Retry(format!(
                "{what}: the source sent {read} bytes, expected {len}"
            )));
        }
        Ok(())
    }
}

/// What vouches for the bytes a multipart copy reads from the source.
pub(super) enum Vouch {
    /// The source's multipart ETag, for parts cut where the source's are.
    Parts(String),
    /// The whole object's MD5 (its ETag): the parts go in order, fed to one MD5.
    Whole([u8; 16]),
    /// Nothing beyond each part's check at the destination.
    Nothing,
}

/// Tries of one read of a part made only to check it.
const REREAD_TRIES: u32 = 3;

/// The least size S3 allows a part that is not the last.
const MIN_PART: u64 = 5 << 20;

/// The largest source part a copy cuts its own parts to match (or `engine.part_size` when that
/// is larger); a part is held in memory when the destination's part ETags are not MD5 sums.
const MIRRORED_PART_MAX: u64 = 64 << 20;

/// What HeadObject with `partNumber` tells of one part.
struct PartHead {
    len: u64,
    parts_count: Option<u32>,
    /// Where the part starts, from `Content-Range` (servers that omit it answer 200).
    start: Option<u64>,
}

/// The first byte of a `Content-Range` such as `bytes 0-5242879/10486760`.
fn range_start(range: &str) -> Option<u64> {
    range
        .trim()
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The number of parts a multipart ETag (`<32 hex digits>-N`) stands for.
fn multipart_etag_parts(etag: &str) -> Option<u32> {
    let (md5, parts) = normal_etag(etag)
        .split_once('-')
        .map(|(a, b)| (a.to_string(), b.to_string()))?;
    if md5.len() != 32 || !md5.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    parts.parse::<u32>().ok().filter(|p| (1..=10_000).contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multipart_etag_tells_its_part_count() {
        assert_eq!(multipart_etag_parts("\"c4b822de517febbbaca751cdd884ecfc-3\""), Some(3));
        assert_eq!(
            multipart_etag_parts("C4B822DE517FEBBBACA751CDD884ECFC-10000"),
            Some(10_000)
        );
        assert_eq!(multipart_etag_parts("c4b822de517febbbaca751cdd884ecfc"), None);
        assert_eq!(multipart_etag_parts("c4b822de517febbbaca751cdd884ecfc-0"), None);
        assert_eq!(multipart_etag_parts("c4b822de517febbbaca751cdd884ecfc-10001"), None);
        assert_eq!(multipart_etag_parts("not-an-md5-3"), None);
        assert_eq!(multipart_etag_parts("zzb822de517febbbaca751cdd884ecfc-2"), None);
    }

    #[test]
    fn a_content_range_tells_where_a_part_starts() {
        assert_eq!(range_start("bytes 5242880-10485759/10486760"), Some(5_242_880));
        assert_eq!(range_start("bytes 0-0/1"), Some(0));
        assert_eq!(range_start("bytes */100"), None);
        assert_eq!(range_start("items 0-1/2"), None);
    }
}
