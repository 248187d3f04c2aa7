//! A fault-injecting HTTP/1.1 proxy for an S3 endpoint, on 127.0.0.1: what a bad network and a
//! busy provider do to requests. Each request gets its own connection (the proxy answers with
//! `connection: close`), and a seeded random draw decides whether it meets a fault:
//! - answered by the proxy itself: 503 SlowDown, 500 InternalError;
//! - forwarded, then its answer spoiled: the body cut by a reset (RST) or by an early close,
//!   one byte of the body flipped, the body stopped half-way for longer than crr's stall window,
//!   or the whole answer delayed (latency).
//!
//! It can also refuse every connection for a while (an outage), counting them. The counts of
//! every fault injected, by kind, are kept for the test to report.
#![allow(dead_code)]
// A zero linger resets the connection on close; it never blocks (only a positive one does).
#![allow(deprecated)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The faults the proxy injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// 503 SlowDown, answered without asking the server.
    SlowDown,
    /// 500 InternalError, answered without asking the server.
    InternalError,
    /// The server's answer is forwarded up to the middle of its body, then the connection is
    /// reset.
    ResetMidBody,
    /// The server's answer is forwarded up to the middle of its body, then the connection is
    /// closed cleanly: fewer bytes than its Content-Length.
    TruncatedBody,
    /// One byte of the answer's body, at a random place, is changed.
    CorruptBody,
    /// The answer stops half-way through its body for `Plan::stall` before the connection
    /// closes.
    Stall,
    /// The whole answer waits `Plan::latency` first.
    Latency,
    /// An upload (PutObject, UploadPart) is read up to the middle of its body, then the
    /// connection is reset: the server never sees the request.
    ResetMidUpload,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::SlowDown,
        Kind::InternalError,
        Kind::ResetMidBody,
        Kind::TruncatedBody,
        Kind::CorruptBody,
        Kind::Stall,
        Kind::Latency,
        Kind::ResetMidUpload,
    ];

    /// Whether the fault can strike a request of this shape.
    fn fits(self, shape: Shape) -> bool {
        match self {
            Kind::ResetMidBody | Kind::TruncatedBody | Kind::CorruptBody | Kind::Stall => shape.get_object,
            Kind::ResetMidUpload => shape.upload,
            Kind::SlowDown | Kind::InternalError | Kind::Latency => true,
        }
    }
}

/// What the proxy does to requests: for each kind, the chance in a thousand that a request meets
/// it (body faults are drawn only for answers that carry an object's bytes).
#[derive(Clone, Debug)]
pub struct Plan {
    pub per_mille: BTreeMap<Kind, u32>,
    pub seed: u64,
    pub stall: Duration,
    pub latency: Duration,
    /// Whether ranged downloads (the parts of a multipart copy) may be corrupted too.
    pub corrupt_ranges: bool,
    /// A listing that asks for more entries than this is refused with 400 InvalidArgument, as a
    /// server that takes no more than that would.
    pub max_keys: Option<u32>,
    /// The most requests a kind may strike; the draw skips it after that.
    pub at_most: BTreeMap<Kind, u64>,
}

impl Plan {
    pub fn none() -> Plan {
        Plan {
            per_mille: BTreeMap::new(),
            seed: 1,
            stall: Duration::from_secs(4),
            latency: Duration::from_millis(300),
            corrupt_ranges: true,
            max_keys: None,
            at_most: BTreeMap::new(),
        }
    }

    pub fn with(mut self, kind: Kind, per_mille: u32) -> Plan {
        self.per_mille.insert(kind, per_mille);
        self
    }

    pub fn corrupt_ranges(mut self, on: bool) -> Plan {
        self.corrupt_ranges = on;
        self
    }

    /// `kind` strikes at most `times` requests.
    pub fn at_most(mut self, kind: Kind, times: u64) -> Plan {
        self.at_most.insert(kind, times);
        self
    }

    pub fn max_keys(mut self, cap: u32) -> Plan {
        self.max_keys = Some(cap);
        self
    }

    pub fn seed(mut self, seed: u64) -> Plan {
        self.seed = seed;
        self
    }
}

struct State {
    plan: Plan,
    rng: fastrand::Rng,
    injected: BTreeMap<Kind, u64>,
    /// Faults drawn (an injected one may have been let off after the draw).
    drawn: BTreeMap<Kind, u64>,
    /// Listing requests let through, and refused for their `max-keys`.
    listings: u64,
    listings_refused: u64,
    /// UploadPart body bytes read from the client (whole or cut off), and parts the server
    /// acknowledged.
    part_bytes: u64,
    parts_acked: u64,
}

/// What a request is, as far as faults care.
#[derive(Clone, Copy, Debug)]
struct Shape {
    /// GetObject (whole or a range): its answer carries an object's bytes.
    get_object: bool,
    /// A PUT that carries an object's bytes (PutObject, UploadPart).
    upload: bool,
}

fn shape(method: &str, target: &str, body_len: usize) -> Shape {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let object = path.trim_matches('/').split('/').count() >= 2;
    Shape {
        get_object: method == "GET" && object && !query.contains("tagging"),
        upload: method == "PUT" && object && body_len > 1 && !query.contains("tagging"),
    }
}

pub struct NetProxy {
    pub url: String,
    state: Arc<Mutex<State>>,
    refusing: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NetProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NetProxy {
    /// A proxy in front of the server at `upstream` (`http://127.0.0.1:PORT`).
    pub async fn start(upstream: &str, plan: Plan) -> NetProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let upstream = upstream.trim_start_matches("http://").to_string();
        let state = Arc::new(Mutex::new(State {
            rng: fastrand::Rng::with_seed(plan.seed),
            plan,
            injected: BTreeMap::new(),
            drawn: BTreeMap::new(),
            listings: 0,
            listings_refused: 0,
            part_bytes: 0,
            parts_acked: 0,
        }));
        let refusing = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let (st, rf, rd, rq) = (state.clone(), refusing.clone(), refused.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if rf.load(Ordering::SeqCst) {
                    // An endpoint that is down: the connection is reset at once.
                    rd.fetch_add(1, Ordering::SeqCst);
                    let _ = client.set_linger(Some(Duration::ZERO));
                    drop(client);
                    continue;
                }
                rq.fetch_add(1, Ordering::SeqCst);
                let state = st.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let _ = serve(client, &upstream, &state).await;
                });
            }
        });
        NetProxy {
            url: format!("http://127.0.0.1:{port}"),
            state,
            refusing,
            refused,
            requests,
            task,
        }
    }

    pub fn set_plan(&self, plan: Plan) {
        let mut st = lock(&self.state);
        st.rng = fastrand::Rng::with_seed(plan.seed);
        st.plan = plan;
        st.drawn.clear();
    }

    /// From now on, every connection is refused (reset as soon as it is accepted), or no longer.
    pub fn set_refusing(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// Connections let through so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Listing requests (ListObjectVersions, ListObjectsV2) let through, and refused for asking
    /// more than `Plan::max_keys` entries.
    pub fn listings(&self) -> (u64, u64) {
        let st = lock(&self.state);
        (st.listings, st.listings_refused)
    }

    /// UploadPart body bytes crr sent so far (including uploads cut off half-way), and the parts
    /// the server acknowledged.
    pub fn parts(&self) -> (u64, u64) {
        let st = lock(&self.state);
        (st.part_bytes, st.parts_acked)
    }

    /// Faults injected so far, by kind.
    pub fn injected(&self) -> BTreeMap<Kind, u64> {
        lock(&self.state).injected.clone()
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Draws the fault, if any, for one request of this shape.
fn draw(state: &Mutex<State>, shape: Shape) -> Option<Kind> {
    let mut st = lock(state);
    let roll = st.rng.u32(0..1000);
    let mut edge = 0;
    let mut hit = None;
    for (kind, chance) in &st.plan.per_mille {
        let spent = st
            .plan
            .at_most
            .get(kind)
            .is_some_and(|cap| st.drawn.get(kind).copied().unwrap_or(0) >= *cap);
        if !kind.fits(shape) || spent {
            continue;
        }
        edge += chance;
        if roll < edge {
            hit = Some(*kind);
            break;
        }
    }
    if let Some(kind) = hit {
        *st.drawn.entry(kind).or_default() += 1;
    }
    hit
}

/// Counts a fault that was injected.
fn injected(state: &Mutex<State>, kind: Kind) {
    *lock(state).injected.entry(kind).or_default() += 1;
}

fn error_answer(status: &str, code: &str, message: &str) -> String {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{xml}",
        xml.len()
    )
}

async fn serve(mut client: TcpStream, upstream: &str, state: &Mutex<State>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    if let Some(asked) = listing_max_keys(&method, &target) {
        let cap = lock(state).plan.max_keys;
        if cap.is_some_and(|cap| asked > cap) {
            lock(state).listings_refused += 1;
            let a = error_answer(
                "400 Bad Request",
                "InvalidArgument",
                "max-keys is greater than this server allows.",
            );
            client.write_all(a.as_bytes()).await?;
            return client.shutdown().await;
        }
        lock(state).listings += 1;
    }
    let mut fault = draw(state, shape(&method, &target, length));
    if fault == Some(Kind::CorruptBody) && header("range").is_some() && !lock(state).plan.corrupt_ranges {
        fault = None;
    }
    let (stall, latency) = {
        let st = lock(state);
        (st.plan.stall, st.plan.latency)
    };

    if header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    let mut body = buf[head_end..].to_vec();
    let part_upload = method == "PUT" && target.contains("partNumber=") && target.contains("uploadId=");
    if part_upload {
        lock(state).part_bytes += body.len() as u64;
    }
    // Cut off half-way through the upload: read half of the body, then reset.
    let read_up_to = if fault == Some(Kind::ResetMidUpload) {
        length / 2
    } else {
        length
    };
    while body.len() < read_up_to {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        if part_upload {
            lock(state).part_bytes += n as u64;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    if let Some(kind) = fault
        && !matches!(
            kind,
            Kind::ResetMidBody | Kind::TruncatedBody | Kind::CorruptBody | Kind::Stall
        )
    {
        injected(state, kind);
    }
    match fault {
        Some(Kind::ResetMidUpload) => {
            let _ = client.set_linger(Some(Duration::ZERO));
            return Ok(());
        }
        Some(Kind::SlowDown) => {
            let a = error_answer("503 Slow Down", "SlowDown", "Please reduce your request rate.");
            client.write_all(a.as_bytes()).await?;
            return client.shutdown().await;
        }
        Some(Kind::InternalError) => {
            let a = error_answer(
                "500 Internal Server Error",
                "InternalError",
                "We encountered an internal error. Please try again.",
            );
            client.write_all(a.as_bytes()).await?;
            return client.shutdown().await;
        }
        Some(Kind::Latency) => tokio::time::sleep(latency).await,
        _ => {}
    }

    let mut up = TcpStream::connect(upstream).await?;
    let mut out = format!("{request_line}\r\n");
    for (k, v) in &headers {
        if k != "connection" && k != "expect" {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    out.push_str("connection: close\r\n\r\n");
    up.write_all(out.as_bytes()).await?;
    up.write_all(&body).await?;
    let mut response = Vec::new();
    up.read_to_end(&mut response).await?;
    let split = find(&response, b"\r\n\r\n").map(|i| i + 4).unwrap_or(response.len());
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let status_line = lines.next().unwrap_or_default().to_string();
    let mut out = format!("{status_line}\r\n");
    for line in lines {
        let Some((k, v)) = line.split_once(':') else { continue };
        if k.trim().eq_ignore_ascii_case("connection") {
            continue;
        }
        out.push_str(&format!("{}: {}\r\n", k.trim(), v.trim()));
    }
    out.push_str("connection: close\r\n\r\n");
    let mut answer = response[split..].to_vec();
    let ok = status_line.contains(" 200 ") || status_line.contains(" 206 ");
    if part_upload && ok {
        lock(state).parts_acked += 1;
    }
    let half = answer.len() / 2;
    client.write_all(out.as_bytes()).await?;
    match fault {
        Some(Kind::CorruptBody) if ok && !answer.is_empty() => {
            injected(state, Kind::CorruptBody);
            // Damage lands anywhere, differently each time, as it does on a real network.
            let (at, mask) = {
                let mut st = lock(state);
                (st.rng.usize(0..answer.len()), st.rng.u8(1..=255))
            };
            answer[at] ^= mask;
            client.write_all(&answer).await?;
        }
        Some(Kind::ResetMidBody) if ok && half > 0 => {
            injected(state, Kind::ResetMidBody);
            client.write_all(&answer[..half]).await?;
            client.flush().await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = client.set_linger(Some(Duration::ZERO));
            return Ok(());
        }
        Some(Kind::TruncatedBody) if ok && half > 0 => {
            injected(state, Kind::TruncatedBody);
            client.write_all(&answer[..half]).await?;
        }
        Some(Kind::Stall) if ok && half > 0 => {
            injected(state, Kind::Stall);
            client.write_all(&answer[..half]).await?;
            client.flush().await?;
            tokio::time::sleep(stall).await;
        }
        _ => client.write_all(&answer).await?,
    }
    client.shutdown().await
}

/// For a listing request (a GET on a bucket with `versions` or `list-type=2`): the number of
/// entries it asks for (`max-keys`; 1,000 when it does not say).
fn listing_max_keys(method: &str, target: &str) -> Option<u32> {
    let (path, query) = target.split_once('?')?;
    let params: Vec<&str> = query.split('&').collect();
    let bucket_only = !path.trim_matches('/').contains('/');
    let listing = params
        .iter()
        .any(|p| *p == "versions" || p.starts_with("versions=") || *p == "list-type=2");
    if method != "GET" || !bucket_only || !listing {
        return None;
    }
    Some(
        params
            .iter()
            .find_map(|p| p.strip_prefix("max-keys="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
    )
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
