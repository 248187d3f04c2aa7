//! Live progress of running copies, kept in memory by the engine and read by its drivers:
//! bytes done, part i of n, attempt. Updated per chunk here; drivers sample it.

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct TaskProgress {
    pub task_id: i64,
    pub rule_id: String,
    pub key: String,
    pub size: u64,
    pub bytes_done: u64,
    pub parts_done: u32,
    pub parts_total: u32,
    pub attempt: u32,
    pub started: Instant,
}

#[derive(Default)]
pub struct Progress {
    running: Mutex<HashMap<i64, TaskProgress>>,
}

impl Progress {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<i64, TaskProgress>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn start(&self, p: TaskProgress) {
        self.map().insert(p.task_id, p);
    }

    pub fn finish(&self, task_id: i64) {
        self.map().remove(&task_id);
    }

    pub fn set(&self, task_id: i64, f: impl FnOnce(&mut TaskProgress)) {
        if let Some(p) = self.map().get_mut(&task_id) {
            f(p);
        }
    }

    /// A copy of what runs now, ordered by task id.
    pub fn snapshot(&self) -> Vec<TaskProgress> {
        let mut v: Vec<TaskProgress> = self.map().values().cloned().collect();
        v.sort_by_key(|p| p.task_id);
        v
    }
}

/// A request body that counts the bytes it hands to the HTTP client (the copy's progress) and
/// paces them to the bandwidth limits. It holds one source frame at most, never a whole object. Every frame is cut into small chunks, and each chunk's
/// time is reserved before it is handed out, so no frame, however large the source made it,
/// passes the limit.
pub struct Metered {
    inner: Option<aws_sdk_s3::primitives::SdkBody>,
    /// Bytes taken from `inner` not handed out yet.
    pending: Bytes,
    /// A chunk whose time is reserved, handed out when `sleep` ends.
    ready: Option<Bytes>,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    task_id: i64,
    progress: std::sync::Arc<Progress>,
    limits: Vec<std::sync::Arc<super::limit::Limiter>>,
    /// MD5 of every byte handed out, for verifying what the destination received.
    digest: Option<std::sync::Arc<std::sync::Mutex<md5::Md5>>>,
}

const CHUNK: usize = 64 * 1024;

impl Metered {
    /// Meters `body`; every byte handed out also goes into `digest` when there is one.
    pub fn stream(
        body: ByteStream,
        task_id: i64,
        progress: std::sync::Arc<Progress>,
        limits: Vec<std::sync::Arc<super::limit::Limiter>>,
        digest: Option<std::sync::Arc<std::sync::Mutex<md5::Md5>>>,
    ) -> ByteStream {
        ByteStream::from_body_1_x(Metered {
            inner: Some(body.into_inner()),
            pending: Bytes::new(),
            ready: None,
            sleep: None,
            task_id,
            progress,
            limits,
            digest,
        })
    }

    fn hand_out(&self, chunk: Bytes) -> http_body::Frame<Bytes> {
        let n = chunk.len() as u64;
        if let Some(d) = &self.digest {
            md5::Digest::update(&mut *d.lock().unwrap_or_else(|p| p.into_inner()), &chunk);
        }
        self.progress.set(self.task_id, |p| p.bytes_done += n);
        http_body::Frame::data(chunk)
    }

    fn buffered(&self) -> u64 {
        (self.pending.len() + self.ready.as_ref().map_or(0, |r| r.len())) as u64
    }
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        loop {
            if let Some(sleep) = this.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep = None;
                if let Some(chunk) = this.ready.take() {
                    return Poll::Ready(Some(Ok(this.hand_out(chunk))));
                }
            }
            if this.pending.is_empty() {
                let Some(body) = this.inner.as_mut() else {
                    return Poll::Ready(None);
                };
                match std::pin::Pin::new(body).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => {
                        this.inner = None;
                        return Poll::Ready(None);
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => {
                            this.pending = data;
                            continue;
                        }
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    },
                }
            }
            let chunk = this.pending.split_to(this.pending.len().min(CHUNK));
            let limits: Vec<&super::limit::Limiter> = this.limits.iter().map(|l| l.as_ref()).collect();
            let wait = super::limit::reserve_all(&limits, chunk.len() as u64);
            if wait.is_zero() {
                return Poll::Ready(Some(Ok(this.hand_out(chunk))));
            }
            this.ready = Some(chunk);
            this.sleep = Some(Box::pin(tokio::time::sleep(wait)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.buffered() == 0 && self.inner.as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let buffered = self.buffered();
        match &self.inner {
            None => http_body::SizeHint::with_exact(buffered),
            Some(body) => {
                let inner = http_body::Body::size_hint(body);
                let mut hint = http_body::SizeHint::new();
                hint.set_lower(inner.lower() + buffered);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + buffered);
                }
                hint
            }
        }
    }
}
