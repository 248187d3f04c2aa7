//! The client side of the service socket. `ServiceClient::connect` finds out whether a service
//! runs on a state directory by connecting to its socket only (never by touching the engine
//! lock, which would disturb a service that is starting), then `into_handle` turns the
//! connection into the same `EngineHandle` an embedded engine gives, so the CLI and the UI drive
//! both alike.

use super::api::{Command, Event, PROTOCOL_VERSION, Reply, Snapshot};
use super::control::EngineHandle;
use super::service::{ClientMessage, MAX_LINE, SOCKET, ServerMessage};
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// How long a service may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

pub struct ServiceClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// The service's process id, from its hello.
    pub pid: u32,
    pub version: String,
}

impl ServiceClient {
    /// Connects to the service on `state_dir`: `None` when none listens there.
    pub async fn connect(state_dir: &Path) -> Result<Option<ServiceClient>> {
        let path = state_dir.join(SOCKET);
        let stream = match UnixStream::connect(&path).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
        };
        let (read, writer) = stream.into_split();
        let mut client = ServiceClient {
            reader: BufReader::new(read),
            writer,
            pid: 0,
            version: String::new(),
        };
        let hello = tokio::time::timeout(HELLO_TIMEOUT, client.next())
            .await
            .with_context(|| format!("the service on {} did not say hello", path.display()))??;
        match hello {
            Some(ServerMessage::Hello { protocol, pid, version }) => {
                if protocol != PROTOCOL_VERSION {
                    bail!(
                        "the crr service (pid {pid}, version {version}) speaks protocol {protocol}, this crr speaks {PROTOCOL_VERSION}: use the same crr binary for both"
                    );
                }
                client.pid = pid;
                client.version = version;
                Ok(Some(client))
            }
            Some(ServerMessage::Error { message }) => {
                bail!(
                    "the crr service on {} refused the connection: {message}",
                    path.display()
                )
            }
            other => bail!(
                "the service on {} did not say hello (it said {other:?})",
                path.display()
            ),
        }
    }

    async fn write(&mut self, msg: &ClientMessage) -> Result<()> {
        let mut line = serde_json::to_vec(msg)?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .await
            .context("the service closed the connection")
    }

    /// The next message from the service; `None` when it closed the connection.
    pub async fn next(&mut self) -> Result<Option<ServerMessage>> {
        read_message(&mut self.reader).await
    }

    /// Asks for events and/or snapshots to be sent as they happen.
    pub async fn subscribe(&mut self, events: bool, snapshots: bool) -> Result<()> {
        self.write(&ClientMessage::Subscribe { events, snapshots }).await
    }

    /// The service's current snapshot.
    pub async fn snapshot(mut self) -> Result<Snapshot> {
        self.subscribe(false, true).await?;
        loop {
            match self.next().await? {
                Some(ServerMessage::Snapshot { snapshot }) => return Ok(snapshot),
                Some(_) => continue,
                None => bail!("the service closed the connection before sending a snapshot"),
            }
        }
    }

    /// An `EngineHandle` backed by this connection: commands go to the service, its events
    /// and snapshots come back. When the service goes away, commands are refused with
    /// "the engine has stopped", `is_closed` says so and the snapshot channel closes.
    pub async fn into_handle(mut self) -> Result<EngineHandle> {
        self.subscribe(true, true).await?;
        let (tx, mut commands) = mpsc::channel::<(Command, oneshot::Sender<Reply>)>(64);
        let (events, _) = broadcast::channel::<Event>(1024);
        let (snapshots, snapshot_rx) = watch::channel(Snapshot::default());
        let events_out = events.clone();
        let ServiceClient {
            mut reader, mut writer, ..
        } = self;
        // Reading has a task of its own: a read cut off half-way by a command would lose bytes.
        let (incoming_tx, mut incoming) = mpsc::channel(256);
        let read_task = tokio::spawn(async move {
            loop {
                let msg = read_message(&mut reader).await;
                let end = !matches!(msg, Ok(Some(_)));
                if incoming_tx.send(msg).await.is_err() || end {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let _reading = AbortOnDrop(read_task);
            let mut waiting: HashMap<u64, oneshot::Sender<Reply>> = HashMap::new();
            let mut next_id = 1u64;
            loop {
                tokio::select! {
                    cmd = commands.recv() => {
                        let Some((command, reply)) = cmd else { return };
                        let id = next_id;
                        next_id += 1;
                        let Ok(mut line) = serde_json::to_vec(&ClientMessage::Command { id, command: Box::new(command) }) else {
                            continue;
                        };
                        line.push(b'\n');
                        if writer.write_all(&line).await.is_err() {
                            return;
                        }
                        waiting.insert(id, reply);
                    }
                    msg = incoming.recv() => match msg.unwrap_or(Ok(None)) {
                        Ok(Some(ServerMessage::Reply { id, reply })) => {
                            if let Some(w) = waiting.remove(&id) {
                                let _ = w.send(reply);
                            }
                        }
                        Ok(Some(ServerMessage::Event { event })) => {
                            let _ = events_out.send(event);
                        }
                        Ok(Some(ServerMessage::Snapshot { snapshot })) => {
                            let _ = snapshots.send(snapshot);
                        }
                        Ok(Some(ServerMessage::Error { message })) => {
                            let _ = events_out.send(Event::Notice { message: format!("service: {message}") });
                        }
                        Ok(Some(ServerMessage::Hello { .. })) => {}
                        // The service went away: waiting replies and the channels close.
                        Ok(None) | Err(_) => return,
                    },
                }
            }
        });
        Ok(EngineHandle::from_parts(tx, events, snapshot_rx))
    }
}

async fn read_message(reader: &mut BufReader<OwnedReadHalf>) -> Result<Option<ServerMessage>> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut *reader).take(MAX_LINE).read_until(b'\n', &mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if buf.last() != Some(&b'\n') && buf.len() as u64 >= MAX_LINE {
            bail!("the service sent a message longer than {MAX_LINE} bytes");
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        return serde_json::from_slice(&buf)
            .map(Some)
            .context("the service sent a message this crr cannot read");
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
