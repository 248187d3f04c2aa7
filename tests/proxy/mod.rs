//! A loopback TCP proxy that delays every chunk an upstream server sends back, by a delay the
//! test can change while it runs: an S3 endpoint that is slow to answer, without touching the
//! server behind it. It also counts the requests whose request line holds a given text.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct SlowProxy {
    pub url: String,
    delay_ms: Arc<AtomicU64>,
    counted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowProxy {
    /// Proxies to `upstream` ("127.0.0.1:PORT").
    pub async fn start(upstream: String) -> SlowProxy {
        Self::open(upstream, None).await
    }

    /// Proxies to `upstream`, counting the requests whose request line (method, path and
    /// query) holds `needle`; see `counted`.
    pub async fn counting(upstream: String, needle: &str) -> SlowProxy {
        Self::open(upstream, Some(needle.as_bytes().to_vec())).await
    }

    async fn open(upstream: String, needle: Option<Vec<u8>>) -> SlowProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy addr"));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = delay_ms.clone();
        let counted = Arc::new(AtomicU64::new(0));
        let count = counted.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let delay = delay.clone();
                let count = count.clone();
                let needle = needle.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        // Request lines are found by their method at the start of a line; the
                        // bodies of these tests never hold one.
                        let mut line: Vec<u8> = Vec::new();
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            for &b in &buf[..n] {
                                if b == b'\n' {
                                    let request = ["GET ", "PUT ", "POST ", "HEAD ", "DELETE "]
                                        .iter()
                                        .any(|m| line.starts_with(m.as_bytes()));
                                    let held = needle.as_deref().is_some_and(|n| line.windows(n.len()).any(|w| w == n));
                                    if request && held {
                                        count.fetch_add(1, Ordering::SeqCst);
                                    }
                                    line.clear();
                                } else if line.len() < 8192 {
                                    line.push(b);
                                }
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let ms = delay.load(Ordering::SeqCst);
                        if ms > 0 {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        SlowProxy {
            url,
            delay_ms,
            counted,
            task,
        }
    }

    /// How many requests so far held the needle given to `counting`.
    pub fn counted(&self) -> u64 {
        self.counted.load(Ordering::SeqCst)
    }

    /// From now on every chunk the server sends back waits this long.
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
