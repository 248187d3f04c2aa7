//! Fault injection for one S3 call: a tiny HTTP/1.1 proxy on 127.0.0.1 in front of a moto server.
//! Every request is forwarded unchanged (one request per connection), except those a `Fault`
//! names, whose request or response it alters the way a real provider or a bad network would.
//! Like S3 (and unlike moto 5.2), it refuses a body that does not match its `Content-MD5`.
#![allow(dead_code)]

use md5::{Digest, Md5};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Which requests a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// PUT of a whole object (no `partNumber`, no `x-amz-copy-source`).
    PutObject,
    /// PUT with `partNumber` and `uploadId`.
    UploadPart,
}

#[derive(Clone, Debug)]
pub enum Fault {
    /// Flip one byte in the middle of the body of the next `times` matching requests.
    CorruptBody { call: Call, times: usize },
    /// Every answer about an object (PUT, HEAD, GET) gives its ETag in upper case, as some
    /// providers do.
    UppercaseEtag,
    /// Every answer about an object is that of a bucket with SSE-KMS default encryption: an
    /// ETag that is not the MD5 of the bytes (the same one each time), and
    /// `x-amz-server-side-encryption: aws:kms`. The bytes are stored all the same.
    KmsEtag,
    /// Read the request head, then never read the body nor answer: a destination that stalls.
    BlackHole { call: Call },
    /// Answer 500 InternalError to every HeadObject that asks about one part (`partNumber`),
    /// as a server that cannot answer that question may; everything else goes through.
    PartHeadError,
    /// Uploads (PutObject, UploadPart) are not checked against their `Content-MD5`: the server
    /// behind (moto) stores them and answers with the MD5 of what it stored.
    IgnoresContentMd5,
    /// Uploads are not checked against their `Content-MD5`, and the answer's ETag is that
    /// header (as hex) instead of the MD5 of what was stored: a server that vouches for
    /// nothing it is sent.
    EchoesContentMd5,
}

/// What the proxy saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub call: Option<Call>,
    pub content_md5: Option<String>,
    pub body_len: usize,
    /// The status sent back (0 for a black hole).
    pub status: u16,
}

#[derive(Default)]
struct State {
    faults: Vec<Fault>,
    seen: Vec<Seen>,
    /// The ETag an echoing destination gave each object path it was sent (`EchoesContentMd5`).
    echoed: std::collections::HashMap<String, String>,
}

pub struct Proxy {
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// A proxy in front of the server at `upstream` (`http://127.0.0.1:PORT`).
    pub async fn start(upstream: &str, faults: Vec<Fault>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let upstream = upstream.trim_start_matches("http://").to_string();
        let state = Arc::new(Mutex::new(State {
            faults,
            seen: Vec::new(),
            echoed: Default::default(),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let _ = serve(client, &upstream, &state).await;
                });
            }
        });
        Proxy {
            url: format!("http://127.0.0.1:{port}"),
            state,
            task,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).seen.clone()
    }

    /// The requests of one kind the proxy saw.
    pub fn calls(&self, call: Call) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.call == Some(call)).collect()
    }

    pub fn set_faults(&self, faults: Vec<Fault>) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).faults = faults;
    }
}

/// The bytes of standard base64 text (padding ignored).
pub fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let Some(v) = ALPHABET.iter().position(|a| *a == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Content-MD5 as S3 wants it: the base64 of the 16-byte digest.
pub fn content_md5(body: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let digest = Md5::digest(body);
    let mut out = String::new();
    for chunk in digest.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A request about one object (bucket/key), not about a bucket.
fn object_level(target: &str) -> bool {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    path.trim_matches('/').split('/').count() >= 2
}

fn classify(method: &str, target: &str, headers: &[(String, String)]) -> Option<Call> {
    if method != "PUT" || headers.iter().any(|(k, _)| k == "x-amz-copy-source") {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if !object_level(path) {
        return None;
    }
    if query.contains("partNumber=") && query.contains("uploadId=") {
        Some(Call::UploadPart)
    } else if query.is_empty() || query.starts_with("x-id=PutObject") {
        Some(Call::PutObject)
    } else {
        None
    }
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
    let call = classify(&method, &target, &headers);
    let fault = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        let pos = st.faults.iter().position(|f| match f {
            Fault::CorruptBody { call: c, times } => Some(*c) == call && *times > 0,
            Fault::UppercaseEtag | Fault::KmsEtag => object_level(&target),
            Fault::BlackHole { call: c } => Some(*c) == call,
            Fault::PartHeadError => method == "HEAD" && target.contains("partNumber="),
            Fault::IgnoresContentMd5 => call.is_some(),
            Fault::EchoesContentMd5 => call.is_some() || object_level(&target),
        });
        let fault = pos.map(|i| st.faults[i].clone());
        if let Some(Fault::CorruptBody { times, .. }) = pos.map(|i| &mut st.faults[i]) {
            *times -= 1;
        }
        fault
    };
    let mut record = Seen {
        method: method.clone(),
        target: target.clone(),
        call,
        content_md5: header("content-md5"),
        body_len: 0,
        status: 0,
    };
    if matches!(fault, Some(Fault::BlackHole { .. })) {
        state.lock().unwrap_or_else(|p| p.into_inner()).seen.push(record);
        // Hold the connection open, reading nothing more, until the test ends.
        std::future::pending::<()>().await;
        return Ok(());
    }
    if matches!(fault, Some(Fault::PartHeadError)) {
        record.status = 500;
        state.lock().unwrap_or_else(|p| p.into_inner()).seen.push(record);
        // A HEAD answer carries no body: the status says it all.
        client
            .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await?;
        return client.shutdown().await;
    }
    if header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    record.body_len = body.len();
    if matches!(fault, Some(Fault::CorruptBody { .. })) && !body.is_empty() {
        let mid = body.len() / 2;
        body[mid] ^= 0x5a;
    }
    let checks_md5 = !matches!(fault, Some(Fault::IgnoresContentMd5 | Fault::EchoesContentMd5));
    if let Some(want) = &record.content_md5
        && checks_md5
        && *want != content_md5(&body)
    {
        record.status = 400;
        state.lock().unwrap_or_else(|p| p.into_inner()).seen.push(record);
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>BadDigest</Code>\
                   <Message>The Content-MD5 you specified did not match what we received.</Message></Error>";
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{xml}",
            xml.len()
        );
        client.write_all(answer.as_bytes()).await?;
        return client.shutdown().await;
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
    record.status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut out = format!("{status_line}\r\n");
    for line in lines {
        let Some((k, v)) = line.split_once(':') else { continue };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("connection") {
            continue;
        }
        if k.eq_ignore_ascii_case("etag") && (200..300).contains(&record.status) {
            match fault {
                Some(Fault::UppercaseEtag) => {
                    out.push_str(&format!("{k}: {}\r\n", v.to_ascii_uppercase()));
                    continue;
                }
                Some(Fault::EchoesContentMd5) => {
                    // What it was sent is what it answers, then and in every later answer about
                    // the object (HEAD, GET).
                    let path = target.split('?').next().unwrap_or_default().to_string();
                    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(claimed) = record.content_md5.as_deref() {
                        st.echoed.insert(path.clone(), hex::encode(base64_decode(claimed)));
                    }
                    if let Some(echo) = st.echoed.get(&path) {
                        out.push_str(&format!("{k}: \"{echo}\"\r\n"));
                        continue;
                    }
                }
                Some(Fault::KmsEtag) => {
                    // Not the MD5 of the bytes: what SSE-KMS gives.
                    let fake = hex::encode(Md5::digest(format!("kms:{v}").as_bytes()));
                    out.push_str(&format!("{k}: \"{fake}\"\r\n"));
                    out.push_str("x-amz-server-side-encryption: aws:kms\r\n");
                    continue;
                }
                _ => {}
            }
        }
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("connection: close\r\n\r\n");
    state.lock().unwrap_or_else(|p| p.into_inner()).seen.push(record);
    client.write_all(out.as_bytes()).await?;
    client.write_all(&response[split..]).await?;
    client.shutdown().await
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
