//! Live progress of running copies, kept in memory by the engine and read by its drivers:
//! bytes done, part i of n, attempt. Updated per chunk here; drivers sample it. Also the
//! watchdog that tells a stalled transfer from a slow one, fed by the same chunks.

use crate::config::units::human_bytes;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// When one transfer last moved: the clock that tells a stalled transfer from a slow one.
///
/// A `Metered` body touches it for every chunk it takes from the source and every chunk it
/// hands to the HTTP client. A pause the bandwidth limit makes moves the clock forward by the
/// pause, so pacing never counts as a stall, however slow the limit. The HTTP client's own read
/// timeout cannot do this: it runs from the start of the request to the first byte of the
/// answer, so it spans the whole upload.
#[derive(Debug)]
pub struct Activity {
    origin: Instant,
    /// Milliseconds from `origin` to the last movement (or to the end of a pacing pause).
    last: AtomicU64,
    sent: AtomicU64,
    /// The body's length: once all of it is handed out, what follows is the wait for an answer.
    total: u64,
    /// The last look at the source found no bytes ready.
    waiting_on_source: AtomicBool,
}

/// How much a connection may hold unsent in its buffers once the whole body is handed out;
/// draining it at the transfer's own pace is movement no one can see.
const SOCKET_BUFFERS: u64 = 4 << 20;

impl Activity {
    /// The clock of a transfer of `total` bytes, starting now.
    pub fn new(total: u64) -> Arc<Activity> {
        Arc::new(Activity {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            total,
            waiting_on_source: AtomicBool::new(false),
        })
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_millis() as u64
    }

    /// Bytes moved now.
    pub fn touch(&self) {
        self.last.fetch_max(self.ms(Instant::now()), Ordering::Relaxed);
    }

    fn sent_chunk(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
        self.touch();
    }

    /// Idle on purpose until `until` (a pacing pause).
    pub fn pause_until(&self, until: Instant) {
        self.last.fetch_max(self.ms(until), Ordering::Relaxed);
    }

    /// How long nothing has moved.
    pub fn idle(&self) -> Duration {
        let now = self.ms(Instant::now());
        Duration::from_millis(now.saturating_sub(self.last.load(Ordering::Relaxed)))
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// How long the transfer may stay idle before it counts as stalled: `window`, and once the
    /// whole body is handed out also the time its last bytes may need to leave the buffers.
    fn allowance(&self, window: Duration) -> Duration {
        let sent = self.sent();
        if sent < self.total || sent == 0 {
            return window;
        }
        let elapsed = Duration::from_millis(self.last.load(Ordering::Relaxed)).max(Duration::from_millis(1));
        let rate = sent as f64 / elapsed.as_secs_f64();
        window + Duration::from_secs_f64(sent.min(SOCKET_BUFFERS) as f64 / rate)
    }

    fn stalled(&self, idle: Duration) -> Stalled {
        let sent = self.sent();
        Stalled {
            idle,
            sent,
            total: self.total,
            on_source: sent < self.total && self.waiting_on_source.load(Ordering::Relaxed),
        }
    }
}

/// A transfer abandoned because nothing moved for too long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    pub idle: Duration,
    pub sent: u64,
    pub total: u64,
    /// It was the source that sent nothing.
    pub on_source: bool,
}

impl Stalled {
    /// The same stall, known to be the source's (while reading it into memory).
    pub fn from_source(mut self) -> Stalled {
        self.on_source = true;
        self
    }
}

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = humantime::format_duration(Duration::from_secs(self.idle.as_secs().max(1)));
        let (sent, total) = (human_bytes(self.sent), human_bytes(self.total));
        if self.on_source {
            write!(f, "stalled: the source sent no bytes for {idle}")
        } else if self.sent < self.total {
            write!(
                f,
                "stalled: no bytes sent for {idle} ({sent} of {total} sent); the destination or the network stopped taking data"
            )
        } else {
            write!(
                f,
                "stalled: no answer for {idle} after the whole body ({total}) was sent"
            )
        }
    }
}

/// Runs `transfer` to its end, unless `activity` sees nothing move for `window` first: then the
/// transfer is dropped (its connection closed) and the stall is returned.
pub async fn watch<T>(
    transfer: impl std::future::Future<Output = T>,
    activity: &Activity,
    window: Duration,
) -> Result<T, Stalled> {
    let tick = (window / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    tokio::pin!(transfer);
    loop {
        tokio::select! {
            out = &mut transfer => return Ok(out),
            _ = tokio::time::sleep(tick) => {
                let idle = activity.idle();
                if idle >= activity.allowance(window) {
                    return Err(activity.stalled(idle));
                }
            }
        }
    }
}

/// Reads a body to its end into memory (the caller bounds its size), telling `activity` of
/// every chunk so that a watchdog sees the source move.
pub async fn read_all(
    mut body: ByteStream,
    activity: &Activity,
    capacity: usize,
) -> Result<Bytes, aws_sdk_s3::primitives::ByteStreamError> {
    let mut all = bytes::BytesMut::with_capacity(capacity);
    while let Some(chunk) = body.next().await {
        all.extend_from_slice(&chunk?);
        activity.touch();
    }
    Ok(all.freeze())
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
    /// MD5 sums of every byte handed out, for verifying what the destination received (and,
    /// fed in order across parts, what the source sent).
    digests: Vec<Md5Sink>,
    /// The watchdog's clock, told of every chunk and every pacing pause.
    activity: Option<Arc<Activity>>,
}

const CHUNK: usize = 64 * 1024;

/// An MD5 sum being fed, shared between a body and the copy that checks it.
pub type Md5Sink = std::sync::Arc<std::sync::Mutex<md5::Md5>>;

impl Metered {
    /// Meters `body`; every byte handed out also goes into each of `digests`.
    pub fn stream(
        body: ByteStream,
        task_id: i64,
        progress: std::sync::Arc<Progress>,
        limits: Vec<std::sync::Arc<super::limit::Limiter>>,
        digests: Vec<Md5Sink>,
    ) -> ByteStream {
        Self::watched(body, task_id, progress, limits, digests, None)
    }

    /// As [`Metered::stream`], also keeping `activity` informed for a stall watchdog.
    pub fn watched(
        body: ByteStream,
        task_id: i64,
        progress: std::sync::Arc<Progress>,
        limits: Vec<std::sync::Arc<super::limit::Limiter>>,
        digests: Vec<Md5Sink>,
        activity: Option<Arc<Activity>>,
    ) -> ByteStream {
        ByteStream::from_body_1_x(Metered {
            inner: Some(body.into_inner()),
            pending: Bytes::new(),
            ready: None,
            sleep: None,
            task_id,
            progress,
            limits,
            digests,
            activity,
        })
    }

    fn hand_out(&self, chunk: Bytes) -> http_body::Frame<Bytes> {
        let n = chunk.len() as u64;
        for d in &self.digests {
            md5::Digest::update(&mut *d.lock().unwrap_or_else(|p| p.into_inner()), &chunk);
        }
        self.progress.set(self.task_id, |p| p.bytes_done += n);
        if let Some(a) = &self.activity {
            a.sent_chunk(n);
        }
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
                let polled = std::pin::Pin::new(body).poll_frame(cx);
                if let Some(a) = &this.activity {
                    a.waiting_on_source.store(polled.is_pending(), Ordering::Relaxed);
                    if matches!(polled, Poll::Ready(Some(Ok(_)))) {
                        a.touch();
                    }
                }
                match polled {
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
            if let Some(a) = &this.activity {
                a.pause_until(Instant::now() + wait);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::limit::Limiter;

    fn metered(len: usize, limits: Vec<Arc<Limiter>>, activity: &Arc<Activity>) -> ByteStream {
        Metered::watched(
            ByteStream::from(vec![7u8; len]),
            1,
            Arc::new(Progress::default()),
            limits,
            Vec::new(),
            Some(activity.clone()),
        )
    }

    #[tokio::test]
    async fn pacing_pauses_longer_than_the_window_are_not_stalls() {
        // 128 KiB at 64 KiB/s: each 64 KiB chunk waits about a second, the window is 300 ms.
        let len = 128 * 1024;
        let activity = Activity::new(len as u64);
        let body = metered(len, vec![Arc::new(Limiter::new(64 * 1024))], &activity);
        let started = Instant::now();
        let read = watch(body.collect(), &activity, Duration::from_millis(300)).await;
        assert!(started.elapsed() >= Duration::from_millis(800), "not paced");
        let bytes = read.expect("no stall").expect("body").into_bytes();
        assert_eq!(bytes.len(), len);
        assert_eq!(activity.sent(), len as u64);
    }

    #[tokio::test]
    async fn a_body_no_one_takes_is_a_stall_that_says_so() {
        let len = 1 << 20;
        let activity = Activity::new(len as u64);
        let mut body = metered(len, Vec::new(), &activity);
        // The connection takes one chunk, then nothing more.
        body.next().await.expect("a chunk").expect("data");
        let stall = watch(std::future::pending::<()>(), &activity, Duration::from_millis(200))
            .await
            .expect_err("a stall");
        assert_eq!(
            (stall.sent, stall.total, stall.on_source),
            (CHUNK as u64, len as u64, false)
        );
        assert_eq!(
            stall.to_string(),
            "stalled: no bytes sent for 1s (64.0 KiB of 1.0 MiB sent); the destination or the network stopped taking data"
        );
    }

    #[tokio::test]
    async fn after_the_whole_body_the_wait_is_for_an_answer() {
        let activity = Activity::new(1000);
        let body = metered(1000, Vec::new(), &activity);
        body.collect().await.expect("body");
        let stall = watch(std::future::pending::<()>(), &activity, Duration::from_millis(200))
            .await
            .expect_err("a stall");
        assert_eq!(
            stall.to_string(),
            "stalled: no answer for 1s after the whole body (1000 B) was sent"
        );
        assert_eq!(
            stall.from_source().to_string(),
            "stalled: the source sent no bytes for 1s"
        );
    }

    #[tokio::test]
    async fn a_moving_transfer_is_never_stopped() {
        let activity = Activity::new(10);
        let mover = async {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(60)).await;
                activity.sent_chunk(1);
            }
        };
        assert!(watch(mover, &activity, Duration::from_millis(200)).await.is_ok());
    }
}
