//! The progress sampler: four times a second it builds the `Snapshot` from in-memory counts (the
//! store's tallies, running copies, endpoint health) and publishes it only when it changed. It
//! also turns changes of state it notices (an endpoint lost or back, a migration finished) into
//! events. Migration figures count the bytes of copies in flight and never go backwards.

use super::api::{BucketView, EndpointView, Event, MigrationView, RuleView, RunningCopy, Snapshot};
use super::{Core, lock};
use crate::config::{Config, Operations, Rule};
use crate::store::{MigrationFigures, Store, blocking, now_ms};
use anyhow::Result;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const TICK: Duration = Duration::from_millis(250);
/// Seconds of throughput history kept (the sparkline, and migration throughput).
const HISTORY: usize = 60;

#[derive(Default)]
struct Sampler {
    /// Per running task: bytes done, when, smoothed rate.
    rates: HashMap<i64, (u64, Instant, f64)>,
    /// Bytes moved so far (done + in flight), sampled once a second, for the sparkline.
    moved: VecDeque<u64>,
    last_second: Option<Instant>,
    /// Per migration: (when, bytes done including in flight), over the last minute.
    migration_bytes: HashMap<i64, VecDeque<(Instant, i64)>>,
    /// Per migration: the highest done bytes and percent shown, so they never go backwards.
    best: HashMap<i64, (i64, f64)>,
    endpoints: HashMap<String, Option<bool>>,
    migration_states: HashMap<i64, String>,
    ticks: u64,
}

pub(super) async fn run(core: Weak<Core>, closed: CancellationToken) {
    let mut s = Sampler::default();
    let mut tick = tokio::time::interval(TICK);
    let Some(asked) = core.upgrade().map(|c| c.sample_now.clone()) else {
        return;
    };
    loop {
        let mut answer = None;
        tokio::select! {
            _ = tick.tick() => {}
            a = asked.ask() => answer = Some(a),
            _ = closed.cancelled() => return,
        }
        let Some(core) = core.upgrade() else {
            return;
        };
        if let Err(e) = blocking(|| s.sample(&core)) {
            tracing::warn!(error = %format!("{e:#}"), "could not sample progress");
        }
        if let Some(a) = answer {
            let _ = a.send(());
        }
    }
}

/// Asks the sampler for a sample now (the last of a run, so that what ended is said).
#[derive(Default)]
pub(super) struct SampleNow {
    tx: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    asked: tokio::sync::Notify,
}

impl SampleNow {
    async fn ask(&self) -> tokio::sync::oneshot::Sender<()> {
        loop {
            if let Some(tx) = lock(&self.tx).take() {
                return tx;
            }
            self.asked.notified().await;
        }
    }

    /// Waits (at most `within`) for a sample taken after this call.
    pub(super) async fn sample(&self, within: Duration) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *lock(&self.tx) = Some(tx);
        self.asked.notify_one();
        let _ = tokio::time::timeout(within, rx).await;
    }
}

impl Sampler {
    fn sample(&mut self, core: &Core) -> Result<()> {
        let now = Instant::now();
        let migrations: HashMap<i64, Option<i64>> =
            lock(&core.running).iter().map(|(id, (_, m, _))| (*id, *m)).collect();
        let mut rates = HashMap::new();
        let running: Vec<RunningCopy> = core
            .progress
            .snapshot()
            .into_iter()
            .map(|p| {
                let rate = match self.rates.get(&p.task_id) {
                    Some((bytes, at, rate)) => {
                        let dt = now.duration_since(*at).as_secs_f64().max(0.001);
                        let instant = p.bytes_done.saturating_sub(*bytes) as f64 / dt;
                        0.5 * instant + 0.5 * rate
                    }
                    None => p.bytes_done as f64 / now.duration_since(p.started).as_secs_f64().max(0.25),
                };
                rates.insert(p.task_id, (p.bytes_done, now, rate));
                RunningCopy {
                    task_id: p.task_id,
                    rule_id: p.rule_id.clone(),
                    migration: migrations.get(&p.task_id).copied().flatten(),
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
        self.rates = rates;

        let config = core.config();
        let inflight = inflight_by_migration(&running);
        let ms = now_ms();
        let mut rules = Vec::with_capacity(config.rules.len());
        for rule in &config.rules {
            let (mut view, figures) = rule_view(rule, &core.store, ms, &inflight)?;
            if let (Some(m), Some(f)) = (view.migration.as_mut(), figures) {
                self.steady(m, &f, now);
                let state = m.state.clone();
                let previous = self.migration_states.insert(m.id, state.clone());
                if previous.is_some_and(|p| p != state) && matches!(state.as_str(), "completed" | "failed") {
                    core.emit(Event::MigrationChanged {
                        rule: rule.id.clone(),
                        migration: m.id,
                        state: state.clone(),
                        message: format!(
                            "migration of rule {:?} {state}: {} object(s) copied, {} skipped, {} failed",
                            rule.id, m.done_objects, m.skipped_objects, m.failed_objects
                        ),
                    });
                }
            }
            rules.push(view);
        }

        let endpoints: Vec<EndpointView> = config
            .endpoints
            .iter()
            .map(|ep| {
                let h = core.health.get(&ep.name);
                let before = self.endpoints.insert(ep.name.clone(), h.reachable).flatten();
                match (before, h.reachable) {
                    (Some(true) | None, Some(false)) => core.emit(Event::EndpointUnreachable {
                        endpoint: ep.name.clone(),
                        error: h.last_error.clone().unwrap_or_default(),
                    }),
                    (Some(false), Some(true)) => core.emit(Event::EndpointBack {
                        endpoint: ep.name.clone(),
                    }),
                    _ => {}
                }
                EndpointView {
                    name: ep.name.clone(),
                    region: ep.region.clone(),
                    reachable: h.reachable,
                    last_success: h.last_success,
                    last_error: h.last_error,
                    down_since: h.down_since,
                    failed_attempts: h.failed_attempts,
                }
            })
            .collect();

        // Throughput history: bytes moved per whole second.
        let moved_now: u64 = rules.iter().map(|r| r.replicated_bytes.max(0) as u64).sum::<u64>()
            + running.iter().map(|r| r.bytes_done).sum::<u64>();
        if self
            .last_second
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_second = Some(now);
            self.moved.push_back(moved_now);
            while self.moved.len() > HISTORY + 1 {
                self.moved.pop_front();
            }
        }
        let throughput: Vec<u64> = self
            .moved
            .iter()
            .zip(self.moved.iter().skip(1))
            .map(|(a, b)| b.saturating_sub(*a))
            .collect();

        let versioning = lock(&core.versioning).clone();
        let mut buckets: Vec<BucketView> = Vec::new();
        for r in &config.rules {
            for (side, b) in [("source", &r.source), ("destination", &r.destination)] {
                let use_ = format!("{side} of {}", r.id);
                match buckets
                    .iter_mut()
                    .find(|v| v.endpoint == b.endpoint && v.bucket == b.bucket)
                {
                    Some(v) => v.rules.push(use_),
                    None => {
                        let state = versioning.get(&(b.endpoint.clone(), b.bucket.clone()));
                        buckets.push(BucketView {
                            endpoint: b.endpoint.clone(),
                            bucket: b.bucket.clone(),
                            versioning: state.and_then(|s| s.as_ref().ok().cloned()),
                            error: state.and_then(|s| s.as_ref().err().cloned()),
                            rules: vec![use_],
                        });
                    }
                }
            }
        }
        // The endpoints' other buckets, which no rule uses (yet).
        let mut others: Vec<BucketView> = versioning
            .iter()
            .filter(|((e, b), _)| !buckets.iter().any(|v| v.endpoint == *e && v.bucket == *b))
            .map(|((e, b), state)| BucketView {
                endpoint: e.clone(),
                bucket: b.clone(),
                versioning: state.as_ref().ok().cloned(),
                error: state.as_ref().err().cloned(),
                rules: Vec::new(),
            })
            .collect();
        others.sort_by(|a, b| (&a.endpoint, &a.bucket).cmp(&(&b.endpoint, &b.bucket)));
        buckets.extend(others);
        let fresh = Snapshot {
            buckets,
            rules,
            endpoints,
            recent_failures: lock(&core.failures).iter().cloned().collect(),
            throughput,
            running,
        };
        core.snapshot.send_if_modified(|s| {
            if *s != fresh {
                *s = fresh.clone();
                true
            } else {
                false
            }
        });
        self.ticks += 1;
        if self.ticks.is_multiple_of(4) {
            // For `crr queue` in another process.
            let done: Vec<(i64, u64)> = fresh.running.iter().map(|t| (t.task_id, t.bytes_done)).collect();
            core.store.record_bytes_done(&done)?;
        }
        Ok(())
    }

    /// Keeps a migration's figures from going backwards (a retried copy starts its bytes
    /// again) and measures its throughput over the last minute.
    fn steady(&mut self, m: &mut MigrationView, f: &MigrationFigures, now: Instant) {
        let best = self.best.entry(m.id).or_insert((0, 0.0));
        if m.state != "completed" {
            m.done_bytes = m.done_bytes.max(best.0);
            m.percent = m.percent.max(best.1);
        }
        *best = (m.done_bytes, m.percent);
        let hist = self.migration_bytes.entry(m.id).or_default();
        hist.push_back((now, m.done_bytes + f.skipped_bytes));
        while hist
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(HISTORY as u64))
        {
            hist.pop_front();
        }
        let rate = match (hist.front(), hist.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                (b1 - b0).max(0) as f64 / t1.duration_since(*t0).as_secs_f64().max(1.0)
            }
            _ => 0.0,
        };
        m.throughput_bytes_per_sec = rate.round() as u64;
        m.eta_seconds = eta(m, f.skipped_bytes, rate);
    }
}

fn eta(m: &MigrationView, skipped_bytes: i64, rate: f64) -> Option<u64> {
    if rate <= 0.0 || !m.listing_complete || !(m.state == "running" || m.state == "listing") {
        return None;
    }
    let left = (m.total_bytes - m.done_bytes - skipped_bytes).max(0) as f64;
    Some((left / rate).ceil() as u64)
}

fn inflight_by_migration(running: &[RunningCopy]) -> HashMap<i64, u64> {
    let mut out = HashMap::new();
    for r in running {
        if let Some(m) = r.migration {
            *out.entry(m).or_default() += r.bytes_done;
        }
    }
    out
}

fn ops(o: Operations) -> &'static str {
    match o {
        Operations::All => "all",
        Operations::Put => "put",
    }
}

/// One rule's view from the store's counts, with in-flight bytes added to its migration.
/// Throughput and ETA are left to the caller, which knows how to measure them.
fn rule_view(
    rule: &Rule,
    store: &Store,
    now: i64,
    inflight: &HashMap<i64, u64>,
) -> Result<(RuleView, Option<MigrationFigures>)> {
    let state = store.rule_state(&rule.id)?.unwrap_or_default();
    let tally = store.rule_tally(&rule.id);
    let latest = store.latest_migration(&rule.id)?;
    let mut figures = None;
    let migration = latest.map(|m| {
        let mut f = store.migration_counts(&m);
        let flying = inflight.get(&m.id).copied().unwrap_or(0) as i64;
        f.done_bytes += flying;
        let view = MigrationView {
            id: m.id,
            state: f.state().to_string(),
            percent: f.percent(),
            listing_complete: f.listing_done,
            total_objects: f.total_objects,
            done_objects: f.done_objects,
            total_bytes: f.total_bytes,
            done_bytes: f.done_bytes,
            skipped_objects: f.skipped_objects,
            failed_objects: f.failed_objects,
            started_at: m.started_at,
            throughput_bytes_per_sec: 0,
            eta_seconds: None,
        };
        figures = Some(f);
        view
    });
    let lag_seconds = match (state.state.as_str(), state.last_sync_point) {
        ("enabled", Some(t)) => Some((now - t).max(0) / 1000),
        _ => None,
    };
    let pending = tally.pending();
    Ok((
        RuleView {
            id: rule.id.clone(),
            enabled: rule.enabled,
            state: if state.state.is_empty() {
                "new".into()
            } else if state.state == "enabled" && state.halted.is_some() {
                "error".into()
            } else {
                state.state.clone()
            },
            source: rule.source.to_string(),
            destination: rule.destination.to_string(),
            prefixes: rule.prefixes.clone(),
            operations: ops(rule.operations).into(),
            storage_class: rule.storage_class.clone(),
            overwrite: rule.overwrite.as_str().into(),
            historical: rule.historical,
            enable_point: state.enable_point,
            last_sync_point: state.last_sync_point,
            lag_seconds,
            backlog_objects: pending.objects,
            backlog_bytes: pending.bytes,
            failed: tally.failed.objects,
            replicated_objects: state.replicated_objects,
            replicated_bytes: state.replicated_bytes,
            error: state.halted.clone().filter(|_| state.state == "enabled"),
            migration,
        },
        figures,
    ))
}

/// The snapshot a process without a running engine can give: the same figures from the state
/// store, with migration throughput from the tasks finished in the last minute.
pub fn offline_snapshot(config: &Config, store: &Store) -> Result<Snapshot> {
    let now = now_ms();
    let mut rules = Vec::new();
    for rule in &config.rules {
        let (mut view, _) = rule_view(rule, store, now, &HashMap::new())?;
        if let Some(m) = view.migration.as_mut()
            && let Some(row) = store.migration(m.id)?
        {
            let f = store.migration_figures(&row)?;
            m.throughput_bytes_per_sec = f.throughput(now).round() as u64;
            m.eta_seconds = f.eta_seconds(now);
        }
        rules.push(view);
    }
    // What the last engine on this state directory knew of each endpoint.
    let health = crate::s3::health::load(&store.dir);
    Ok(Snapshot {
        rules,
        endpoints: config
            .endpoints
            .iter()
            .map(|e| {
                let h = health.get(&e.name).cloned().unwrap_or_default();
                EndpointView {
                    name: e.name.clone(),
                    region: e.region.clone(),
                    reachable: h.reachable,
                    last_success: h.last_success,
                    last_error: h.last_error,
                    down_since: h.down_since,
                    failed_attempts: h.failed_attempts,
                }
            })
            .collect(),
        ..Default::default()
    })
}
