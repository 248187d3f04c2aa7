//! The service socket: a running engine listens on `STATE_DIR/crr.sock` (mode 0600) and speaks
//! newline-delimited JSON of the control plane's types. The server first sends a hello with the
//! protocol version; a client then sends commands (each answered by a reply with its id) and may
//! subscribe to events and snapshots.
//!
//! Only the service's own user (or root) may drive it: the socket is 0600 in a 0700 directory,
//! and each connecting process's uid is checked too (SO_PEERCRED). A client's line is at most
//! `MAX_REQUEST` bytes; a bad line is answered with an error and the connection goes on.

use super::api::{Command, Event, PROTOCOL_VERSION, Reply, Snapshot};
use super::control::EngineHandle;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// The longest line a client accepts from the service (a snapshot can be large).
pub const MAX_LINE: u64 = 4 << 20;

/// The longest line the service reads from a client. Commands are small; a longer line is
/// answered with an error and thrown away as it arrives, never held in memory.
pub const MAX_REQUEST: u64 = 1 << 20;

/// How many clients may be connected at once; each may hold up to `MAX_REQUEST` bytes.
pub const MAX_CLIENTS: usize = 64;

/// How many of one client's commands may wait for their replies at once.
const MAX_IN_FLIGHT: usize = 64;

/// How long the service keeps a closing connection open to deliver what it still owes.
const FLUSH: Duration = Duration::from_secs(10);

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
    /// The client's line could not be read, it fell behind and missed events, or it was turned
    /// away (another user, too many clients) and the connection closes.
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
    // SAFETY: geteuid has no preconditions and cannot fail.
    let owner = unsafe { libc::geteuid() };
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
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
            let peer = stream.peer_cred().ok().map(|c| c.uid());
            if let Err(message) = admit(owner, peer) {
                tracing::warn!("service socket: {message}");
                tokio::spawn(refuse(stream, message));
                continue;
            }
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                let message = format!(
                    "{MAX_CLIENTS} clients are connected already; close one (a `crr` UI attached to this service, or a script) and try again"
                );
                tracing::warn!("service socket: a client was turned away: {message}");
                tokio::spawn(refuse(stream, message));
                continue;
            };
            let (handle, stop) = (handle.clone(), accepting.clone());
            tokio::spawn(async move {
                serve_client(stream, handle, stop).await;
                drop(slot);
            });
        }
    });
    Ok(Listening { path, stop })
}

/// Whether a client whose process runs as `peer` may drive a service running as `owner`: the
/// same user, or root (who can read the state directory anyway). A peer whose uid cannot be
/// read is refused. The error is what the client is told.
pub fn admit(owner: u32, peer: Option<u32>) -> std::result::Result<(), String> {
    match peer {
        Some(uid) if uid == owner || uid == 0 => Ok(()),
        Some(uid) => Err(format!(
            "this crr service runs as uid {owner} and takes no commands from uid {uid}: run crr as the service's user"
        )),
        None => Err(format!(
            "this crr service runs as uid {owner} and could not read the connecting process's uid, so it refuses it"
        )),
    }
}

/// Tells a client why it is turned away, then closes the connection.
async fn refuse(mut stream: UnixStream, message: String) {
    if let Ok(mut line) = serde_json::to_vec(&ServerMessage::Error { message }) {
        line.push(b'\n');
        let _ = tokio::time::timeout(FLUSH, stream.write_all(&line)).await;
    }
}

/// How one line from a client was read.
enum Line {
    /// A whole line is in the buffer (its newline may be missing at the end of input).
    Read,
    /// The client closed its side (or the connection failed).
    End,
    /// The line was longer than `MAX_REQUEST`: what came of it was thrown away, up to its end.
    TooLong { discarded: u64 },
}

/// Reads one line into `buf` (cleared first), never holding more than `MAX_REQUEST` bytes of it.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R, buf: &mut Vec<u8>) -> Line {
    buf.clear();
    match (&mut *reader).take(MAX_REQUEST).read_until(b'\n', buf).await {
        Ok(0) | Err(_) => return Line::End,
        Ok(_) if buf.last() == Some(&b'\n') || (buf.len() as u64) < MAX_REQUEST => return Line::Read,
        Ok(_) => {}
    }
    // Too long: skip to the end of the line without keeping it.
    let mut discarded = buf.len() as u64;
    buf.clear();
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => return Line::TooLong { discarded },
            Ok(chunk) => chunk,
        };
        let (used, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        reader.consume(used);
        // The line's own bytes, its newline left out.
        discarded += (used - usize::from(done)) as u64;
        if done {
            return Line::TooLong { discarded };
        }
    }
}

/// A message cut to `max` bytes (at a character boundary): a parse error may quote the input.
fn clip(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// What every error about a client's line ends with.
const EXPECTED: &str = r#"each line must be one JSON object: {"type":"command","id":N,"command":{"command":...}} or {"type":"subscribe","events":BOOL,"snapshots":BOOL}"#;

async fn serve_client(stream: UnixStream, handle: EngineHandle, stop: CancellationToken) {
    let (read, mut write) = stream.into_split();
    let (out, mut outbox) = mpsc::channel::<ServerMessage>(256);
    let mut writer = tokio::spawn(async move {
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
    let mut line_no = 0u64;
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let stopped = loop {
        // Nothing can reach a client whose connection failed: what it sent is not acted on.
        if out.is_closed() {
            break false;
        }
        let line = tokio::select! {
            l = read_line(&mut reader, &mut buf) => l,
            _ = stop.cancelled() => break true,
        };
        line_no += 1;
        match line {
            Line::End => break false,
            Line::TooLong { discarded } => {
                let message = format!(
                    "line {line_no} is longer than {MAX_REQUEST} bytes ({discarded} bytes were read and thrown away); {EXPECTED}"
                );
                if out.send(ServerMessage::Error { message }).await.is_err() {
                    break false;
                }
                continue;
            }
            Line::Read => {}
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<ClientMessage>(&buf) {
            Err(e) => {
                let message = format!("line {line_no} is unreadable: {}; {EXPECTED}", clip(e.to_string(), 300));
                if out.send(ServerMessage::Error { message }).await.is_err() {
                    break false;
                }
            }
            Ok(ClientMessage::Command { id, command }) => {
                // Answered in its own task, so a client may send the next command meanwhile; but
                // no more than MAX_IN_FLIGHT at once: one that sends commands and never reads
                // its replies is simply no longer read from.
                let permit = tokio::select! {
                    p = in_flight.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break false,
                    },
                    _ = stop.cancelled() => break true,
                };
                let (handle, out) = (handle.clone(), out.clone());
                tokio::spawn(async move {
                    let reply = handle.send(*command).await;
                    let _ = out.send(ServerMessage::Reply { id, reply }).await;
                    drop(permit);
                });
            }
            Ok(ClientMessage::Subscribe { events, snapshots }) => {
                if forwarders.is_empty() {
                    forwarders = forward(&handle, &out, events, snapshots);
                }
            }
        }
    };
    for f in forwarders {
        f.abort();
    }
    if stopped {
        writer.abort();
        return;
    }
    // The client closed its side (it may still read, as `printf ... | nc -U` does): what it was
    // owed still reaches it, the answers to its lines and the replies to commands in flight,
    // whose tasks hold the last senders; then the connection closes.
    drop(out);
    if tokio::time::timeout(FLUSH, &mut writer).await.is_err() {
        writer.abort();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_user_or_root_is_admitted() {
        assert_eq!(admit(1000, Some(1000)), Ok(()));
        assert_eq!(admit(1000, Some(0)), Ok(()));
        assert_eq!(admit(0, Some(0)), Ok(()));
        let other = admit(1000, Some(1001)).unwrap_err();
        assert!(other.contains("uid 1000") && other.contains("uid 1001"), "{other}");
        assert!(admit(0, Some(65534)).is_err());
        assert!(admit(1000, None).unwrap_err().contains("refuses"));
    }

    async fn lines(input: &[u8]) -> Vec<std::result::Result<Vec<u8>, u64>> {
        let mut reader = BufReader::new(input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            match read_line(&mut reader, &mut buf).await {
                Line::End => return out,
                Line::Read => out.push(Ok(buf.clone())),
                Line::TooLong { discarded } => {
                    assert!(buf.capacity() as u64 <= MAX_REQUEST * 2, "the line was kept");
                    out.push(Err(discarded))
                }
            }
        }
    }

    #[tokio::test]
    async fn a_line_over_the_limit_is_thrown_away_up_to_its_end() {
        let long = MAX_REQUEST as usize * 3 + 17;
        let mut input = b"first\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', long));
        input.extend(b"\nlast");
        let got = lines(&input).await;
        assert_eq!(
            got,
            vec![Ok(b"first\n".to_vec()), Err(long as u64), Ok(b"last".to_vec())]
        );
        // Cut off by the end of input rather than a newline.
        let got = lines(&vec![b'y'; MAX_REQUEST as usize + 5]).await;
        assert_eq!(got, vec![Err(MAX_REQUEST + 5)]);
    }

    #[test]
    fn clipped_messages_keep_whole_characters() {
        assert_eq!(clip("short".into(), 10), "short");
        assert_eq!(clip("ééé".into(), 3), "é...");
    }
}
