//! A counting HTTP/1.1 proxy on loopback: each connection is forwarded byte for byte to one
//! upstream S3 server, while the client's side is parsed just enough (request line, headers,
//! Content-Length or chunked body) to count every request on a kept-alive connection, by kind.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Requests counted so far, by kind (`GET`, `PUT`, `LIST`, `PART`, `MPU`, ...).
pub type Counts = Arc<Mutex<BTreeMap<String, u64>>>;

/// A running proxy; it stops when dropped.
pub struct Proxy {
    pub url: String,
    pub counts: Counts,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let counts: Counts = Arc::default();
        let upstream = upstream.to_string();
        let c = counts.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, counts) = (upstream.clone(), c.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        let _ = forward(client, server, counts).await;
                    }
                });
            }
        });
        Ok(Proxy { url, counts, task })
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

async fn forward(client: TcpStream, server: TcpStream, counts: Counts) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let answers = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
    let requests = requests(
        BufReader::with_capacity(64 << 10, client_read),
        &mut server_write,
        &counts,
    )
    .await;
    let _ = server_write.shutdown().await;
    let _ = answers.await;
    requests
}

/// The kind a request is counted as.
fn kind(method: &str, target: &str) -> &'static str {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let has = |name: &str| {
        query
            .split('&')
            .any(|p| p == name || p.starts_with(&format!("{name}=")))
    };
    // Path style: "/bucket" or "/bucket/" is the bucket itself, anything longer names a key.
    let on_bucket = path.trim_start_matches('/').trim_end_matches('/').find('/').is_none();
    match method {
        "GET" if on_bucket && has("uploads") => "LIST-UPLOADS",
        "GET" if on_bucket && (has("list-type") || has("versions") || query.is_empty() || has("prefix")) => "LIST",
        "GET" if on_bucket => "BUCKET",
        "GET" if has("tagging") => "TAGGING",
        "GET" => "GET",
        "HEAD" if on_bucket => "BUCKET",
        "HEAD" => "HEAD",
        "PUT" if has("partNumber") => "PART",
        "PUT" if on_bucket => "BUCKET",
        "PUT" => "PUT",
        "POST" if has("uploads") || has("uploadId") => "MPU",
        "POST" if has("delete") => "DELETE",
        "DELETE" if has("uploadId") => "MPU",
        "DELETE" => "DELETE",
        _ => "OTHER",
    }
}

/// Reads requests from the client, counts each, and forwards every byte to the server.
async fn requests<R, W>(mut from: BufReader<R>, to: &mut W, counts: &Counts) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut line = Vec::new();
    loop {
        // Request line and headers.
        let mut head = Vec::new();
        let (mut length, mut chunked, mut first) = (0u64, false, true);
        loop {
            line.clear();
            if from.read_until(b'\n', &mut line).await? == 0 {
                return Ok(());
            }
            head.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end();
            if first {
                if text.is_empty() {
                    // Stray CRLF between requests.
                    head.clear();
                    continue;
                }
                first = false;
                let mut parts = text.split(' ');
                let method = parts.next().unwrap_or("");
                let target = parts.next().unwrap_or("");
                *counts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(kind(method, target).to_string())
                    .or_default() += 1;
                continue;
            }
            if text.is_empty() {
                break;
            }
            if let Some((name, value)) = text.split_once(':') {
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                if name == "content-length" {
                    length = value.parse().unwrap_or(0);
                } else if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked") {
                    chunked = true;
                }
            }
        }
        to.write_all(&head).await?;
        if chunked {
            loop {
                line.clear();
                if from.read_until(b'\n', &mut line).await? == 0 {
                    return Ok(());
                }
                to.write_all(&line).await?;
                let size_text = String::from_utf8_lossy(&line);
                let size_text = size_text.trim().split(';').next().unwrap_or("").to_string();
                let size = u64::from_str_radix(&size_text, 16).unwrap_or(0);
                if size == 0 {
                    // Trailers, up to an empty line.
                    loop {
                        line.clear();
                        if from.read_until(b'\n', &mut line).await? == 0 {
                            return Ok(());
                        }
                        to.write_all(&line).await?;
                        if line == b"\r\n" || line == b"\n" {
                            break;
                        }
                    }
                    break;
                }
                // The chunk and its CRLF.
                copy_exact(&mut from, to, size + 2).await?;
            }
        } else if length > 0 {
            copy_exact(&mut from, to, length).await?;
        }
    }
}

async fn copy_exact<R, W>(from: &mut BufReader<R>, to: &mut W, n: u64) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut limited = from.take(n);
    let copied = tokio::io::copy(&mut limited, to).await?;
    if copied < n {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Requests per copied object as text: the total, then each kind.
pub fn per_object(counts: &BTreeMap<String, u64>, objects: usize) -> (f64, String) {
    let n = objects.max(1) as f64;
    let total: u64 = counts.values().sum();
    let parts: Vec<String> = counts
        .iter()
        .map(|(k, v)| format!("{k} {:.2}", *v as f64 / n))
        .collect();
    (total as f64 / n, parts.join(", "))
}
