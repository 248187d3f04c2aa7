//! Live progress of running copies, kept in memory by the engine and read by its drivers:
//! bytes done, part i of n, attempt. Updated per chunk here; drivers sample it.

use aws_sdk_s3::primitives::ByteStream;
use bytes::{Bytes, BytesMut};
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

    /// Reads one part's body into memory (its bytes count when they are sent on).
    pub async fn read_part(mut body: ByteStream) -> Result<Bytes, String> {
        let mut buf = BytesMut::new();
        while let Some(chunk) = body.next().await {
            buf.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
        }
        Ok(buf.freeze())
    }
}

/// A request body that counts the bytes it hands to the HTTP client (the copy's progress) and
/// paces them to the bandwidth limits. Wraps either a streamed source body or a part in memory,
/// which it hands out in small chunks so pacing stays smooth.
pub struct Metered {
    inner: MeteredInner,
    task_id: i64,
    progress: std::sync::Arc<Progress>,
    limits: Vec<std::sync::Arc<super::limit::Limiter>>,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

enum MeteredInner {
    Stream(aws_sdk_s3::primitives::SdkBody),
    Memory(Bytes),
}

const CHUNK: usize = 64 * 1024;

impl Metered {
    pub fn stream(
        body: ByteStream,
        task_id: i64,
        progress: std::sync::Arc<Progress>,
        limits: Vec<std::sync::Arc<super::limit::Limiter>>,
    ) -> ByteStream {
        let m = Metered {
            inner: MeteredInner::Stream(body.into_inner()),
            task_id,
            progress,
            limits,
            sleep: None,
        };
        ByteStream::from_body_1_x(m)
    }

    pub fn memory(
        bytes: Bytes,
        task_id: i64,
        progress: std::sync::Arc<Progress>,
        limits: Vec<std::sync::Arc<super::limit::Limiter>>,
    ) -> ByteStream {
        let m = Metered {
            inner: MeteredInner::Memory(bytes),
            task_id,
            progress,
            limits,
            sleep: None,
        };
        ByteStream::from_body_1_x(m)
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
        if let Some(sleep) = self.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        let this = &mut *self;
        let frame = match &mut this.inner {
            MeteredInner::Memory(bytes) => {
                if bytes.is_empty() {
                    return Poll::Ready(None);
                }
                let chunk = bytes.split_to(bytes.len().min(CHUNK));
                http_body::Frame::data(chunk)
            }
            MeteredInner::Stream(body) => match std::pin::Pin::new(body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => frame,
            },
        };
        if let Some(data) = frame.data_ref() {
            let n = data.len() as u64;
            this.progress.set(this.task_id, |p| p.bytes_done += n);
            let limits: Vec<&super::limit::Limiter> = this.limits.iter().map(|l| l.as_ref()).collect();
            let wait = super::limit::reserve_all(&limits, n);
            if !wait.is_zero() {
                this.sleep = Some(Box::pin(tokio::time::sleep(wait)));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            MeteredInner::Memory(b) => b.is_empty(),
            MeteredInner::Stream(s) => http_body::Body::is_end_stream(s),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.inner {
            MeteredInner::Memory(b) => http_body::SizeHint::with_exact(b.len() as u64),
            MeteredInner::Stream(s) => http_body::Body::size_hint(s),
        }
    }
}
