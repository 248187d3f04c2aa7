//! Whether a destination endpoint vouches for the bytes of a whole-object PUT itself.
//!
//! A copy sends the source's ETag (the MD5 of its bytes) as `Content-MD5`. S3 refuses a body
//! that does not match it; so do most servers. Where the destination does, or where it answers
//! with the MD5 of the bytes it stored (moto, which does not check `Content-MD5`), a body
//! damaged on its way from the source is caught by the destination's answer, and crr need not
//! hash every byte it streams (MD5 runs at about 600 MB/s a core: for 1 MiB objects it was
//! 37% of crr's CPU). A server that did neither (one that echoed the header as its ETag) would
//! keep a damaged body unnoticed, so until an endpoint has shown which it does, crr hashes.
//!
//! The question is asked once per endpoint and process, once crr has hashed [`PROBE_AFTER`]
//! bytes for it (a small run does not pay for it), without writing anything: a multipart
//! upload is created, one tiny part is sent with a `Content-MD5` that does not match it (and,
//! if that is refused, again with its own), and the upload is aborted. No object or version is
//! created. The answer is UploadPart's; crr takes it for PutObject too, for which S3 documents
//! the same check (SeaweedFS and moto each treat the two alike: tests/content_md5.rs).
//!
//! The upload is recorded on the copy's task while it is open, as a multipart copy's is, so
//! that a process that dies meanwhile has it aborted by key on the task's next attempt.

use crate::s3::s3_error;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use md5::{Digest, Md5};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Bytes hashed for an endpoint before crr asks whether it checks them itself.
pub const PROBE_AFTER: u64 = 4 << 20;

/// What an endpoint has shown of how it treats a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// Not known (yet): crr hashes every body it streams there.
    Unknown,
    /// It refuses a body that does not match its `Content-MD5`, as S3 documents.
    ChecksContentMd5,
    /// It stores a body whatever its `Content-MD5`, but answers with the MD5 of what it stored,
    /// so a body that is not the source's shows in the answer's ETag.
    EtagOfBytes,
    /// Neither: crr hashes every body it sends there.
    Neither,
}

impl Guard {
    /// Whether the endpoint itself catches a body that does not match the `Content-MD5` sent
    /// with it, by refusing it or by the ETag it answers with.
    pub fn vouches(self) -> bool {
        matches!(self, Guard::ChecksContentMd5 | Guard::EtagOfBytes)
    }
}

const UNKNOWN: u8 = 0;
const ASKING: u8 = 1;
const CHECKS: u8 = 2;
const ETAG: u8 = 3;
const NEITHER: u8 = 4;

/// One endpoint's [`Guard`], shared by every clone of its client.
#[derive(Debug, Default)]
pub struct BodyChecks {
    state: AtomicU8,
    /// Bytes hashed for bodies sent to the endpoint while it was not known to vouch.
    hashed: AtomicU64,
}

impl BodyChecks {
    pub fn guard(&self) -> Guard {
        match self.state.load(Ordering::Acquire) {
            CHECKS => Guard::ChecksContentMd5,
            ETAG => Guard::EtagOfBytes,
            NEITHER => Guard::Neither,
            _ => Guard::Unknown,
        }
    }

    /// Counts `bytes` crr is about to hash for a body sent to the endpoint. True for the one
    /// caller that should now ask the endpoint (see [`probe`]) and report with [`Self::learned`].
    pub fn hashing(&self, bytes: u64) -> bool {
        let before = self.hashed.fetch_add(bytes, Ordering::Relaxed);
        before.saturating_add(bytes) >= PROBE_AFTER
            && self
                .state
                .compare_exchange(UNKNOWN, ASKING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// What the question found: `None` when it could not tell (the endpoint did not answer);
    /// it is asked again once as many bytes have been hashed again.
    pub fn learned(&self, found: Option<Guard>) {
        let state = match found {
            Some(Guard::ChecksContentMd5) => CHECKS,
            Some(Guard::EtagOfBytes) => ETAG,
            Some(Guard::Neither) => NEITHER,
            Some(Guard::Unknown) | None => {
                self.hashed.store(0, Ordering::Relaxed);
                UNKNOWN
            }
        };
        self.state.store(state, Ordering::Release);
    }

    /// An endpoint that vouched by its ETags answered with one that is no MD5 (SSE-KMS on a
    /// bucket): it cannot vouch that way, and crr hashes what it sends there from now on.
    pub fn distrust(&self) {
        let _ = self
            .state
            .compare_exchange(ETAG, NEITHER, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// Asks the destination `s3` how it treats a body (see [`probe`]) in `bucket`, at `key`, and
/// records and logs what it found.
pub async fn ask(s3: crate::s3::S3, bucket: String, key: String) {
    /// Lets the question be asked again if this one never ends (its task was dropped).
    struct Unanswered<'a>(Option<&'a BodyChecks>);
    impl Drop for Unanswered<'_> {
        fn drop(&mut self) {
            if let Some(checks) = self.0 {
                checks.learned(None);
            }
        }
    }
    let mut unanswered = Unanswered(Some(&s3.body_checks));
    let found = probe(&s3.client, &bucket, &key).await;
    unanswered.0 = None;
    let endpoint = &s3.endpoint;
    let learned = match found {
        Ok(Guard::ChecksContentMd5) => {
            tracing::info!(
                %endpoint,
                "the destination refuses a body that does not match its Content-MD5: crr leaves that check to it"
            );
            Some(Guard::ChecksContentMd5)
        }
        Ok(Guard::EtagOfBytes) => {
            tracing::info!(
                %endpoint,
                "the destination does not check Content-MD5 but answers with the MD5 of what it stored: crr checks that answer instead of hashing what it sends"
            );
            Some(Guard::EtagOfBytes)
        }
        Ok(_) => {
            tracing::info!(
                %endpoint,
                "the destination neither checks Content-MD5 nor answers with the MD5 of what it stored: crr hashes what it sends there"
            );
            Some(Guard::Neither)
        }
        Err(Unasked { why, for_good }) => {
            tracing::info!(
                %endpoint,
                error = %why,
                "could not ask whether the destination checks Content-MD5: crr hashes what it sends there{}",
                if for_good { "" } else { ", and asks again later" }
            );
            for_good.then_some(Guard::Neither)
        }
    };
    s3.body_checks.learned(learned);
}

/// Why the question went unanswered, and whether asking again would change that.
#[derive(Debug)]
pub struct Unasked {
    pub why: String,
    pub for_good: bool,
}

impl From<crate::s3::S3Error> for Unasked {
    fn from(e: crate::s3::S3Error) -> Self {
        // Denied, or not implemented: asking again will not change that, unlike a server error
        // or a connection that failed.
        let for_good = e
            .status
            .is_some_and(|s| ((400..500).contains(&s) && s != 408 && s != 429) || s == 501);
        Unasked {
            why: e.message,
            for_good,
        }
    }
}

/// The part the question sends, and the MD5 it is sent with, which is not its own.
const PROBE_BODY: &[u8] = b"crr asks whether this endpoint checks Content-MD5";
const PROBE_CLAIM: &[u8] = b"not the bytes sent";

/// Asks the endpoint behind `client` how it treats a body whose `Content-MD5` does not match,
/// in a multipart upload to `bucket`/`key` that is aborted at once. A part refused with
/// BadDigest counts as checking only when the same part with its own MD5 is then taken. The
/// answer is about UploadPart, so that nothing is written; crr takes it for PutObject too, for
/// which S3 documents the same check.
pub async fn probe(client: &Client, bucket: &str, key: &str) -> Result<Guard, Unasked> {
    let target = format!("{bucket}/{key}");
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| s3_error("CreateMultipartUpload", &target, e))?;
    let Some(upload) = created.upload_id() else {
        return Ok(Guard::Neither);
    };
    let part = |claim: &[u8]| {
        client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload)
            .part_number(1)
            .content_length(PROBE_BODY.len() as i64)
            .content_md5(crate::engine::copy::base64(&Md5::digest(claim)))
            .body(ByteStream::from_static(PROBE_BODY))
            .send()
    };
    let own = hex::encode(Md5::digest(PROBE_BODY));
    let found = match part(PROBE_CLAIM).await {
        Err(e) => {
            let e = s3_error("UploadPart", &target, e);
            if e.is_code("BadDigest") {
                match part(PROBE_BODY).await {
                    Ok(_) => Ok(Guard::ChecksContentMd5),
                    Err(e) => Err(s3_error("UploadPart", &target, e).into()),
                }
            } else {
                Err(e.into())
            }
        }
        Ok(out) if out.e_tag().map(crate::engine::copy::normal_etag) == Some(own) => Ok(Guard::EtagOfBytes),
        Ok(_) => Ok(Guard::Neither),
    };
    if let Err(e) = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload)
        .send()
        .await
    {
        let e = s3_error("AbortMultipartUpload", &target, e);
        tracing::warn!(upload, error = %e.message, "could not abort the upload that asked whether the destination checks Content-MD5: it holds one part of {} bytes", PROBE_BODY.len());
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_question_is_asked_once_enough_bytes_were_hashed_and_again_after_no_answer() {
        let c = BodyChecks::default();
        assert!(!c.hashing(PROBE_AFTER - 1), "not before the threshold");
        assert!(c.hashing(1), "the call that reaches it asks");
        assert!(!c.hashing(PROBE_AFTER), "only one caller asks");
        assert_eq!(c.guard(), Guard::Unknown, "hashing goes on while the question is out");
        c.learned(None);
        assert!(!c.hashing(1), "no answer: asked again after as many bytes again");
        assert!(c.hashing(PROBE_AFTER));
        c.learned(Some(Guard::ChecksContentMd5));
        assert_eq!(c.guard(), Guard::ChecksContentMd5);
        assert!(!c.hashing(PROBE_AFTER * 4), "an answer is kept");
        c.distrust();
        assert_eq!(
            c.guard(),
            Guard::ChecksContentMd5,
            "a check of Content-MD5 needs no ETag"
        );
    }

    #[test]
    fn an_endpoint_vouching_by_etags_is_distrusted_once_one_is_no_md5() {
        let c = BodyChecks::default();
        assert!(c.hashing(PROBE_AFTER));
        c.learned(Some(Guard::EtagOfBytes));
        assert_eq!(c.guard(), Guard::EtagOfBytes);
        c.distrust();
        assert_eq!(c.guard(), Guard::Neither);
        assert!(!c.hashing(PROBE_AFTER), "and not asked again");
    }
}
