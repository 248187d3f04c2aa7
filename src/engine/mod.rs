//! The replication engine, with no knowledge of the terminal. It owns the state directory (one
//! engine per directory, by lock), reconciles the config's rules with their recorded state
//! (enable points, disabling), scans sources for new versions into the durable queue, and
//! runs the copy workers. `run_once` and `serve` are the two headless ways to drive it.

pub mod copy;
pub mod diff;
pub mod limit;
mod migrate;
pub mod preflight;
pub mod progress;
mod scan;

use crate::config::{Config, Operations, Overwrite, Rule};
use crate::s3::Clients;
use crate::store::{EngineLock, LockHeld, Store, Task, now_ms, rfc3339};
use anyhow::{Context, Result};
use copy::{CopyCtx, CopyError};
use limit::Limiter;
use preflight::Refusal;
use progress::{Progress, TaskProgress};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
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
    /// Running tasks: their rule, migration, and the token that aborts them when the rule is
    /// disabled or the migration cancelled.
    running: Mutex<HashMap<i64, InFlight>>,
    /// Migration listings in progress (by migration id).
    listing: Mutex<std::collections::HashSet<i64>>,
    listing_count: AtomicUsize,
    listing_errors: Mutex<Vec<String>>,
    /// Set while `serve` runs (failed listings are retried after a pause).
    serving: std::sync::atomic::AtomicBool,
    global_limit: Arc<Limiter>,
    rule_limits: Mutex<HashMap<String, Arc<Limiter>>>,
    snapshot: watch::Sender<Snapshot>,
    work: Notify,
    /// Stop claiming new tasks (graceful shutdown).
    draining: CancellationToken,
    /// Abort in-flight copies, leaving them resumable.
    hard_stop: CancellationToken,
    replicated_now: Mutex<(u64, u64)>,
    _lock: EngineLock,
}

/// A running task's rule, migration (if any) and abort token.
type InFlight = (String, Option<i64>, CancellationToken);

/// What drivers render, sampled a few times a second: every running copy with its rate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub tasks: Vec<RunningCopy>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunningCopy {
    pub task_id: i64,
    pub rule_id: String,
    pub key: String,
    pub size: u64,
    pub bytes_done: u64,
    pub part: u32,
    pub parts: u32,
    pub attempt: u32,
    /// Bytes per second, smoothed.
    pub rate: u64,
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
        let global_limit = Arc::new(Limiter::new(config.engine.bandwidth_limit));
        Ok(Ok(Arc::new(Engine {
            listing: Mutex::new(Default::default()),
            listing_count: AtomicUsize::new(0),
            listing_errors: Mutex::new(Vec::new()),
            serving: std::sync::atomic::AtomicBool::new(false),
            global_limit,
            rule_limits: Mutex::new(HashMap::new()),
            snapshot: watch::channel(Snapshot::default()).0,
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
        // Changed in place, so that copies already running follow the new limit too.
        self.global_limit.set_rate(fresh.engine.bandwidth_limit);
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// The limits a copy of this rule shares: the global one and the rule's own.
    fn limits_for(&self, rule: &Rule) -> Vec<Arc<Limiter>> {
        let mut limits = vec![self.global_limit.clone()];
        if rule.bandwidth_limit > 0 {
            let mut map = self.rule_limits.lock().unwrap_or_else(|p| p.into_inner());
            let l = map
                .entry(rule.id.clone())
                .or_insert_with(|| Arc::new(Limiter::new(rule.bandwidth_limit)));
            l.set_rate(rule.bandwidth_limit);
            limits.push(l.clone());
        }
        limits
    }

    /// Progress of running copies, sampled 4 times a second while the engine runs.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.subscribe()
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
                if state.is_none() && rule.historical {
                    match self.migrate_command("start", &rule.id).await {
                        Ok(m) | Err(m) => out.messages.push(m),
                    }
                }
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
            .filter(|(r, _, _)| r == id)
            .map(|(_, _, t)| t.clone())
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
        let overwrite = match task.migration_id {
            Some(id) => self.store.migration(id)?.map(|m| match m.overwrite.as_str() {
                "always" => Overwrite::Always,
                "never" => Overwrite::Never,
                _ => Overwrite::IfDifferent,
            }),
            None => None,
        };
        let token = CancellationToken::new();
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(task.id, (rule.id.clone(), task.migration_id, token.clone()));
        // A disable or cancel that ran between the claim and the line above could not see this
        // task's token: ask the store whether the task is still ours to run.
        if !self.store.is_running(task.id).unwrap_or(false) {
            self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&task.id);
            self.abort_open_upload(&task, dst, &rule.destination.bucket).await;
            return Ok(());
        }
        self.progress.start(TaskProgress {
            task_id: task.id,
            rule_id: rule.id.clone(),
            key: task.key.clone(),
            size: task.size,
            bytes_done: 0,
            parts_done: 0,
            parts_total: copy::part_layout(task.size, &config.engine).1,
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
            limits: self.limits_for(rule),
        };
        let work = async {
            if let Some(policy) = overwrite
                && let Some(why) = ctx.migration_skip(&task, policy).await?
            {
                return Ok(Err(why));
            }
            ctx.run(&task).await.map(Ok)
        };
        let outcome = tokio::select! {
            r = work => Some(r),
            _ = token.cancelled() => None,
            _ = self.hard_stop.cancelled() => None,
        };
        self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&task.id);
        self.progress.finish(task.id);
        match outcome {
            Some(Ok(Err(why))) => {
                // Left alone by the overwrite policy: skipped, and processed for the migration's progress.
                self.store.skip(task.id, &why)?;
                self.abort_open_upload(&task, dst, &rule.destination.bucket).await;
            }
            Some(Ok(Ok(done))) => {
                self.store.complete(&task, done.dest_version.as_deref(), done.bytes)?;
                let mut n = self.replicated_now.lock().unwrap_or_else(|p| p.into_inner());
                n.0 += 1;
                n.1 += done.bytes;
                tracing::info!(rule = %rule.id, key = %task.key, version = %task.version_id, bytes = done.bytes, "replicated");
            }
            Some(Err(CopyError::Gone(why))) => {
                tracing::info!(rule = %rule.id, key = %task.key, "skipped: {why}");
                self.store.skip(task.id, &why)?;
                self.abort_open_upload(&task, dst, &rule.destination.bucket).await;
            }
            Some(Err(CopyError::Retry(why))) => {
                if task.attempts >= engine_cfg.max_attempts {
                    tracing::warn!(rule = %rule.id, key = %task.key, attempts = task.attempts, "failed: {why}");
                    self.store.fail(task.id, &why)?;
                    // A retry starts afresh; no parts stay billed meanwhile.
                    self.abort_open_upload(&task, dst, &rule.destination.bucket).await;
                } else {
                    let wait = backoff(task.attempts);
                    tracing::info!(rule = %rule.id, key = %task.key, attempt = task.attempts, "will retry in {wait:?}: {why}");
                    self.store
                        .retry_later(task.id, &why, now_ms() + wait.as_millis() as i64)?;
                }
            }
            None if token.is_cancelled() => {
                // The rule was disabled or the migration cancelled: the store already dropped
                // the task. Abort its upload.
                self.abort_open_upload(&task, dst, &rule.destination.bucket).await;
            }
            None => {
                // Shutting down: back to the queue; multipart parts stay for the restart.
                self.store.release(task.id)?;
            }
        }
        self.store.update_sync_point(&rule.id)?;
        Ok(())
    }

    /// Aborts the multipart upload the task has open, if any, and forgets it.
    async fn abort_open_upload(&self, task: &Task, dst: &crate::s3::S3, bucket: &str) {
        let Ok(Some(upload)) = self.store.tasks_upload(task.id) else {
            return;
        };
        match copy::abort_upload(dst, bucket, &task.key, &upload).await {
            Ok(()) => {
                if let Err(e) = self.store.set_upload(task.id, None) {
                    tracing::warn!(key = %task.key, error = %format!("{e:#}"), "could not forget an aborted upload");
                }
            }
            Err(e) => tracing::warn!(key = %task.key, error = %e, "could not abort a multipart upload"),
        }
    }

    async fn worker(self: Arc<Self>, until_idle: bool) {
        loop {
            if self.draining.is_cancelled() {
                return;
            }
            let claimed = self.store.claim(now_ms());
            match claimed {
                Ok(Some(task)) => {
                    let id = task.id;
                    if let Err(e) = self.run_task(task).await {
                        tracing::error!(error = %format!("{e:#}"), task = id, "state store error while running a task");
                        // Give it back (it stays interrupted) rather than leave it running.
                        self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                        self.progress.finish(id);
                        if let Err(e) = self.store.release(id) {
                            tracing::error!(error = %format!("{e:#}"), task = id, "could not requeue the task");
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                Ok(None) => {
                    if until_idle
                        && self.running_count() == 0
                        && self.listing_count.load(Ordering::SeqCst) == 0
                        && self.store.unfinished().unwrap_or(1) == 0
                    {
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
        let (queued, mut scan_errors) = self.scan_all().await;
        self.spawn_listers();
        let stop_sampler = CancellationToken::new();
        let sampler = tokio::spawn(self.clone().sample(stop_sampler.clone()));
        for w in self.spawn_workers(true) {
            w.await.context("a copy worker panicked")?;
        }
        stop_sampler.cancel();
        let _ = sampler.await;
        scan_errors.extend(std::mem::take(
            &mut *self.listing_errors.lock().unwrap_or_else(|p| p.into_inner()),
        ));
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
                "migrate" => {
                    let (action, id) = arg.split_once(' ').unwrap_or((arg.as_str(), ""));
                    match self.migrate_command(action, id).await {
                        Ok(m) => m,
                        Err(m) => format!("refused: {m}"),
                    }
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
        self.serving.store(true, Ordering::SeqCst);
        let workers = self.spawn_workers(false);
        let stop_sampler = CancellationToken::new();
        let sampler = tokio::spawn(self.clone().sample(stop_sampler.clone()));
        // Scans run on their own, so that a long one never delays a posted command.
        let scanner = {
            let engine = self.clone();
            let stop = self.draining.clone();
            tokio::spawn(async move {
                loop {
                    let (_, errors) = engine.scan_all().await;
                    for e in errors {
                        tracing::warn!("{e}");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(engine.config().engine.scan_interval) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            })
        };
        loop {
            self.apply_commands().await;
            self.spawn_listers();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
        tracing::info!("shutting down: waiting for in-flight copies");
        self.draining.cancel();
        scanner.abort();
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
        stop_sampler.cancel();
        let _ = sampler.await;
        Ok(())
    }

    /// Starts the listing of every migration that should be listing and is not.
    fn spawn_listers(self: &Arc<Self>) {
        let Ok(migrations) = self.store.migrations_to_list() else {
            return;
        };
        for m in migrations {
            if !self.listing.lock().unwrap_or_else(|p| p.into_inner()).insert(m.id) {
                continue;
            }
            self.listing_count.fetch_add(1, Ordering::SeqCst);
            let engine = self.clone();
            tokio::spawn(async move {
                if let Err(e) = engine.list_migration(m.id, &m.rule_id).await {
                    let msg = format!("rule {:?}: listing for the migration failed: {e:#}", m.rule_id);
                    tracing::warn!("{msg}");
                    engine
                        .listing_errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(msg);
                    if engine.serving.load(Ordering::SeqCst) && !engine.draining.is_cancelled() {
                        // Serving: the next try comes after a pause, not 4 times a second.
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
                engine.listing.lock().unwrap_or_else(|p| p.into_inner()).remove(&m.id);
                engine.listing_count.fetch_sub(1, Ordering::SeqCst);
                engine.work.notify_waiters();
            });
        }
    }

    async fn list_migration(&self, id: i64, rule_id: &str) -> Result<()> {
        let config = self.config();
        let Some(rule) = config.rule(rule_id) else {
            return Ok(());
        };
        let generation = self.store.rule_state(rule_id)?.map(|s| s.generation).unwrap_or(0);
        let clients = self.clients();
        let src = clients.get(&rule.source.endpoint)?;
        let listed = migrate::list(src, rule, &self.store, generation, id, || self.work.notify_waiters()).await?;
        if matches!(listed, migrate::Listed::Done) {
            tracing::info!(rule = rule_id, migration = id, "migration listing complete");
        }
        Ok(())
    }

    /// `crr migrate start|pause|resume|cancel ID`. `Err` is a refusal that says why.
    pub async fn migrate_command(&self, action: &str, id: &str) -> std::result::Result<String, String> {
        let config = self.config();
        let Some(rule) = config.rule(id) else {
            return Err(format!("there is no rule {id:?} in {}", config.path.display()));
        };
        let err = |e: anyhow::Error| format!("{e:#}");
        let latest = self.store.latest_migration(id).map_err(err)?;
        let figures = match &latest {
            Some(m) => Some(self.store.migration_figures(m).map_err(err)?),
            None => None,
        };
        let state = figures.as_ref().map(|f| f.state()).unwrap_or("none");
        match action {
            "start" => {
                let enabled = self
                    .store
                    .rule_state(id)
                    .map_err(err)?
                    .is_some_and(|s| s.state == "enabled");
                if !rule.enabled || !enabled {
                    return Err(format!(
                        "rule {id:?} is not enabled: enable it first (`crr rule enable {id}`), then start the migration"
                    ));
                }
                let overwrite = match rule.overwrite {
                    Overwrite::Always => "always",
                    Overwrite::IfDifferent => "if-different",
                    Overwrite::Never => "never",
                };
                match self.store.create_migration(id, overwrite).map_err(err)? {
                    Err(_) => Err(format!(
                        "rule {id:?} already has a migration in progress ({state}): pause, resume or cancel it with `crr migrate pause|resume|cancel {id}`"
                    )),
                    Ok(_) => {
                        self.work.notify_waiters();
                        let mut msg = format!(
                            "migration of rule {id:?} started: the latest version of every object in {} ({}) that exists now is copied to {} when missing or different (overwrite = \"{overwrite}\")",
                            rule.source,
                            rule.scope_text(),
                            rule.destination
                        );
                        for w in preflight::warnings(rule) {
                            msg.push_str(&format!("\nwarning: {w}"));
                        }
                        Ok(msg)
                    }
                }
            }
            "pause" => match latest {
                Some(m) if state == "listing" || state == "running" => {
                    self.store.set_migration_control(m.id, "pause").map_err(err)?;
                    Ok(format!(
                        "migration of rule {id:?} paused: copies in flight finish, nothing new starts; `crr migrate resume {id}` continues"
                    ))
                }
                _ => Err(format!(
                    "rule {id:?} has no migration to pause (migration state: {state})"
                )),
            },
            "resume" => match latest {
                Some(m) if state == "paused" => {
                    self.store.set_migration_control(m.id, "run").map_err(err)?;
                    self.work.notify_waiters();
                    Ok(format!("migration of rule {id:?} resumed"))
                }
                _ => Err(format!(
                    "rule {id:?} has no paused migration to resume (migration state: {state})"
                )),
            },
            "cancel" => match latest {
                Some(m) if matches!(state, "listing" | "running" | "paused") => {
                    let uploads = self.store.cancel_migration(m.id).map_err(err)?;
                    for (_, mig, token) in self.running.lock().unwrap_or_else(|p| p.into_inner()).values() {
                        if *mig == Some(m.id) {
                            token.cancel();
                        }
                    }
                    let clients = self.clients();
                    if let Ok(dst) = clients.get(&rule.destination.endpoint) {
                        for t in uploads {
                            if let Some(u) = &t.upload_id
                                && let Err(e) = copy::abort_upload(dst, &rule.destination.bucket, &t.key, u).await
                            {
                                tracing::warn!(key = %t.key, error = %e, "could not abort a multipart upload");
                            }
                        }
                    }
                    Ok(format!(
                        "migration of rule {id:?} cancelled: queued copies dropped, in-flight ones aborted; objects already copied stay"
                    ))
                }
                _ => Err(format!(
                    "rule {id:?} has no migration to cancel (migration state: {state})"
                )),
            },
            other => Err(format!(
                "unknown migrate action {other:?}: use start, pause, resume or cancel"
            )),
        }
    }

    /// Publishes the progress of running copies 4 times a second (only when it changed), and
    /// records their bytes in the store once a second for other processes.
    async fn sample(self: Arc<Self>, stop: CancellationToken) {
        let mut previous: HashMap<i64, (u64, Instant, f64)> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            let now = Instant::now();
            let running = self.progress.snapshot();
            let mut next = HashMap::new();
            let tasks: Vec<RunningCopy> = running
                .iter()
                .map(|p| {
                    let rate = match previous.get(&p.task_id) {
                        Some((bytes, at, rate)) => {
                            let dt = now.duration_since(*at).as_secs_f64().max(0.001);
                            let instant = p.bytes_done.saturating_sub(*bytes) as f64 / dt;
                            0.5 * instant + 0.5 * rate
                        }
                        None => p.bytes_done as f64 / now.duration_since(p.started).as_secs_f64().max(0.25),
                    };
                    next.insert(p.task_id, (p.bytes_done, now, rate));
                    RunningCopy {
                        task_id: p.task_id,
                        rule_id: p.rule_id.clone(),
                        key: p.key.clone(),
                        size: p.size,
                        bytes_done: p.bytes_done.min(p.size),
                        part: (p.parts_done + 1).min(p.parts_total.max(1)),
                        parts: p.parts_total.max(1),
                        attempt: p.attempt,
                        rate: rate as u64,
                    }
                })
                .collect();
            previous = next;
            let fresh = Snapshot { tasks };
            self.snapshot.send_if_modified(|s| {
                if *s != fresh {
                    *s = fresh.clone();
                    true
                } else {
                    false
                }
            });
            n += 1;
            if n.is_multiple_of(4) {
                let done: Vec<(i64, u64)> = fresh.tasks.iter().map(|t| (t.task_id, t.bytes_done)).collect();
                if let Err(e) = self.store.record_bytes_done(&done) {
                    tracing::warn!(error = %format!("{e:#}"), "could not record copy progress");
                }
            }
        }
    }
}
