//! The engine's control plane: `EngineHandle` sends typed commands to one loop that applies
//! them in order. Each is answered quickly (within 100 ms): anything long (preflight, baseline
//! listings, aborting uploads) is spawned, and its outcome is an `Event`.

use super::api::{Command, Event, MigrateAction, Reply, RetryTarget, Snapshot};
use super::{Core, copy, lock, preflight, sampler};
use crate::config;
use crate::store::blocking;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub(super) type Request = (Command, oneshot::Sender<Reply>);

/// How many commands may wait for the loop before `try_send` says it is busy.
const COMMAND_BACKLOG: usize = 64;

/// The one way to drive an engine in this process: commands in, events and snapshots out.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Request>,
    events: broadcast::Sender<Event>,
    snapshot: watch::Receiver<Snapshot>,
    /// The engine's bucket prober, started by the first request for snapshots; `None` on a
    /// handle to a service, whose own handle starts it.
    probe: Option<Arc<Probe>>,
}

/// When bucket versioning is probed. Only a watcher of snapshots (the UI) shows it, and
/// probing lists every bucket of every endpoint (up to `LISTED_BUCKETS` each) and asks each
/// its versioning: a headless `run --once` or a one-off command that nobody watches never pays
/// for it.
#[derive(Default)]
pub(super) struct Probe {
    watched: std::sync::atomic::AtomicBool,
    /// Wakes the prober: for its first pass when the snapshots are first watched, then for a
    /// pass out of turn (versioning was just enabled).
    pub(super) now: tokio::sync::Notify,
}

impl EngineHandle {
    /// Sends a command and waits for its reply.
    pub async fn send(&self, command: Command) -> Reply {
        match self.try_send(command) {
            Ok(rx) => rx.await.unwrap_or_else(|_| stopped()),
            Err(reply) => reply,
        }
    }

    /// Sends a command without waiting (for a UI that must never block); the reply arrives on
    /// the returned channel.
    pub fn try_send(&self, command: Command) -> Result<oneshot::Receiver<Reply>, Reply> {
        let (tx, rx) = oneshot::channel();
        match self.tx.try_send((command, tx)) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => Err(Reply::refused(
                "the engine is busy with earlier commands",
                "try again in a moment",
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(stopped()),
        }
    }

    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn snapshot(&self) -> watch::Receiver<Snapshot> {
        if let Some(p) = &self.probe
            && !p.watched.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            p.now.notify_one();
        }
        self.snapshot.clone()
    }

    /// Whether the engine behind this handle has gone (a service that stopped).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Completes when the engine behind this handle has gone. Its events may then never end:
    /// whoever waits for one should wait for this too.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// A handle over channels served by someone else (the service socket's client).
    pub(super) fn from_parts(
        tx: mpsc::Sender<Request>,
        events: broadcast::Sender<Event>,
        snapshot: watch::Receiver<Snapshot>,
    ) -> EngineHandle {
        EngineHandle {
            tx,
            events,
            snapshot,
            probe: None,
        }
    }
}

fn stopped() -> Reply {
    Reply::refused("the engine has stopped", "start it again (`crr serve`, or open `crr`)")
}

impl Core {
    /// The handle; the first call starts the command loop and the progress sampler, which end
    /// when the engine is dropped.
    pub fn handle(self: &Arc<Self>) -> EngineHandle {
        let tx = self
            .control
            .get_or_init(|| {
                let (tx, rx) = mpsc::channel(COMMAND_BACKLOG);
                tokio::spawn(command_loop(Arc::downgrade(self), rx, self.closed.clone()));
                tokio::spawn(sampler::run(Arc::downgrade(self), self.closed.clone()));
                tokio::spawn(versioning_prober(Arc::downgrade(self), self.closed.clone()));
                tx
            })
            .clone();
        EngineHandle {
            tx,
            events: self.events.clone(),
            snapshot: self.snapshot.subscribe(),
            probe: Some(self.probe.clone()),
        }
    }

    /// Applies one command and says what it did. Never waits on the network: long work is
    /// spawned and reports through events.
    pub async fn apply(self: &Arc<Self>, command: Command) -> Reply {
        tracing::info!(?command, "command");
        match command {
            Command::EnableRule { id } => self.enable(&id).await,
            Command::DisableRule { id } => self.disable(&id).await,
            Command::SaveRule { previous_id, rule } => {
                let path = self.config().path.clone();
                let edit = |text: &str| config::with_rule_saved(text, previous_id.as_deref(), &rule);
                match self.edit_config(edit).await {
                    Err(reply) => reply,
                    Ok(()) => {
                        if let Some(old) = previous_id.filter(|old| *old != rule.id) {
                            let _ = self.stop_rule(&old, "deleted").await;
                        }
                        self.spawn_reconcile(Some(rule.id.clone()));
                        Reply::done(format!("rule {:?} saved to {}", rule.id, path.display()))
                    }
                }
            }
            Command::DeleteRule { id } => {
                if self.config().rule(&id).is_none() {
                    return self.no_such_rule(&id);
                }
                match self.edit_config(|text: &str| config::without_rule(text, &id)).await {
                    Err(reply) => reply,
                    Ok(()) => match self.stop_rule(&id, "deleted").await {
                        Ok((_, _, message)) => {
                            self.spawn_sweep();
                            Reply::done(message)
                        }
                        Err(e) => Reply::refused(format!("{e:#}"), "see the log"),
                    },
                }
            }
            Command::Preflight { previous_id, rule } => {
                let path = self.config().path.clone();
                let checked = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
                    .and_then(|text| {
                        config::with_rule_saved(&text, previous_id.as_deref(), &rule).map_err(|e| format!("{e:#}"))
                    })
                    .and_then(|text| config::parse(&path, &text).map_err(|e| e.to_string()));
                let config = match checked {
                    Ok(c) => c,
                    Err(problem) => return Reply::refused(problem, "fix the draft first"),
                };
                let Some(parsed) = config.rule(&rule.id).cloned() else {
                    return Reply::refused(format!("rule {:?} is not in the draft", rule.id), "");
                };
                let core = self.clone();
                tokio::spawn(async move {
                    let problems = preflight::check_rule(&core.clients(), &parsed)
                        .await
                        .into_iter()
                        .map(|r| r.message)
                        .collect();
                    let _ = core.events.send(Event::PreflightChecked { draft: rule, problems });
                });
                Reply::done("checking the buckets")
            }
            Command::Migrate { id, action } => match self.migrate_command(action, &id).await {
                Ok(m) => Reply::done(m),
                Err(m) => Reply::refused(m, ""),
            },
            Command::Retry { target } => {
                let (rule, ids) = match &target {
                    RetryTarget::Tasks { ids } => (None, ids.clone()),
                    RetryTarget::Rule { id } => (Some(id.clone()), Vec::new()),
                    RetryTarget::All => (None, Vec::new()),
                };
                match blocking(|| self.store.retry_failed(rule.as_deref(), &ids)) {
                    Ok(0) if !ids.is_empty() => Reply::refused(
                        "none of the tasks given is a failed task",
                        "see `crr queue --failed` for their ids",
                    ),
                    Ok(n) => {
                        self.work.notify_waiters();
                        let mut m = format!("{n} failed task(s) queued again");
                        if !ids.is_empty() && n < ids.len() {
                            m.push_str(&format!("; {} of the tasks given are not failed tasks", ids.len() - n));
                        }
                        Reply::done(m)
                    }
                    Err(e) => Reply::refused(format!("{e:#}"), "see the log"),
                }
            }
            Command::SetBandwidth { rule, bytes_per_sec } => {
                if let Some(id) = &rule
                    && self.config().rule(id).is_none()
                {
                    return self.no_such_rule(id);
                }
                lock(&self.limit_overrides).insert(rule.clone(), bytes_per_sec);
                let what = match &rule {
                    None => {
                        self.global_limit.set_rate(bytes_per_sec);
                        "the engine".to_string()
                    }
                    Some(id) => {
                        if let Some(l) = lock(&self.rule_limits).get(id) {
                            l.set_rate(bytes_per_sec);
                        }
                        format!("rule {id:?}")
                    }
                };
                let rate = if bytes_per_sec == 0 {
                    "no limit".to_string()
                } else {
                    format!("{}/s", config::units::human_bytes(bytes_per_sec))
                };
                Reply::done(format!(
                    "bandwidth limit of {what}: {rate}, until the engine stops or the config is reloaded"
                ))
            }
            Command::EnableVersioning { endpoint, bucket } => {
                let clients = self.clients();
                let Ok(s3) = clients.get(&endpoint).cloned() else {
                    return Reply::refused(
                        format!("there is no endpoint {endpoint:?} in {}", self.config().path.display()),
                        "",
                    );
                };
                let core = self.clone();
                let answer = format!("enabling versioning on {endpoint}/{bucket}");
                tokio::spawn(async move {
                    let message = match s3.enable_versioning(&bucket).await {
                        Ok(()) => format!("versioning enabled on {endpoint}/{bucket}"),
                        Err(e) => format!("versioning could not be enabled on {endpoint}/{bucket}: {}", e.message),
                    };
                    core.emit(Event::Notice { message });
                    core.probe.now.notify_one();
                });
                Reply::done(answer)
            }
            Command::Reload => match self.reload().await {
                Ok(()) => {
                    self.spawn_reconcile(None);
                    Reply::done("config reloaded; rules that changed are being applied")
                }
                Err(e) => Reply::refused(
                    format!("the config could not be reloaded: {e:#}"),
                    "fix the file and reload again; the engine goes on with the config it had",
                ),
            },
            Command::Shutdown => {
                self.shutdown.cancel();
                Reply::done(format!(
                    "shutting down: copies in flight get {} s to finish, the rest resume on the next start",
                    super::workers::GRACE.as_secs()
                ))
            }
        }
    }

    fn no_such_rule(&self, id: &str) -> Reply {
        let config = self.config();
        let ids: Vec<&str> = config.rules.iter().map(|r| r.id.as_str()).collect();
        Reply::refused(
            format!("there is no rule {id:?} in {}", config.path.display()),
            format!("rules: {}", if ids.is_empty() { "none".into() } else { ids.join(", ") }),
        )
    }

    /// Rewrites the config file through `edit`, refusing (and writing nothing) when the result
    /// does not load; then reloads it.
    async fn edit_config(&self, edit: impl FnOnce(&str) -> anyhow::Result<String>) -> Result<(), Reply> {
        let _guard = self.config_edit.lock().await;
        let path = self.config().path.clone();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Reply::refused(format!("cannot read {}: {e}", path.display()), "check the file"))?;
        let fresh = edit(&text).map_err(|e| Reply::refused(format!("{e:#}"), ""))?;
        if let Err(errors) = config::parse(&path, &fresh) {
            return Err(Reply::refused(
                errors.to_string(),
                "nothing was written; fix what is named and save again",
            ));
        }
        config::write_atomically(&path, fresh.as_bytes())
            .map_err(|e| Reply::refused(format!("{e:#}"), "nothing was changed"))?;
        self.reload()
            .await
            .map_err(|e| Reply::refused(format!("the config could not be reloaded: {e:#}"), ""))
    }

    async fn enable(self: &Arc<Self>, id: &str) -> Reply {
        let config = self.config();
        let Some(rule) = config.rule(id) else {
            return self.no_such_rule(id);
        };
        let active = blocking(|| self.store.rule_state(id))
            .ok()
            .flatten()
            .is_some_and(|s| s.state == "enabled" && s.scope == rule.scope_signature());
        if rule.enabled && active {
            return Reply::done(format!("rule {id:?} is already enabled"));
        }
        let mut rule = rule.clone();
        rule.enabled = true;
        let core = self.clone();
        let id = id.to_string();
        // A disable while this runs cancels it.
        let token = self.rule_token(&id);
        let answer =
            format!("enabling rule {id:?}: preflight, then a new enable point from which writes are replicated");
        tokio::spawn(async move {
            let cancelled = |core: &Core| {
                core.emit(Event::RuleRefused {
                    rule: id.clone(),
                    reasons: vec!["the rule was disabled while it was being enabled".into()],
                })
            };
            // Preflight first: a refused rule leaves the config file as it was.
            let clients = core.clients();
            let refusals = tokio::select! {
                r = preflight::check_rule(&clients, &rule) => r,
                _ = token.cancelled() => return cancelled(&core),
            };
            if !refusals.is_empty() {
                core.emit(Event::RuleRefused {
                    rule: id.clone(),
                    reasons: refusals.iter().map(|r| r.message.clone()).collect(),
                });
                return;
            }
            for w in preflight::warnings(&rule) {
                core.emit(Event::Notice { message: w });
            }
            let path = core.config().path.clone();
            if token.is_cancelled() {
                return cancelled(&core);
            }
            let edit = |text: &str| {
                // Checked under the config lock: a disable that came first wins.
                if token.is_cancelled() {
                    anyhow::bail!("the rule was disabled while it was being enabled");
                }
                config::with_rule_enabled(text, &id, true)
            };
            if let Err(reply) = core.edit_config(edit).await {
                core.emit(Event::RuleRefused {
                    rule: id.clone(),
                    reasons: vec![reply.to_string()],
                });
                return;
            }
            tracing::info!("{}: rule {id:?} set to enabled = true", path.display());
            if let Err(e) = core.reconcile_with(Some(&id), Some(&token)).await {
                core.emit(Event::RuleRefused {
                    rule: id.clone(),
                    reasons: vec![format!("{e:#}")],
                });
            }
        });
        Reply::done(answer)
    }

    async fn disable(self: &Arc<Self>, id: &str) -> Reply {
        let Some(rule) = self.config().rule(id).cloned() else {
            return self.no_such_rule(id);
        };
        // First of all, an enabling in progress stops.
        if let Some(t) = lock(&self.rule_tokens).remove(id) {
            t.cancel();
        }
        if rule.enabled
            && let Err(reply) = self
                .edit_config(|text: &str| config::with_rule_enabled(text, id, false))
                .await
        {
            return reply;
        }
        let active = blocking(|| self.store.rule_state(id))
            .ok()
            .flatten()
            .is_some_and(|s| s.state == "enabled" || s.state == "enabling");
        if !active && !rule.enabled {
            return Reply::done(format!("rule {id:?} is already disabled"));
        }
        match self.stop_rule(id, "disabled").await {
            Ok((_, _, message)) => {
                self.spawn_sweep();
                Reply::done(message)
            }
            Err(e) => Reply::refused(format!("{e:#}"), "see the log"),
        }
    }

    fn spawn_reconcile(self: &Arc<Self>, only: Option<String>) {
        let core = self.clone();
        tokio::spawn(async move {
            if let Err(e) = core.reconcile(only.as_deref()).await {
                core.emit(Event::Notice {
                    message: format!("applying the config failed: {e:#}"),
                });
            }
        });
    }

    /// Aborts left-over multipart uploads in the background.
    pub(super) fn spawn_sweep(self: &Arc<Self>) {
        let core = self.clone();
        tokio::spawn(async move { core.sweep_uploads().await });
    }

    /// `crr migrate start|pause|resume|cancel ID`. `Err` is a refusal that says why and what to do.
    pub async fn migrate_command(&self, action: MigrateAction, id: &str) -> Result<String, String> {
        let config = self.config();
        let Some(rule) = config.rule(id) else {
            return Err(format!("there is no rule {id:?} in {}", config.path.display()));
        };
        let err = |e: anyhow::Error| format!("{e:#}");
        let latest = blocking(|| self.store.latest_migration(id)).map_err(err)?;
        let state = latest
            .as_ref()
            .map(|m| self.store.migration_counts(m).state())
            .unwrap_or("none");
        let changed = |m: i64, state: &str, message: &str| {
            self.emit(Event::MigrationChanged {
                rule: id.to_string(),
                migration: m,
                state: state.to_string(),
                message: message.to_string(),
            })
        };
        match action {
            MigrateAction::Start => {
                let enabled = blocking(|| self.store.rule_state(id))
                    .map_err(err)?
                    .is_some_and(|s| s.state == "enabled");
                if !rule.enabled || !enabled {
                    return Err(format!(
                        "rule {id:?} is not enabled: enable it first (`crr rule enable {id}`), then start the migration"
                    ));
                }
                let overwrite = rule.overwrite.as_str();
                match blocking(|| self.store.create_migration(id, overwrite)).map_err(err)? {
                    Err(_) => Err(format!(
                        "rule {id:?} already has a migration in progress ({state}): pause, resume or cancel it with `crr migrate pause|resume|cancel {id}`"
                    )),
                    Ok(m) => {
                        self.work.notify_waiters();
                        let msg = migration_started(rule);
                        changed(m, "listing", &msg);
                        Ok(msg)
                    }
                }
            }
            MigrateAction::Pause => match latest {
                Some(m) if state == "listing" || state == "running" => {
                    blocking(|| self.store.set_migration_control(m.id, "pause")).map_err(err)?;
                    let msg = format!(
                        "migration of rule {id:?} paused: copies in flight finish, nothing new starts; `crr migrate resume {id}` continues"
                    );
                    changed(m.id, "paused", &msg);
                    Ok(msg)
                }
                _ => Err(format!(
                    "rule {id:?} has no migration to pause (migration state: {state})"
                )),
            },
            MigrateAction::Resume => match latest {
                Some(m) if state == "paused" => {
                    blocking(|| self.store.set_migration_control(m.id, "run")).map_err(err)?;
                    self.work.notify_waiters();
                    let msg = format!("migration of rule {id:?} resumed");
                    changed(m.id, "running", &msg);
                    Ok(msg)
                }
                _ => Err(format!(
                    "rule {id:?} has no paused migration to resume (migration state: {state})"
                )),
            },
            MigrateAction::Cancel => match latest {
                Some(m) if matches!(state, "listing" | "running" | "paused") => {
                    let uploads = blocking(|| self.store.cancel_migration(m.id)).map_err(err)?;
                    self.abort_migration_copies(m.id);
                    let clients = self.clients();
                    if let Ok(dst) = clients.get(&rule.destination.endpoint) {
                        let dst = dst.clone();
                        let bucket = rule.destination.bucket.clone();
                        tokio::spawn(async move {
                            for t in uploads {
                                if let Some(u) = &t.upload_id
                                    && let Err(e) = copy::abort_upload(&dst, &bucket, &t.key, u).await
                                {
                                    tracing::warn!(key = %t.key, error = %e, "could not abort a multipart upload");
                                }
                            }
                        });
                    }
                    let msg = format!(
                        "migration of rule {id:?} cancelled: queued copies dropped, in-flight ones aborted; objects already copied stay"
                    );
                    changed(m.id, "cancelled", &msg);
                    Ok(msg)
                }
                _ => Err(format!(
                    "rule {id:?} has no migration to cancel (migration state: {state})"
                )),
            },
        }
    }
}

/// Reads the buckets' versioning once the snapshots are first watched, then every minute and
/// when asked.
async fn versioning_prober(core: std::sync::Weak<Core>, closed: tokio_util::sync::CancellationToken) {
    let mut watched = false;
    loop {
        let Some(c) = core.upgrade() else { return };
        if watched {
            c.probe_versioning().await;
        }
        let wait = async {
            if watched {
                tokio::select! {
                    _ = c.probe.now.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
            } else {
                c.probe.now.notified().await
            }
        };
        tokio::select! {
            _ = wait => {}
            _ = closed.cancelled() => return,
        }
        watched = true;
    }
}

async fn command_loop(
    core: std::sync::Weak<Core>,
    mut rx: mpsc::Receiver<Request>,
    closed: tokio_util::sync::CancellationToken,
) {
    loop {
        let (command, reply) = tokio::select! {
            r = rx.recv() => match r {
                Some(r) => r,
                None => return,
            },
            _ = closed.cancelled() => return,
        };
        let Some(core) = core.upgrade() else {
            let _ = reply.send(stopped());
            return;
        };
        let started = std::time::Instant::now();
        let answer = core.apply(command).await;
        if started.elapsed() > Duration::from_millis(100) {
            tracing::warn!(elapsed = ?started.elapsed(), "a command took longer than 100 ms to answer");
        }
        let _ = reply.send(answer);
    }
}

/// What starting a migration of `rule` says: what it copies, and the rule's warnings.
pub(super) fn migration_started(rule: &config::Rule) -> String {
    let mut msg = format!(
        "migration of rule {:?} started: the latest version of every object in {} ({}) that exists now is copied to {} when missing or different (overwrite = \"{}\")",
        rule.id,
        rule.source,
        rule.scope_text(),
        rule.destination,
        rule.overwrite.as_str()
    );
    for w in preflight::warnings(rule) {
        msg.push_str(&format!("\nwarning: {w}"));
    }
    msg
}
