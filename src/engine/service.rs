//! The service socket: a running engine listens on `STATE_DIR/crr.sock` (mode 0600) and speaks
//! newline-delimited JSON of the control plane's types. The server first sends a hello with the
//! protocol version; a client then sends commands (each answered by a reply with its id) and may
//! subscribe to events and snapshots.

use super::api::{Command, Event, PROTOCOL_VERSION, Reply, Snapshot};
use super::control::EngineHandle;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The longest line either side accepts.
pub const MAX_LINE: u64 = 4 << 20;

/// The socket's file name in the state directory.
pub const SOCKET: &str = "crr.sock";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Command { id: u64, command: Box<Command> },
    Subscribe { events: bool, snapshots: bool },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Hello {
        protocol: u32,
        pid: u32,
        version: String,
    },
    Reply {
        id: u64,
        reply: Reply,
    },
    Event {
        event: Event,
    },
    Snapshot {
        snapshot: Snapshot,
    },
    /// The client's message could not be read, or it fell behind and missed events.
    Error {
        message: String,
    },
}

/// The listening socket; its file is removed when this is dropped.
pub struct Listening {
    path: PathBuf,
    stop: CancellationToken,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts serving `handle` on the state directory's socket. The caller holds the engine lock,
/// so a socket file already there was left by a process that died: it is replaced.
pub fn listen(handle: EngineHandle, state_dir: &Path) -> Result<Listening> {
    use std::os::unix::fs::PermissionsExt;
    let path = state_dir.join(SOCKET);
    // Bound under a private name, made 0600, then moved into place: no moment at which another
    // user could connect.
    let tmp = state_dir.join(format!(".{SOCKET}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).with_context(|| format!("listening on {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("creating {}", path.display()))?;
    let stop = CancellationToken::new();
    let accepting = stop.clone();
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                s = listener.accept() => match s {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "service socket: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = accepting.cancelled() => return,
            };
            tokio::spawn(serve_client(stream, handle.clone(), accepting.clone()));
        }
    });
    Ok(Listening { path, stop })
}

async fn serve_client(stream: UnixStream, handle: EngineHandle, stop: CancellationToken) {
    let (read, mut write) = stream.into_split();
    let (out, mut outbox) = mpsc::channel::<ServerMessage>(256);
    let writer = tokio::spawn(async move {
        while let Some(msg) = outbox.recv().await {
            let Ok(mut line) = serde_json::to_vec(&msg) else {
                continue;
            };
            line.push(b'\n');
            if write.write_all(&line).await.is_err() {
                return;
            }
        }
    });
    let hello = ServerMessage::Hello {
        protocol: PROTOCOL_VERSION,
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    if out.send(hello).await.is_err() {
        return;
    }
    let mut reader = BufReader::new(read);
    let mut forwarders = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let mut limited = (&mut reader).take(MAX_LINE);
        let n = tokio::select! {
            n = limited.read_until(b'\n', &mut buf) => n,
            _ = stop.cancelled() => break,
        };
        match n {
            Ok(0) | Err(_) => break,
            Ok(_) if buf.last() != Some(&b'\n') && buf.len() as u64 >= MAX_LINE => {
                let _ = out
                    .send(ServerMessage::Error {
                        message: format!("a message longer than {MAX_LINE} bytes; closing"),
                    })
                    .await;
                break;
            }
            Ok(_) => {}
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<ClientMessage>(&buf) {
            Err(e) => {
                let _ = out
                    .send(ServerMessage::Error {
                        message: format!("unreadable message: {e}"),
                    })
                    .await;
            }
            Ok(ClientMessage::Command { id, command }) => {
                // Answered in its own task, so a client may send the next command meanwhile.
                let (handle, out) = (handle.clone(), out.clone());
                tokio::spawn(async move {
                    let reply = handle.send(*command).await;
                    let _ = out.send(ServerMessage::Reply { id, reply }).await;
                });
            }
            Ok(ClientMessage::Subscribe { events, snapshots }) => {
                if forwarders.is_empty() {
                    forwarders = forward(&handle, &out, events, snapshots);
                }
            }
        }
    }
    // The client went away: nothing more is sent to it.
    for f in forwarders {
        f.abort();
    }
    writer.abort();
}

/// Forwards events and snapshots to one client until it goes away.
fn forward(
    handle: &EngineHandle,
    out: &mpsc::Sender<ServerMessage>,
    events: bool,
    snapshots: bool,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if events {
        let mut rx = handle.events();
        let out = out.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let msg = match rx.recv().await {
                    Ok(event) => ServerMessage::Event { event },
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => ServerMessage::Error {
                        message: format!("{n} event(s) were missed: the client read too slowly"),
                    },
                    Err(_) => return,
                };
                if out.send(msg).await.is_err() {
                    return;
                }
            }
        }));
    }
    if snapshots {
        let mut rx = handle.snapshot();
        let out = out.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let snapshot = rx.borrow_and_update().clone();
                // A slow client misses snapshots, never events or replies: the next one
                // supersedes it anyway.
                if let Err(mpsc::error::TrySendError::Closed(_)) = out.try_send(ServerMessage::Snapshot { snapshot }) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }));
    }
    tasks
}
