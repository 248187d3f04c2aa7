//! The copy workers and the loops that drive them: each worker claims the next runnable task
//! from the durable queue and runs it to an outcome (done, skipped, retried later, failed),
//! publishing events; `run_once` and `serve` are the two ways to run them.

use super::{Core, Event, copy, lock, migrate};
use crate::config::{Operations, Overwrite, Rule};
use crate::engine::RunSummary;
use crate::engine::copy::{CopyCtx, CopyError};
use crate::engine::progress::TaskProgress;
use crate::s3::S3;
use crate::store::{KeyTasks, NewChange, Start, Task, TaskKind, blocking, now_ms};
use anyhow::{Context, Result};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long in-flight copies may finish after a stop was asked for; then they are aborted and
/// left resumable.
pub(super) const GRACE: Duration = Duration::from_secs(10);
/// How often a long-running engine forgets the tasks nothing needs any more.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Told what a run's own reconciling did, once it is done.
pub(super) type Applied = Box<dyn FnOnce(&super::Reconciled) + Send>;

impl Core {
    /// Runs one task to its outcome. A copy that succeeds claims the next task in the same
    /// transaction that records it, and returns it: the caller runs it next.
    async fn run_task(&self, task: Task) -> Result<Option<Task>> {
        let config = self.config();
        let clients = self.clients();
        let Some(rule) = config.rule(&task.rule_id) else {
            self.store.skip(task.id, "the rule is no longer in the config")?;
            return Ok(None);
        };
        if task.kind == TaskKind::Delete && rule.operations == Operations::Put {
            self.store
                .skip(task.id, "the rule replicates no deletes (operations = \"put\")")?;
            return Ok(None);
        }
        let (src, dst) = match (
            clients.get(&rule.source.endpoint),
            clients.get(&rule.destination.endpoint),
        ) {
            (Ok(s), Ok(d)) => (s, d),
            (Err(e), _) | (_, Err(e)) => {
                self.store.fail(task.id, &e.message)?;
                self.record_failure(&task, &e.message);
                return Ok(None);
            }
        };
        // Serving, an endpoint that is down is probed by one task at a time, at growing
        // intervals; the others wait for it without spending their attempts. (`run --once`
        // spends them, and reports the tasks failed when the endpoint stays down.)
        let serving = self.serving.load(Ordering::SeqCst);
        if serving {
            for endpoint in [&rule.source.endpoint, &rule.destination.endpoint] {
                if let Err(at) = self.health.admit(endpoint) {
                    let why = self.unreachable_reason(endpoint);
                    self.store.wait_for_endpoint(task.id, &why, at)?;
                    return Ok(None);
                }
            }
        }
        let token = CancellationToken::new();
        lock(&self.running).insert(task.id, (rule.id.clone(), task.migration_id, token.clone()));
        // A disable or cancel that ran between the claim and the line above could not see this
        // task's token: ask the store whether the task is still ours to run.
        // A task claimed as the last copy was recorded may also have waited for that copy's
        // checks, which can hold its rule (the destination stopped versioning, say).
        let check = self.store.may_start(&task)?;
        match check.start {
            Start::Go => {}
            Start::Held => {
                lock(&self.running).remove(&task.id);
                self.store.unclaim(task.id)?;
                return Ok(None);
            }
            Start::Dropped => {
                lock(&self.running).remove(&task.id);
                self.abort_open_upload(&task, dst, &rule.destination.bucket).await;
                return Ok(None);
            }
            Start::Superseded => {
                lock(&self.running).remove(&task.id);
                // An upload an earlier attempt left open would be orphaned on the destination.
                self.abort_open_upload(&task, dst, &rule.destination.bucket).await;
                self.store
                    .skip(task.id, "a newer change of this key was already replicated")?;
                return Ok(None);
            }
        }
        let overwrite = check
            .overwrite
            .map(|o| Overwrite::parse(&o).unwrap_or(Overwrite::IfDifferent));
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
            // Boxed: a copy's future is about 12 KB, and held inline it would be copied into
            // this block and again into the select below, once per task.
            Box::pin(ctx.run(&task)).await.map(Ok)
        };
        let outcome = tokio::select! {
            r = work => Some(r),
            _ = token.cancelled() => None,
            _ = self.hard_stop.cancelled() => None,
        };
        lock(&self.running).remove(&task.id);
        self.progress.finish(task.id);
        let mut next = None;
        match outcome {
            Some(Ok(Err(why))) => {
                // Left alone by the overwrite policy: skipped, and processed for the migration's progress.
                self.store.skip(task.id, &why)?;
                self.abort_open_upload(&task, dst, &rule.destination.bucket).await;
            }
            Some(Ok(Ok(done))) => {
                let dest_version = done.dest_version.as_deref();
                // No version kept: the next claim waits for the versioning check below.
                let unversioned = dest_version.is_none_or(|v| v == "null");
                let key_tasks = if self.draining.is_cancelled() || unversioned {
                    self.store.complete(&task, dest_version, done.bytes)?
                } else {
                    let recorded = self
                        .store
                        .complete_and_claim_grouped(&task, dest_version.map(str::to_owned), done.bytes, now_ms())
                        .await;
                    match recorded {
                        Ok((key_tasks, claimed)) => {
                            next = claimed;
                            key_tasks
                        }
                        // The copy is recorded on its own rather than undone with the claim.
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "could not claim the next task");
                            self.store.complete(&task, dest_version, done.bytes)?
                        }
                    }
                };
                {
                    let mut n = lock(&self.replicated_now);
                    n.0 += 1;
                    n.1 += done.bytes;
                }
                tracing::info!(rule = %rule.id, key = %task.key, version = %task.version_id, bytes = done.bytes, "replicated");
                // A failure that a retry has since mended is no longer news.
                lock(&self.failures).retain(|f| f.task_id != task.id);
                let _ = self.events.send(Event::TaskDone {
                    task: task.id,
                    rule: rule.id.clone(),
                    key: task.key.clone(),
                    size: done.bytes,
                    kind: match task.kind {
                        TaskKind::Put => "put".into(),
                        TaskKind::Delete => "delete-marker".into(),
                    },
                    migration: task.migration_id,
                });
                if unversioned {
                    // The destination kept no version of this write: is it still versioning?
                    self.versioning_halt(rule, &clients).await;
                }
                self.check_drained(rule, &task, key_tasks, src, dst).await;
            }
            Some(Err(CopyError::Gone(why))) if listed_but_unserved(src, rule, &task).await => {
                let why = format!(
                    "{why}, yet the source still lists it, under a key with U+FFFD where its listing \
                     could not carry a character (a control character, say): crr cannot name the object \
                     to read it, so it is not replicated. Rename the object on the source to a key \
                     without control characters, and the new key replicates"
                );
                self.fail_task(rule, &task, &why, dst).await?;
            }
            Some(Err(CopyError::Gone(why))) => {
                tracing::info!(rule = %rule.id, key = %task.key, "skipped: {why}");
                self.store.skip(task.id, &why)?;
                self.abort_open_upload(&task, dst, &rule.destination.bucket).await;
            }
            Some(Err(CopyError::Retry(why)))
                if serving
                    && let Some(down) = [&rule.source.endpoint, &rule.destination.endpoint]
                        .into_iter()
                        .find(|e| self.health.is_down(e)) =>
            {
                let at = self.health.next_probe(down);
                tracing::info!(rule = %rule.id, key = %task.key, endpoint = %down, "endpoint unreachable: waiting for it: {why}");
                self.store.wait_for_endpoint(task.id, &why, at)?;
            }
            Some(Err(CopyError::Retry(why))) => {
                if task.attempts >= engine_cfg.max_attempts {
                    self.fail_task(rule, &task, &why, dst).await?;
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
        if task.migration_id.is_none() {
            // Only real-time changes move the last sync point.
            if let Err(e) = self.store.update_sync_point(&rule.id) {
                if let Some(t) = next {
                    self.give_back(t.id, false);
                }
                return Err(e);
            }
        }
        Ok(next)
    }

    /// Returns a claimed task to the queue; if the store refuses, as soon as it takes writes
    /// again. A task that `started` is marked interrupted (its write may have landed); one that
    /// did not goes back as it was.
    fn give_back(&self, id: i64, started: bool) {
        let back = if started {
            self.store.release(id)
        } else {
            self.store.unclaim(id)
        };
        if back.is_err() {
            lock(&self.unreleased).push(id);
        }
    }

    /// Why a task waits for an endpoint, for the queue's listing.
    fn unreachable_reason(&self, endpoint: &str) -> String {
        let h = self.health.get(endpoint);
        format!(
            "waiting for endpoint {endpoint:?}, unreachable since {}: {}",
            h.down_since.map(crate::store::rfc3339).unwrap_or_else(|| "-".into()),
            h.last_error.unwrap_or_default()
        )
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
        // The task the last copy claimed as it was recorded.
        let mut next: Option<Task> = None;
        loop {
            if self.draining.is_cancelled() {
                if let Some(t) = next {
                    self.give_back(t.id, false);
                }
                return;
            }
            let claimed = match next.take() {
                Some(t) => {
                    // What could not be given back goes now, or (kept) on a later turn.
                    let _ = self.release_unreleased();
                    Ok(Some(t))
                }
                None => self
                    .release_unreleased()
                    .and_then(|()| blocking(|| self.store.claim(now_ms()))),
            };
            if claimed.is_ok() && self.store_failing.swap(false, Ordering::SeqCst) {
                self.emit(Event::Notice {
                    message: "the state database takes writes again: copies resume".into(),
                });
            }
            match claimed {
                Ok(Some(task)) => {
                    let id = task.id;
                    match self.run_task(task).await {
                        Ok(claimed) => next = claimed,
                        Err(e) => {
                            self.store_trouble(&e);
                            // Give it back (it stays interrupted) rather than leave it running.
                            lock(&self.running).remove(&id);
                            self.progress.finish(id);
                            self.give_back(id, true);
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
                Ok(None) => {
                    if until_idle
                        && self.running_count() == 0
                        && self.listing_count.load(Ordering::SeqCst) == 0
                        && self.store.unfinished().unwrap_or(1) == 0
                    {
                        // The others need not wait for their next look to see it.
                        self.work.notify_waiters();
                        return;
                    }
                    tokio::select! {
                        _ = self.work.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = self.draining.cancelled() => return,
                    }
                }
                Err(e) => {
                    self.store_trouble(&e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Records a task as failed, says so, and aborts its upload: a retry starts afresh, and no
    /// parts stay billed meanwhile.
    async fn fail_task(&self, rule: &Rule, task: &Task, why: &str, dst: &S3) -> Result<()> {
        tracing::warn!(rule = %rule.id, key = %task.key, attempts = task.attempts, "failed: {why}");
        self.store.fail(task.id, why)?;
        self.record_failure(task, why);
        let _ = self.events.send(Event::TaskFailed {
            task: task.id,
            rule: rule.id.clone(),
            key: task.key.clone(),
            size: task.size,
            reason: why.to_string(),
        });
        self.abort_open_upload(task, dst, &rule.destination.bucket).await;
        Ok(())
    }

    /// Gives back to the queue the tasks whose outcome could not be written.
    fn release_unreleased(&self) -> Result<()> {
        let ids = std::mem::take(&mut *lock(&self.unreleased));
        for (i, id) in ids.iter().enumerate() {
            if let Err(e) = self.store.release(*id) {
                lock(&self.unreleased).extend(&ids[i..]);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Says once, while it lasts, that the state database refuses work (full or read-only
    /// state directory, say); the error goes to the log every time.
    fn store_trouble(&self, e: &anyhow::Error) {
        tracing::error!(error = %format!("{e:#}"), "state store error");
        if !self.store_failing.swap(true, Ordering::SeqCst) {
            self.emit(Event::Notice {
                message: format!(
                    "the state database in {} cannot be written ({e:#}): no new copy starts until it \
                     can; nothing queued is lost. Free space in (or fix the permissions of) the state directory",
                    self.store.dir.display()
                ),
            });
        }
    }

    fn running_count(&self) -> usize {
        lock(&self.running).len()
    }

    fn spawn_workers(self: &Arc<Self>, until_idle: bool) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.config().engine.workers)
            .map(|_| tokio::spawn(self.clone().worker(until_idle)))
            .collect()
    }

    /// Catches every enabled rule up: one scan (beside the copies), and every queued task to its
    /// end.
    /// With `reconcile`, the run first reconciles the config (beside the copies, see
    /// `Engine::reconcile_and_run_once`) and tells it what that did.
    pub(crate) async fn run_once(
        self: Arc<Self>,
        listed: std::collections::HashMap<String, (i64, i64)>,
        reconcile: Option<Applied>,
    ) -> Result<RunSummary> {
        let before = *lock(&self.replicated_now);
        self.handle();
        self.sweep_uploads().await;
        // Asked to stop (a signal, or `Command::Shutdown`): nothing new starts, copies in
        // flight get the grace period, then are aborted and left resumable.
        let stopper = {
            let core = self.clone();
            tokio::spawn(async move {
                core.shutdown.cancelled().await;
                core.draining.cancel();
                core.work.notify_waiters();
                tokio::time::sleep(GRACE).await;
                core.hard_stop.cancel();
            })
        };
        // The scan runs beside the copies, not before them: on a large scope its listing takes
        // as long as copying the migration's first pages. Workers stay until it is done (it
        // counts as a listing), and claims put what it queues ahead of migration tasks.
        self.listing_count.fetch_add(1, Ordering::SeqCst);
        self.spawn_listers();
        let workers = self.spawn_workers(true);
        let mut reconciled = None;
        let scanned = async {
            let mut listed = listed;
            if let Some(applied) = reconcile {
                let rec = self.reconcile(None).await?;
                applied(&rec);
                listed = rec.listed.clone();
                reconciled = Some(rec);
            }
            let (queued, mut errors, held) = self.scan_rules(&listed).await;
            errors.extend(held);
            anyhow::Ok((queued, errors))
        };
        let scanned = tokio::select! {
            r = scanned => r,
            _ = self.shutdown.cancelled() => Ok((0, Vec::new())),
        };
        if scanned.is_err() {
            // Reconciling failed (the store, say): nothing new starts, copies under way end.
            self.draining.cancel();
        }
        self.listing_count.fetch_sub(1, Ordering::SeqCst);
        self.work.notify_waiters();
        for w in workers {
            w.await.context("a copy worker panicked")?;
        }
        stopper.abort();
        let (queued, mut scan_errors) = scanned?;
        scan_errors.extend(std::mem::take(&mut *lock(&self.listing_errors)));
        let config = self.config();
        for rule in &config.rules {
            self.store.update_sync_point(&rule.id)?;
        }
        self.sweep_uploads().await;
        self.prune();
        // The sampler says what ended (a migration completed) before the run does.
        self.sample_now.sample(Duration::from_secs(1)).await;
        let after = *lock(&self.replicated_now);
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
            reconciled,
        })
    }

    pub(crate) async fn serve(self: Arc<Self>, shutdown: CancellationToken) -> Result<()> {
        self.serving.store(true, Ordering::SeqCst);
        self.handle();
        self.sweep_uploads().await;
        let workers = self.spawn_workers(false);
        tokio::spawn(super::outage::run(Arc::downgrade(&self), self.draining.clone()));
        // Scans run on their own, so that a long one never delays a command.
        let scanner = tokio::spawn(self.clone().scan_each_rule(self.draining.clone()));
        let mut pruned = Instant::now();
        loop {
            self.spawn_listers();
            if pruned.elapsed() > PRUNE_EVERY {
                pruned = Instant::now();
                self.prune();
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
        tracing::info!("shutting down: waiting for in-flight copies");
        self.draining.cancel();
        scanner.abort();
        self.work.notify_waiters();
        let grace = tokio::time::sleep(GRACE);
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

    fn prune(&self) {
        match self.store.prune_tasks() {
            Ok(0) => {}
            Ok(n) => tracing::info!(tasks = n, "forgot finished tasks nothing needs any more"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "could not prune finished tasks"),
        }
    }

    /// After a key's last queued change is replicated, checks that the destination's latest
    /// version is crr's replica of the source's latest, and queues the source's latest again if
    /// it is not. Servers may list versions in an order other than the order they became latest
    /// (AWS orders multipart versions by upload initiation), so per-key order alone cannot
    /// promise this. Only keys with more than one change in this generation are checked.
    async fn check_drained(&self, rule: &Rule, task: &Task, key_tasks: KeyTasks, src: &S3, dst: &S3) {
        if key_tasks.unfinished > 0 || key_tasks.total < 2 {
            return;
        }
        let latest = match head_latest(src, &rule.source.bucket, &task.key).await {
            Ok(Latest::Version(v)) => v,
            // A delete marker is latest: under "all" the destination must hide the key too.
            Ok(Latest::DeleteMarker(Some(marker))) if rule.operations == Operations::All => NewChange {
                queue: true,
                kind: TaskKind::Delete,
                key: task.key.clone(),
                version_id: marker,
                size: 0,
                etag: String::new(),
                source_time: 0,
                dest_absent: false,
            },
            _ => return,
        };
        if latest.version_id == task.version_id {
            // The change just replicated is the latest: the destination has its replica on top.
            return;
        }
        let Ok(Some(replica)) = self
            .store
            .replica_of(&rule.id, &task.key, &latest.version_id, task.generation)
        else {
            // Not one crr replicated (new, not scanned yet, or from before the enable point).
            return;
        };
        let dest = match head_latest(dst, &rule.destination.bucket, &task.key).await {
            Ok(d) => d,
            Err(()) => return,
        };
        let in_place = match (&latest.kind, &dest) {
            (TaskKind::Put, Latest::Version(d)) => replica.as_deref() == Some(d.version_id.as_str()),
            (TaskKind::Delete, Latest::DeleteMarker(_) | Latest::Missing) => true,
            _ => false,
        };
        if in_place {
            return;
        }
        tracing::warn!(
            rule = %rule.id, key = %task.key, version = %latest.version_id,
            "the destination's latest version is not the replica of the source's latest: copying it again"
        );
        if let Err(e) = self.store.requeue_version(&rule.id, task.generation, &latest) {
            tracing::error!(error = %format!("{e:#}"), "could not queue the latest version again");
        }
        self.work.notify_waiters();
    }
    /// Starts the listing of every migration that should be listing and is not.
    fn spawn_listers(self: &Arc<Self>) {
        if self.draining.is_cancelled() {
            return;
        }
        let Ok(migrations) = self.store.migrations_to_list() else {
            return;
        };
        for m in migrations {
            if !lock(&self.listing).insert(m.id) {
                continue;
            }
            self.listing_count.fetch_add(1, Ordering::SeqCst);
            let engine = self.clone();
            tokio::spawn(async move {
                if let Err(e) = engine.list_migration(m.id, &m.rule_id).await {
                    let msg = format!("rule {:?}: listing for the migration failed: {e:#}", m.rule_id);
                    tracing::warn!("{msg}");
                    if engine.serving.load(Ordering::SeqCst) {
                        let _ = engine.events.send(Event::Notice { message: msg });
                        if !engine.draining.is_cancelled() {
                            // Serving: the next try comes after a pause, not 4 times a second.
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                    } else {
                        lock(&engine.listing_errors).push(msg);
                    }
                }
                lock(&engine.listing).remove(&m.id);
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
        let dst = clients.get(&rule.destination.endpoint)?;
        let listed = migrate::list((src, dst), rule, &self.store, generation, id, || {
            self.work.notify_waiters()
        })
        .await?;
        if matches!(listed, migrate::Listed::Done) {
            tracing::info!(rule = rule_id, migration = id, "migration listing complete");
        }
        Ok(())
    }
}

/// Whether a version the source no longer serves is still in its listing, under a key with
/// U+FFFD: some servers (SeaweedFS) write that in place of a character XML cannot carry, so the
/// key listed is not the object's. A version that is really gone is not listed. The listing
/// asks for what precedes the first U+FFFD (the server matches a prefix against the real key),
/// and one page of it is looked at.
async fn listed_but_unserved(src: &S3, rule: &Rule, task: &Task) -> bool {
    let Some(at) = task.key.find('\u{FFFD}') else {
        return false;
    };
    if task.kind != TaskKind::Put {
        return false;
    }
    src.list_versions_page(&rule.source.bucket, &task.key[..at], None)
        .await
        .is_ok_and(|page| {
            page.entries
                .iter()
                .any(|e| e.key == task.key && e.version_id == task.version_id)
        })
}

/// What is latest for a key on one side.
enum Latest {
    Version(NewChange),
    /// A delete marker, with its version id when the server says it.
    DeleteMarker(Option<String>),
    Missing,
}

async fn head_latest(s3: &S3, bucket: &str, key: &str) -> Result<Latest, ()> {
    match s3.client.head_object().bucket(bucket).key(key).send().await {
        Ok(h) => Ok(Latest::Version(NewChange {
            queue: true,
            kind: TaskKind::Put,
            key: key.to_string(),
            version_id: h.version_id().unwrap_or("null").to_string(),
            size: h.content_length().unwrap_or(0).max(0) as u64,
            etag: h.e_tag().unwrap_or_default().to_string(),
            source_time: h.last_modified().map(|t| t.secs()).unwrap_or(0),
            dest_absent: false,
        })),
        Err(e) => match e.raw_response() {
            Some(r) if r.status().as_u16() == 404 => {
                let header = |name: &str| r.headers().get(name).map(str::to_string);
                match (header("x-amz-delete-marker").as_deref(), header("x-amz-version-id")) {
                    (Some("true"), Some(version)) => Ok(Latest::DeleteMarker(Some(version))),
                    // Not every server says whether a delete marker hides the key, or which:
                    // the key's listing does.
                    _ => Ok(latest_marker(s3, bucket, key).await),
                }
            }
            _ => Err(()),
        },
    }
}

/// For a key HeadObject did not find: the delete marker on top of it, from the first page of
/// its versions, or `Missing` when none is latest there.
async fn latest_marker(s3: &S3, bucket: &str, key: &str) -> Latest {
    let Ok(page) = s3.list_versions_page(bucket, key, None).await else {
        return Latest::Missing;
    };
    match page.entries.into_iter().find(|e| e.key == key && e.is_latest) {
        Some(e) if e.delete_marker => Latest::DeleteMarker(Some(e.version_id)),
        _ => Latest::Missing,
    }
}

fn backoff(attempt: u32) -> Duration {
    let base = 500u64
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(10))
        .min(60_000);
    let jitter = fastrand::u64(0..=base / 2);
    Duration::from_millis(base / 2 + jitter)
}
