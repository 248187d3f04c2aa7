//! The replication engine, with no knowledge of the terminal. It owns the state directory (one
//! engine per directory, by lock), reconciles the config's rules with their recorded state
//! (enable points, disabling), scans sources for new versions into the durable queue, and
//! runs the copy workers. `run_once` and `serve` are the two headless ways to drive it.

pub mod copy;
pub mod preflight;
pub mod progress;
mod scan;

use crate::config::{Config, Operations, Rule};
use crate::s3::Clients;
use crate::store::{EngineLock, LockHeld, Store, Task, now_ms, rfc3339};
use anyhow::{Context, Result};
use copy::{CopyCtx, CopyError};
use preflight::Refusal;
use progress::{Progress, TaskProgress};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What reconciling the config with the recorded state did, for the driver to print.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub messages: Vec<String>,
    pub refused: Vec<Refusal>,
}

/// Summary of one `run_once`.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub queued: usize,
    pub replicated: u64,
    pub replicated_bytes: u64,
    pub scan_errors: Vec<String>,
    pub failed: Vec<Task>,
}

pub struct Engine {
    config: RwLock<Arc<Config>>,
    clients: RwLock<Clients>,
    pub store: Arc<Store>,
    pub progress: Arc<Progress>,
    /// Running tasks: their rule and the token that aborts them when the rule is disabled.
    running: Mutex<HashMap<i64, (String, CancellationToken)>>,
    work: Notify,
    /// Stop claiming new tasks (graceful shutdown).
    draining: CancellationToken,
    /// Abort in-flight copies, leaving them resumable.
    hard_stop: CancellationToken,
    replicated_now: Mutex<(u64, u64)>,
    _lock: EngineLock,
}

fn backoff(attempt: u32) -> Duration {
    let base = 500u64
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(10))
        .min(60_000);
    let jitter = fastrand::u64(0..=base / 2);
    Duration::from_millis(base / 2 + jitter)
}

impl Engine {
    /// Takes the state directory's lock and prepares the engine; says who holds the lock if
    /// another engine runs there.
    pub async fn open(config: Config, state_dir: &Path) -> Result<std::result::Result<Arc<Engine>, LockHeld>> {
        let lock = match EngineLock::acquire(state_dir)? {
            Ok(l) => l,
            Err(held) => return Ok(Err(held)),
        };
        let store = Arc::new(Store::open(state_dir)?);
        let requeued = store.requeue_running()?;
        if requeued > 0 {
            tracing::info!(requeued, "tasks left running by an earlier process are queued again");
        }
        let clients = Clients::connect(&config).await;
        Ok(Ok(Arc::new(Engine {
            config: RwLock::new(Arc::new(config)),
            clients: RwLock::new(clients),
            store,
            progress: Arc::new(Progress::default()),
            running: Mutex::new(HashMap::new()),
            work: Notify::new(),
            draining: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            replicated_now: Mutex::new((0, 0)),
            _lock: lock,
        })))
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn clients(&self) -> Clients {
        self.clients.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the config file (after `crr rule ...` changed it) and reconnects.
    pub async fn reload(&self) -> Result<()> {
        let path = self.config().path.clone();
        let fresh = crate::config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let clients = Clients::connect(&fresh).await;
        *self.clients.write().unwrap_or_else(|p| p.into_inner()) = clients;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// Brings the recorded state in line with the config: rules newly enabled (or whose
    /// buckets or prefixes changed) get a new enable point; rules disabled or removed stop.
    /// `only` limits this to one rule.
    pub async fn reconcile(&self, only: Option<&str>) -> Result<Reconciled> {
        let config = self.config();
        let clients = self.clients();
        let mut out = Reconciled::default();
        for rule in config.rules.iter().filter(|r| only.is_none_or(|o| o == r.id)) {
            let state = self.store.rule_state(&rule.id)?;
            let active = state.as_ref().is_some_and(|s| s.state == "enabled");
            if rule.enabled {
                let same_scope = state.as_ref().is_some_and(|s| s.scope == rule.scope_signature());
                if active && same_scope {
                    continue;
                }
                let refusals = preflight::check_rule(&clients, rule).await;
                if !refusals.is_empty() {
                    out.refused.extend(refusals);
                    continue;
                }
                if active {
                    // Buckets or prefixes changed under an enabled rule: start it afresh.
                    self.stop_rule(&rule.id, "disabled").await?;
                    out.messages.push(format!(
                        "rule {:?}: its buckets or prefixes changed, so it starts again from a new enable point",
                        rule.id
                    ));
                }
                let (enable_point, existing) = self.enable_rule(rule).await?;
                out.messages.push(format!(
                    "rule {:?} enabled at {} ({existing} versions already in scope are not replicated in real time)",
                    rule.id,
                    rfc3339(enable_point)
                ));
                if let Some(off) = state.as_ref().and_then(|s| s.disabled_at) {
                    out.messages.push(format!(
                        "rule {:?}: writes made while it was disabled (since {}) are not replicated; run `crr migrate start {}` to catch up",
                        rule.id,
                        rfc3339(off),
                        rule.id
                    ));
                }
            } else if state
                .as_ref()
                .is_some_and(|s| s.state == "enabled" || s.state == "enabling")
            {
                self.stop_rule(&rule.id, "disabled").await?;
                out.messages.push(format!(
                    "rule {:?} disabled: queued tasks dropped, in-flight copies aborted; replicated data stays",
                    rule.id
                ));
            }
        }
        if only.is_none() {
            for (id, state) in self.store.rule_ids()? {
                if (state == "enabled" || state == "enabling") && config.rule(&id).is_none() {
                    self.stop_rule(&id, "deleted").await?;
                    out.messages.push(format!(
                        "rule {id:?} is no longer in the config: stopped; replicated data stays"
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Records a new enable point: every version that exists now is part of the baseline and is
    /// never replicated in real time; versions not in the baseline are new. Returns the enable
    /// point and the size of the baseline.
    async fn enable_rule(&self, rule: &Rule) -> Result<(i64, usize)> {
        self.store
            .begin_enable(&rule.id, &rule.scope_signature(), &rule.destination.to_string())?;
        let clients = self.clients();
        let src = clients.get(&rule.source.endpoint)?;
        let existing = scan::baseline(src, rule, &self.store).await?;
        let enable_point = now_ms();
        self.store.finish_enable(&rule.id, enable_point)?;
        tracing::info!(rule = %rule.id, existing, "rule enabled");
        Ok((enable_point, existing))
    }

    /// Stops a rule: drops its queue, aborts its in-flight copies and multipart uploads.
    async fn stop_rule(&self, id: &str, new_state: &str) -> Result<()> {
        let with_uploads = self.store.disable(id, new_state)?;
        let tokens: Vec<CancellationToken> = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|(r, _)| r == id)
            .map(|(_, t)| t.clone())
            .collect();
        for t in &tokens {
            t.cancel();
        }
        let state = self.store.rule_state(id)?;
        let dest = state.map(|s| s.destination).unwrap_or_default();
        if let Some((ep, bucket)) = dest.split_once('/') {
            let clients = self.clients();
            if let Ok(dst) = clients.get(ep) {
                for t in with_uploads {
                    if let Some(upload) = &t.upload_id
                        && let Err(e) = copy::abort_upload(dst, bucket, &t.key, upload).await
                    {
                        tracing::warn!(rule = id, key = %t.key, error = %e, "could not abort a multipart upload");
                    }
                }
            }
        }
        tracing::info!(rule = id, state = new_state, "rule stopped");
        Ok(())
    }

    /// Scans every enabled rule once. Returns (tasks queued, errors).
    pub async fn scan_all(&self) -> (usize, Vec<String>) {
        let config = self.config();
        let clients = self.clients();
        let mut queued = 0;
        let mut errors = Vec::new();
        for rule in config.rules.iter().filter(|r| r.enabled) {
            let Ok(Some(state)) = self.store.rule_state(&rule.id) else {
                continue;
            };
            if state.state != "enabled" {
                continue;
            }
            let result = match clients.get(&rule.source.endpoint) {
                Ok(src) => scan::scan(src, rule, state.generation, &self.store).await,
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(n) => {
                    queued += n;
                    if n > 0 {
                        tracing::info!(rule = %rule.id, queued = n, "scan found new changes");
                        self.work.notify_waiters();
                    }
                }
                Err(e) => {
                    tracing::warn!(rule = %rule.id, error = %format!("{e:#}"), "scan failed");
                    errors.push(format!("rule {:?}: scanning {} failed: {e:#}", rule.id, rule.source));
                }
            }
        }
        (queued, errors)
    }

    /// Runs one task to its outcome.
    async fn run_task(&self, task: Task) -> Result<()> {
        let config = self.config();
        let clients = self.clients();
        let Some(rule) = config.rule(&task.rule_id) else {
            self.store.skip(task.id, "the rule is no longer in the config")?;
            return Ok(());
        };
        if self.store.superseded(&task)? {
            self.store
                .skip(task.id, "a newer change of this key was already replicated")?;
            return Ok(());
        }
        if task.kind == crate::store::TaskKind::Delete && rule.operations == Operations::Put {
            self.store
                .skip(task.id, "the rule replicates no deletes (operations = \"put\")")?;
            return Ok(());
        }
        let (src, dst) = match (
            clients.get(&rule.source.endpoint),
            clients.get(&rule.destination.endpoint),
        ) {
            (Ok(s), Ok(d)) => (s, d),
            (Err(e), _) | (_, Err(e)) => {
                self.store.fail(task.id, &e.message)?;
                return Ok(());
            }
        };
        let token = CancellationToken::new();
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(task.id, (rule.id.clone(), token.clone()));
        self.progress.start(TaskProgress {
            task_id: task.id,
            rule_id: rule.id.clone(),
            key: task.key.clone(),
            size: task.size,
            bytes_done: 0,
            parts_done: 0,
            parts_total: 1,
            attempt: task.attempts,
            started: Instant::now(),
        });
        let engine_cfg = config.engine.clone();
        let ctx = CopyCtx {
            src,
            dst,
            rule,
            engine: &engine_cfg,
            store: &self.store,
            progress: &self.progress,
        };
        let outcome = tokio::select! {
            r = ctx.run(&task) => Some(r),
            _ = token.cancelled() => None,
            _ = self.hard_stop.cancelled() => None,
        };
        self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&task.id);
        self.progress.finish(task.id);
        match outcome {
            Some(Ok(done)) => {
                self.store.complete(&task, done.dest_version.as_deref(), done.bytes)?;
                let mut n = self.replicated_now.lock().unwrap_or_else(|p| p.into_inner());
                n.0 += 1;
                n.1 += done.bytes;
                tracing::info!(rule = %rule.id, key = %task.key, version = %task.version_id, bytes = done.bytes, "replicated");
            }
            Some(Err(CopyError::Gone(why))) => {
                tracing::info!(rule = %rule.id, key = %task.key, "skipped: {why}");
                self.store.skip(task.id, &why)?;
            }
            Some(Err(CopyError::Retry(why))) => {
                if task.attempts >= engine_cfg.max_attempts {
                    tracing::warn!(rule = %rule.id, key = %task.key, attempts = task.attempts, "failed: {why}");
                    self.store.fail(task.id, &why)?;
                } else {
                    let wait = backoff(task.attempts);
                    tracing::info!(rule = %rule.id, key = %task.key, attempt = task.attempts, "will retry in {wait:?}: {why}");
                    self.store
                        .retry_later(task.id, &why, now_ms() + wait.as_millis() as i64)?;
                }
            }
            None if token.is_cancelled() => {
                // The rule was disabled: the store already dropped the task. Abort its upload.
                if let Some(upload) = self.store.tasks_upload(task.id)?
                    && let Err(e) = copy::abort_upload(dst, &rule.destination.bucket, &task.key, &upload).await
                {
                    tracing::warn!(key = %task.key, error = %e, "could not abort a multipart upload");
                }
            }
            None => {
                // Shutting down: back to the queue; multipart parts stay for the restart.
                self.store.release(task.id)?;
            }
        }
        self.store.update_sync_point(&rule.id)?;
        Ok(())
    }

    async fn worker(self: Arc<Self>, until_idle: bool) {
        loop {
            if self.draining.is_cancelled() {
                return;
            }
            let claimed = self.store.claim(now_ms());
            match claimed {
                Ok(Some(task)) => {
                    if let Err(e) = self.run_task(task).await {
                        tracing::error!(error = %format!("{e:#}"), "state store error while finishing a task");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                Ok(None) => {
                    if until_idle && self.running_count() == 0 && self.store.unfinished().unwrap_or(1) == 0 {
                        return;
                    }
                    tokio::select! {
                        _ = self.work.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = self.draining.cancelled() => return,
                    }
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "state store error while claiming a task");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn running_count(&self) -> usize {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn spawn_workers(self: &Arc<Self>, until_idle: bool) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.config().engine.workers)
            .map(|_| tokio::spawn(self.clone().worker(until_idle)))
            .collect()
    }

    /// Catches every enabled rule up: one scan, then every queued task to its end.
    pub async fn run_once(self: &Arc<Self>) -> Result<RunSummary> {
        let before = *self.replicated_now.lock().unwrap_or_else(|p| p.into_inner());
        let (queued, scan_errors) = self.scan_all().await;
        for w in self.spawn_workers(true) {
            w.await.context("a copy worker panicked")?;
        }
        let config = self.config();
        for rule in &config.rules {
            self.store.update_sync_point(&rule.id)?;
        }
        let after = *self.replicated_now.lock().unwrap_or_else(|p| p.into_inner());
        let (replicated, replicated_bytes) = (after.0 - before.0, after.1 - before.1);
        let failed = self
            .store
            .tasks_in(&["failed"], 1000)?
            .into_iter()
            .filter(|t| config.rule(&t.rule_id).is_some_and(|r| r.enabled))
            .collect();
        Ok(RunSummary {
            queued,
            replicated,
            replicated_bytes,
            scan_errors,
            failed,
        })
    }

    /// Applies commands that `crr` invocations posted to the state store.
    async fn apply_commands(&self) {
        let Ok(commands) = self.store.pending_commands() else {
            return;
        };
        for (id, kind, arg) in commands {
            let result = match kind.as_str() {
                "reconcile" => match self.reload().await {
                    Ok(()) => {
                        let only = if arg.is_empty() { None } else { Some(arg.as_str()) };
                        match self.reconcile(only).await {
                            Ok(r) => {
                                let mut lines = r.messages;
                                lines.extend(r.refused.iter().map(|x| format!("refused: {x}")));
                                self.work.notify_waiters();
                                lines.join("\n")
                            }
                            Err(e) => format!("error: {e:#}"),
                        }
                    }
                    Err(e) => format!("error: the config could not be reloaded: {e:#}"),
                },
                "wake" => {
                    self.work.notify_waiters();
                    String::new()
                }
                other => format!("error: unknown command {other:?}"),
            };
            tracing::info!(command = %kind, arg = %arg, "applied a posted command");
            if let Err(e) = self.store.finish_command(id, &result) {
                tracing::error!(error = %format!("{e:#}"), "could not record a command's result");
            }
        }
    }

    /// Runs until `shutdown` fires: scans every `scan_interval`, copies continuously, and
    /// applies posted commands within half a second. In-flight copies get a grace period,
    /// then are aborted and left resumable.
    pub async fn serve(self: &Arc<Self>, shutdown: CancellationToken) -> Result<()> {
        let workers = self.spawn_workers(false);
        let mut next_scan = Instant::now();
        loop {
            if Instant::now() >= next_scan {
                let (_, errors) = self.scan_all().await;
                for e in errors {
                    tracing::warn!("{e}");
                }
                next_scan = Instant::now() + self.config().engine.scan_interval;
            }
            self.apply_commands().await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
        tracing::info!("shutting down: waiting for in-flight copies");
        self.draining.cancel();
        self.work.notify_waiters();
        let grace = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(grace);
        let all = futures::future::join_all(workers);
        tokio::pin!(all);
        tokio::select! {
            _ = &mut all => {}
            _ = &mut grace => {
                tracing::info!("grace period over: aborting in-flight copies, they resume on restart");
                self.hard_stop.cancel();
                all.await;
            }
        }
        Ok(())
    }
}
