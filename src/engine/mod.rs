//! The replication engine, with no knowledge of the terminal. It owns the state directory (one
//! engine per directory, by lock), reconciles the config's rules with their recorded state
//! (enable points, disabling), scans sources for new versions into the durable queue, and runs
//! the copy workers. Every driver (the UI, `serve`, `run --once`, the CLI) controls it through
//! one typed `EngineHandle` (`control`), and reads `Event`s and `Snapshot`s (`api`, `sampler`);
//! `service` and `client` carry the same types over the state directory's Unix socket.

pub mod api;
pub mod client;
mod control;
pub mod copy;
pub mod diff;
pub mod limit;
mod migrate;
mod outage;
pub mod preflight;
pub mod progress;
mod sampler;
mod scan;
pub mod service;
mod workers;

pub use api::{Command, Event, MigrateAction, Reply, RetryTarget, RuleDraft, RunningCopy, Snapshot};
pub use control::EngineHandle;
pub use sampler::offline_snapshot;

use crate::config::{Config, Rule};
use crate::s3::Clients;
use crate::s3::health::Health;
use crate::store::{EngineLock, LockHeld, Store, Task, now_ms, rfc3339};
use anyhow::{Result, anyhow};
use api::Failure;
use limit::Limiter;
use preflight::Refusal;
use progress::Progress;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;

/// What reconciling the config with the recorded state did, for the driver to print.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub messages: Vec<String>,
    pub refused: Vec<Refusal>,
    /// Rules whose baseline this listed, by id: (generation, when the listing began, unix ms).
    pub listed: HashMap<String, (i64, i64)>,
}

/// Summary of one `run_once`.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub queued: usize,
    pub replicated: u64,
    pub replicated_bytes: u64,
    pub scan_errors: Vec<String>,
    pub failed: Vec<Task>,
    /// What the run's own reconciling did (`Engine::reconcile_and_run_once`); `None` when it
    /// did not reconcile, or was stopped before reconciling ended.
    pub reconciled: Option<Reconciled>,
}

/// How many buckets of each endpoint the buckets pane lists.
const LISTED_BUCKETS: usize = 200;
/// How many recent failures the snapshot carries.
const RECENT_FAILURES: usize = 50;
/// How many events a slow subscriber may fall behind before it misses some.
const EVENT_BACKLOG: usize = 1024;

/// A running task's rule, migration and the token that aborts it when the rule is disabled or
/// the migration cancelled.
type InFlight = (String, Option<i64>, CancellationToken);

/// The engine's state, shared by its workers, its background tasks and its drivers. `Engine`
/// adds the state directory's lock.
pub struct Core {
    config: RwLock<Arc<Config>>,
    clients: RwLock<Clients>,
    pub store: Arc<Store>,
    pub progress: Arc<Progress>,
    running: Mutex<HashMap<i64, InFlight>>,
    /// Migration listings in progress (by migration id).
    listing: Mutex<HashSet<i64>>,
    listing_count: AtomicUsize,
    /// Listing errors of this `run_once`, for its summary (not kept while serving).
    listing_errors: Mutex<Vec<String>>,
    /// Set while `serve` runs (failed listings are retried after a pause).
    serving: AtomicBool,
    global_limit: Arc<Limiter>,
    rule_limits: Mutex<HashMap<String, Arc<Limiter>>>,
    /// Limits set by `Command::SetBandwidth` (None = the global one); they hold until a reload.
    limit_overrides: Mutex<HashMap<Option<String>, u64>>,
    snapshot: watch::Sender<Snapshot>,
    events: broadcast::Sender<Event>,
    health: Health,
    failures: Mutex<VecDeque<Failure>>,
    /// Versioning of the buckets the rules use, by (endpoint, bucket), probed now and then.
    versioning: Mutex<HashMap<(String, String), Result<String, String>>>,
    probe: Arc<control::Probe>,
    /// Per rule: cancelled when the rule stops, to end its enabling and its scan.
    rule_tokens: Mutex<HashMap<String, CancellationToken>>,
    scan_failing: Mutex<HashSet<String>>,
    /// Asks the progress sampler for a sample at once.
    sample_now: Arc<sampler::SampleNow>,
    /// Tasks whose outcome could not be written (state directory full or read-only): given
    /// back to the queue as soon as the store takes writes again.
    unreleased: Mutex<Vec<i64>>,
    /// The store refuses writes: no new copies start until it takes them again.
    store_failing: AtomicBool,
    work: Notify,
    /// Stop claiming new tasks (graceful shutdown).
    draining: CancellationToken,
    /// Abort in-flight copies, leaving them resumable.
    hard_stop: CancellationToken,
    /// Cancelled when the `Engine` is dropped: background tasks end.
    closed: CancellationToken,
    /// A driver asked the engine to stop (`Command::Shutdown`).
    pub shutdown: CancellationToken,
    replicated_now: Mutex<(u64, u64)>,
    control: OnceLock<tokio::sync::mpsc::Sender<control::Request>>,
    /// Serialises changes to the config file.
    config_edit: tokio::sync::Mutex<()>,
}

/// The engine: its shared state, and the lock that makes it the only one on its state directory.
pub struct Engine {
    core: Arc<Core>,
    _lock: EngineLock,
}

impl std::ops::Deref for Engine {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.core.closed.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// Takes the state directory's lock and prepares the engine; says who holds the lock if
    /// another engine runs there.
    pub async fn open(config: Config, state_dir: &Path) -> Result<std::result::Result<Arc<Engine>, LockHeld>> {
        match EngineLock::acquire(state_dir)? {
            Ok(l) => Ok(Ok(Self::open_locked(config, state_dir, l).await?)),
            Err(held) => Ok(Err(held)),
        }
    }

    /// Prepares the engine with a lock the caller already holds.
    pub async fn open_locked(config: Config, state_dir: &Path, lock: EngineLock) -> Result<Arc<Engine>> {
        let store = Arc::new(Store::open(state_dir)?);
        let requeued = store.requeue_running()?;
        if requeued > 0 {
            tracing::info!(requeued, "tasks left running by an earlier process are queued again");
        }
        let health = Health::persisted(state_dir);
        let clients = Clients::connect_observed(&config, Some(&health)).await;
        let global_limit = Arc::new(Limiter::new(config.engine.bandwidth_limit));
        let core = Core {
            listing: Mutex::new(Default::default()),
            listing_count: AtomicUsize::new(0),
            listing_errors: Mutex::new(Vec::new()),
            serving: AtomicBool::new(false),
            global_limit,
            rule_limits: Mutex::new(HashMap::new()),
            limit_overrides: Mutex::new(HashMap::new()),
            snapshot: watch::channel(Snapshot::default()).0,
            events: broadcast::channel(EVENT_BACKLOG).0,
            health,
            failures: Mutex::new(VecDeque::new()),
            versioning: Mutex::new(HashMap::new()),
            probe: Arc::default(),
            rule_tokens: Mutex::new(HashMap::new()),
            scan_failing: Mutex::new(HashSet::new()),
            sample_now: Arc::default(),
            unreleased: Mutex::new(Vec::new()),
            store_failing: AtomicBool::new(false),
            config: RwLock::new(Arc::new(config)),
            clients: RwLock::new(clients),
            store,
            progress: Arc::new(Progress::default()),
            running: Mutex::new(HashMap::new()),
            work: Notify::new(),
            draining: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            closed: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            replicated_now: Mutex::new((0, 0)),
            control: OnceLock::new(),
            config_edit: tokio::sync::Mutex::new(()),
        };
        Ok(Arc::new(Engine {
            core: Arc::new(core),
            _lock: lock,
        }))
    }

    /// The typed control handle; starts the command loop and the progress sampler on first use.
    pub fn handle(&self) -> EngineHandle {
        self.core.handle()
    }

    /// Catches every enabled rule up: one scan (beside the copies), and every queued task to its
    /// end.
    pub async fn run_once(&self) -> Result<RunSummary> {
        self.core.clone().run_once(HashMap::new(), None).await
    }

    /// `run_once` straight after `reconcile`: the baselines it listed count as this run's scan
    /// of their rules, which are not listed a second time.
    pub async fn run_once_after(&self, reconciled: &Reconciled) -> Result<RunSummary> {
        self.core.clone().run_once(reconciled.listed.clone(), None).await
    }

    /// `reconcile`, then `run_once_after` it, with the copies already running while the rules
    /// are enabled: a first enabling's migration copies each page of its listing as it comes,
    /// rather than after the whole listing. `applied` hears what reconciling did as soon as it
    /// is done; the summary carries it too.
    pub async fn reconcile_and_run_once(
        &self,
        applied: impl FnOnce(&Reconciled) + Send + 'static,
    ) -> Result<RunSummary> {
        self.core
            .clone()
            .run_once(HashMap::new(), Some(Box::new(applied)))
            .await
    }

    /// Preflight of the rules `reconcile` would enable now (enabled in the config, and new, or
    /// disabled, or changed in the record). Empty when every one of them passes.
    pub async fn preflight_pending(&self) -> Vec<Refusal> {
        let config = self.config();
        let clients = self.clients();
        let mut out = Vec::new();
        for rule in config.rules.iter().filter(|r| r.enabled) {
            let state = self.store.rule_state(&rule.id).ok().flatten();
            if state.is_some_and(|s| s.state == "enabled" && s.scope == rule.scope_signature()) {
                continue;
            }
            out.extend(preflight::check_rule(&clients, rule).await);
        }
        out
    }

    /// Runs until `shutdown` (or `Command::Shutdown`): scans every `scan_interval` and copies
    /// continuously. In-flight copies get a grace period, then are aborted and left resumable.
    pub async fn serve(&self, shutdown: CancellationToken) -> Result<()> {
        self.core.clone().serve(shutdown).await
    }

    pub fn core(&self) -> Arc<Core> {
        self.core.clone()
    }
}

impl Core {
    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn clients(&self) -> Clients {
        self.clients.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Progress, sampled a few times a second while the engine runs.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.subscribe()
    }

    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn emit(&self, event: Event) {
        tracing::info!("{}", event.describe());
        let _ = self.events.send(event);
    }

    /// Re-reads the config file (after it changed) and reconnects.
    pub async fn reload(&self) -> Result<()> {
        let path = self.config().path.clone();
        let fresh = crate::config::load(&path).map_err(|e| anyhow!("{e}"))?;
        let clients = Clients::connect_observed(&fresh, Some(&self.health)).await;
        *self.clients.write().unwrap_or_else(|p| p.into_inner()) = clients;
        lock(&self.limit_overrides).clear();
        // Changed in place, so that copies already running follow the new limit too.
        self.global_limit.set_rate(fresh.engine.bandwidth_limit);
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    /// The limits a copy of this rule shares: the global one and the rule's own.
    fn limits_for(&self, rule: &Rule) -> Vec<Arc<Limiter>> {
        let mut limits = vec![self.global_limit.clone()];
        let rate = lock(&self.limit_overrides)
            .get(&Some(rule.id.clone()))
            .copied()
            .unwrap_or(rule.bandwidth_limit);
        if rate > 0 {
            let mut map = lock(&self.rule_limits);
            let l = map
                .entry(rule.id.clone())
                .or_insert_with(|| Arc::new(Limiter::new(rate)));
            l.set_rate(rate);
            limits.push(l.clone());
        }
        limits
    }

    /// The token of the rule's work (enabling, scans); `stop_rule` cancels and forgets it, so
    /// the next use gets a fresh one.
    fn rule_token(&self, id: &str) -> CancellationToken {
        lock(&self.rule_tokens)
            .entry(id.to_string())
            .or_insert_with(|| self.closed.child_token())
            .clone()
    }

    /// Brings the recorded state in line with the config: rules newly enabled (or whose
    /// buckets or prefixes changed) get a new enable point; rules disabled or removed stop.
    /// `only` limits this to one rule. Every outcome is also an event.
    pub async fn reconcile(&self, only: Option<&str>) -> Result<Reconciled> {
        self.reconcile_with(only, None).await
    }

    /// `reconcile`, with the token a command's enabling runs under (a disable cancels it).
    async fn reconcile_with(&self, only: Option<&str>, token: Option<&CancellationToken>) -> Result<Reconciled> {
        let config = self.config();
        let clients = self.clients();
        let mut out = Reconciled::default();
        let mut stopped = false;
        for rule in config.rules.iter().filter(|r| only.is_none_or(|o| o == r.id)) {
            let state = self.store.rule_state(&rule.id)?;
            let active = state.as_ref().is_some_and(|s| s.state == "enabled");
            if rule.enabled {
                let same_scope = state.as_ref().is_some_and(|s| s.scope == rule.scope_signature());
                if active && same_scope {
                    continue;
                }
                let token = token.cloned().unwrap_or_else(|| self.rule_token(&rule.id));
                let refusals = tokio::select! {
                    r = preflight::check_rule(&clients, rule) => r,
                    _ = token.cancelled() => vec![Refusal {
                        rule: rule.id.clone(),
                        message: "the rule was disabled while it was being enabled".into(),
                    }],
                };
                if !refusals.is_empty() {
                    self.emit(Event::RuleRefused {
                        rule: rule.id.clone(),
                        reasons: refusals.iter().map(|r| r.message.clone()).collect(),
                    });
                    out.refused.extend(refusals);
                    continue;
                }
                if active {
                    // Buckets or prefixes changed under an enabled rule: start it afresh.
                    self.stop_rule(&rule.id, "disabled").await?;
                    stopped = true;
                    let m = format!(
                        "rule {:?}: its buckets or prefixes changed, so it starts again from a new enable point",
                        rule.id
                    );
                    self.emit(Event::Notice { message: m.clone() });
                    out.messages.push(m);
                }
                // A rule enabled for the first time (or whose first enabling never finished)
                // with `historical` migrates what exists: one listing feeds both its baseline and
                // the migration.
                let migrate = rule.historical && state.as_ref().is_none_or(|s| s.enable_point.is_none());
                let Enabled {
                    enable_point,
                    existing,
                    migration,
                    listed,
                } = match self.enable_rule(rule, &token, migrate).await {
                    Ok(v) => v,
                    Err(e) => {
                        let reason = format!("{e:#}");
                        self.emit(Event::RuleRefused {
                            rule: rule.id.clone(),
                            reasons: vec![reason.clone()],
                        });
                        out.refused.push(Refusal {
                            rule: rule.id.clone(),
                            message: reason,
                        });
                        continue;
                    }
                };
                let mut message = format!(
                    "rule {:?} enabled at {} ({existing} versions already in scope are not replicated in real time)",
                    rule.id,
                    rfc3339(enable_point)
                );
                if let Some(off) = state.as_ref().and_then(|s| s.disabled_at) {
                    message.push_str(&format!(
                        "\nrule {:?}: writes made while it was disabled (since {}), and the copies its disabling dropped from the queue, are not replicated; run `crr migrate start {}` to catch up",
                        rule.id,
                        rfc3339(off),
                        rule.id
                    ));
                }
                self.emit(Event::RuleEnabled {
                    rule: rule.id.clone(),
                    enable_point,
                    baseline: existing as u64,
                    message: message.clone(),
                });
                out.messages.extend(message.lines().map(str::to_string));
                out.listed.insert(rule.id.clone(), listed);
                if let Some(m) = migration {
                    let message = control::migration_started(rule);
                    let state = match self.store.migration(m)? {
                        Some(m) => self.store.migration_counts(&m).state(),
                        None => "listing",
                    };
                    self.emit(Event::MigrationChanged {
                        rule: rule.id.clone(),
                        migration: m,
                        state: state.to_string(),
                        message: message.clone(),
                    });
                    out.messages.extend(message.lines().map(str::to_string));
                }
            } else if state
                .as_ref()
                .is_some_and(|s| s.state == "enabled" || s.state == "enabling")
            {
                let (_, _, m) = self.stop_rule(&rule.id, "disabled").await?;
                out.messages.push(m);
                stopped = true;
            }
        }
        if only.is_none() {
            for (id, state) in self.store.rule_ids()? {
                if (state == "enabled" || state == "enabling") && config.rule(&id).is_none() {
                    let (_, _, m) = self.stop_rule(&id, "deleted").await?;
                    out.messages.push(m);
                    stopped = true;
                }
            }
        }
        if stopped {
            self.sweep_uploads().await;
        }
        Ok(out)
    }

    /// Records a new enable point: every version that exists now is part of the baseline and is
    /// never replicated in real time; versions not in the baseline are new. With `migrate`, the
    /// same listing queues a migration of what exists. Returns the enable point, the size of the
    /// baseline and the migration. A disable while the baseline is listed cancels it.
    async fn enable_rule(&self, rule: &Rule, token: &CancellationToken, migrate: bool) -> Result<Enabled> {
        if token.is_cancelled() {
            anyhow::bail!("rule {:?} was disabled while it was being enabled", rule.id);
        }
        let generation = self
            .store
            .begin_enable(&rule.id, &rule.scope_signature(), &rule.destination.to_string())?;
        let migration = if migrate {
            Some(self.first_migration(rule)?)
        } else {
            None
        };
        let clients = self.clients();
        let started = now_ms();
        let listing = async {
            let src = clients.get(&rule.source.endpoint)?;
            match migration {
                Some(id) => {
                    let dst = clients.get(&rule.destination.endpoint)?;
                    migrate::list_with_baseline((src, dst), rule, &self.store, generation, id, || {
                        self.work.notify_waiters()
                    })
                    .await
                }
                None => scan::baseline(src, rule, generation, &self.store).await,
            }
        };
        let listed = tokio::select! {
            r = listing => r,
            _ = token.cancelled() => {
                // Whoever cancelled stopped the rule; make sure no half-enabled state is left.
                if let Ok(Some(s)) = self.store.rule_state(&rule.id)
                    && s.state == "enabling"
                    && s.generation == generation
                {
                    self.store.disable(&rule.id, "disabled")?;
                }
                anyhow::bail!("rule {:?} was disabled or changed while its baseline was being listed", rule.id)
            }
        };
        let existing = match listed {
            Ok(n) => n,
            Err(e) => {
                // The next enabling starts a migration afresh: none is left half-listed. Its
                // copies already under way (they start with the listing's first page) stop.
                if let Some(id) = migration {
                    self.store.cancel_migration(id)?;
                    self.abort_migration_copies(id);
                }
                return Err(e);
            }
        };
        let enable_point = now_ms();
        if !self.store.finish_enable(&rule.id, generation, enable_point)? {
            anyhow::bail!("rule {:?} was disabled or changed while it was being enabled", rule.id);
        }
        self.work.notify_waiters();
        Ok(Enabled {
            enable_point,
            existing,
            migration,
            listed: (generation, started),
        })
    }

    /// Aborts the copies of migration `id` under way: it was cancelled.
    pub(super) fn abort_migration_copies(&self, id: i64) {
        for (_, m, token) in lock(&self.running).values() {
            if *m == Some(id) {
                token.cancel();
            }
        }
    }

    /// Creates the migration of a rule's first enabling. One left by an earlier enabling that
    /// never finished (a crash while it listed) is cancelled first: its tasks belong to an
    /// older generation.
    fn first_migration(&self, rule: &Rule) -> Result<i64> {
        loop {
            match self.store.create_migration(&rule.id, rule.overwrite.as_str())? {
                Ok(id) => return Ok(id),
                Err(old) => {
                    self.store.cancel_migration(old.id)?;
                }
            }
        }
    }

    /// Stops a rule: drops its queue, aborts its in-flight copies, ends its enabling or scan,
    /// and aborts the multipart uploads it left. Returns (tasks dropped, copies aborted, message).
    async fn stop_rule(&self, id: &str, new_state: &str) -> Result<(u64, u64, String)> {
        if let Some(t) = lock(&self.rule_tokens).remove(id) {
            t.cancel();
        }
        let disabled = self.store.disable(id, new_state)?;
        let tokens: Vec<CancellationToken> = lock(&self.running)
            .values()
            .filter(|(r, _, _)| r == id)
            .map(|(_, _, t)| t.clone())
            .collect();
        for t in &tokens {
            t.cancel();
        }
        let aborted = tokens.len() as u64;
        let message = if new_state == "deleted" {
            format!(
                "rule {id:?} is no longer in the config: stopped ({} task(s) dropped, {aborted} copy(ies) aborted); replicated data stays",
                disabled.dropped
            )
        } else {
            format!(
                "rule {id:?} disabled: {} queued task(s) dropped, {aborted} in-flight copy(ies) aborted; replicated data stays",
                disabled.dropped
            )
        };
        self.emit(Event::RuleDisabled {
            rule: id.to_string(),
            dropped: disabled.dropped,
            aborted,
            message: message.clone(),
        });
        Ok((disabled.dropped, aborted, message))
    }

    /// Aborts every multipart upload that a task which will never run again left open on its
    /// destination (dropped, cancelled, skipped or killed), and forgets it once aborted. Runs
    /// at start, after stops, and at the end of a run, so an abort cut off by a crash is retried.
    pub async fn sweep_uploads(&self) {
        let Ok(left) = self.store.orphan_uploads() else {
            return;
        };
        let clients = self.clients();
        for (task, destination) in left {
            let Some((ep, bucket)) = destination.split_once('/') else {
                continue;
            };
            let Ok(dst) = clients.get(ep) else {
                continue;
            };
            let Some(upload) = &task.upload_id else {
                continue;
            };
            match copy::abort_upload(dst, bucket, &task.key, upload).await {
                Ok(()) => {
                    if let Err(e) = self.store.set_upload(task.id, None) {
                        tracing::warn!(key = %task.key, error = %format!("{e:#}"), "could not forget an aborted upload");
                    }
                }
                Err(e) => tracing::warn!(key = %task.key, error = %e, "could not abort a multipart upload"),
            }
        }
    }

    /// Reads the versioning of the rule's two buckets, holds the rule's copies (in the store, so
    /// every reader sees it) while either is not Enabled, and lets them run again once both are.
    /// Returns why the rule is held. A bucket whose versioning cannot be read (endpoint down)
    /// changes nothing: copies then fail and back off on their own.
    pub(super) async fn versioning_halt(&self, rule: &Rule, clients: &Clients) -> Option<String> {
        let sides = [("source", &rule.source), ("destination", &rule.destination)];
        let mut s3 = Vec::with_capacity(2);
        for (_, b) in sides {
            let Ok(c) = clients.get(&b.endpoint) else {
                return None;
            };
            s3.push(c);
        }
        // Both at once: the two buckets are often regions apart.
        let states = tokio::join!(
            s3[0].versioning(&rule.source.bucket),
            s3[1].versioning(&rule.destination.bucket)
        );
        let mut reasons = Vec::new();
        for ((role, b), state) in sides.into_iter().zip([states.0, states.1]) {
            match state {
                Ok(status) if status == "Enabled" => {}
                Ok(status) => reasons.push(format!(
                    "versioning is {} on the {role} bucket {b}: copies are held until it is Enabled again \
                     (`aws s3api put-bucket-versioning --bucket {} --versioning-configuration Status=Enabled`); \
                     nothing is deleted meanwhile",
                    if status.is_empty() { "off".to_string() } else { status },
                    b.bucket
                )),
                // Unknown now: the reason recorded stands (none when the rule runs).
                Err(_) => return self.store.rule_state(&rule.id).ok().flatten().and_then(|s| s.halted),
            }
        }
        let reason = (!reasons.is_empty()).then(|| reasons.join("; "));
        match self.store.set_halted(&rule.id, reason.as_deref()) {
            Ok(true) => match &reason {
                Some(r) => {
                    tracing::warn!(rule = %rule.id, "rule held: {r}");
                    self.emit(Event::RuleHalted {
                        rule: rule.id.clone(),
                        reason: r.clone(),
                    });
                }
                None => {
                    self.emit(Event::RuleResumed { rule: rule.id.clone() });
                    self.work.notify_waiters();
                }
            },
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(rule = %rule.id, error = %format!("{e:#}"), "could not record the rule's versioning hold")
            }
        }
        reason
    }

    /// Reads the versioning state of every bucket the rules use, for the snapshot.
    /// Every endpoint's buckets (as many as `LISTED_BUCKETS`) and those the rules use.
    async fn probe_versioning(&self) {
        let config = self.config();
        let clients = self.clients();
        let mut wanted: Vec<(String, String)> = Vec::new();
        for ep in &config.endpoints {
            if let Ok(s3) = clients.get(&ep.name)
                && let Ok(names) = s3.list_buckets(LISTED_BUCKETS).await
            {
                wanted.extend(names.into_iter().map(|b| (ep.name.clone(), b)));
            }
        }
        for b in config.rules.iter().flat_map(|r| [&r.source, &r.destination]) {
            wanted.push((b.endpoint.clone(), b.bucket.clone()));
        }
        let mut seen = HashSet::new();
        for (endpoint, bucket) in wanted {
            if !seen.insert((endpoint.clone(), bucket.clone())) {
                continue;
            }
            let state = match clients.get(&endpoint) {
                Ok(s3) => s3.versioning(&bucket).await.map_err(|e| e.message),
                Err(e) => Err(e.message),
            };
            lock(&self.versioning).insert((endpoint, bucket), state);
        }
        lock(&self.versioning).retain(|k, _| seen.contains(k));
    }

    fn record_failure(&self, task: &Task, reason: &str) {
        let mut f = lock(&self.failures);
        if f.len() >= RECENT_FAILURES {
            f.pop_front();
        }
        f.push_back(Failure {
            task_id: task.id,
            rule_id: task.rule_id.clone(),
            key: task.key.clone(),
            size: task.size,
            reason: reason.to_string(),
            at: now_ms(),
        });
    }
}

/// What enabling a rule recorded.
struct Enabled {
    enable_point: i64,
    /// Versions in the baseline.
    existing: usize,
    /// The migration its listing queued.
    migration: Option<i64>,
    /// (generation, when the listing began).
    listed: (i64, i64),
}
