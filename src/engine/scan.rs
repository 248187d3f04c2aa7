//! The change feed: listing a rule's scope with ListObjectVersions and queueing every version
//! (and delete marker) the rule has not seen. Versions are recognised by id, never by time, so
//! writes that share a second with the enable point or with a scan are neither missed nor
//! queued twice.
//!
//! Also when the rules are scanned: serving, each on its own schedule, so that a long listing
//! never delays another rule's (`Core::scan_each_rule`); in a run, all at once.

use super::{Core, Event, lock};
use crate::config::{Operations, Rule};
use crate::s3::{S3, VersionEntry, chronological};
use crate::store::{NewChange, Store, TaskKind, now_ms};
use anyhow::Result;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often a scan also prunes the seen set (it costs a write per listed version).
const PRUNE_SEEN_EVERY_MS: i64 = 3_600_000;

/// Lists every version in the rule's scope that `keep` lets through and hands it to `each` one
/// key at a time, all kept versions of a key together (a key's versions may straddle listing
/// pages). Only kept versions are carried from page to page, so a key with millions of
/// versions costs memory only for those kept (for a scan: the ones not seen yet).
async fn list_scope<F, K>(src: &S3, rule: &Rule, mut keep: K, mut each: F) -> Result<()>
where
    F: FnMut(Vec<VersionEntry>) -> Result<()>,
    K: FnMut(&[VersionEntry]) -> Result<Vec<bool>>,
{
    for prefix in rule.scan_prefixes() {
        let mut marker = None;
        let mut carry: Vec<VersionEntry> = Vec::new();
        // Later pages hold older versions of a carried key: keep list positions increasing.
        let mut offset = 0;
        loop {
            let page = src.list_versions_page(&rule.source.bucket, &prefix, marker).await?;
            let count = page.entries.len();
            let in_scope: Vec<VersionEntry> = page
                .entries
                .into_iter()
                .filter(|e| rule.in_scope(&e.key))
                .map(|mut e| {
                    e.list_index += offset;
                    e
                })
                .collect();
            // The last key of a page may go on in the next: remember it before filtering.
            let last_key = in_scope.iter().map(|e| e.key.clone()).max();
            let kept = keep(&in_scope)?;
            let mut entries = std::mem::take(&mut carry);
            entries.extend(in_scope.into_iter().zip(kept).filter(|(_, k)| *k).map(|(e, _)| e));
            offset += count;
            // Versions and markers arrive as two lists; regroup them by key, in key order.
            entries.sort_by(|a, b| a.key.cmp(&b.key));
            let mut start = 0;
            while start < entries.len() {
                let key = entries[start].key.clone();
                let end = start + entries[start..].iter().take_while(|e| e.key == key).count();
                let group = entries[start..end].to_vec();
                if page.next.is_some() && Some(&key) == last_key.as_ref() {
                    // The next page may hold more versions of this key.
                    carry = group;
                } else {
                    each(group)?;
                }
                start = end;
            }
            match page.next {
                Some(m) => marker = Some(m),
                None => {
                    if !carry.is_empty() {
                        each(std::mem::take(&mut carry))?;
                    }
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Records everything in scope now as the rule's baseline. Returns how many versions.
pub async fn baseline(src: &S3, rule: &Rule, generation: i64, store: &Store) -> Result<usize> {
    let mut total = 0;
    // Order does not matter here: each page is recorded as it comes, nothing is carried.
    list_scope(
        src,
        rule,
        |page| {
            let batch: Vec<(String, String)> = page.iter().map(|e| (e.key.clone(), e.version_id.clone())).collect();
            total += batch.len();
            store.add_baseline(&rule.id, generation, &batch)?;
            Ok(vec![false; page.len()])
        },
        |_| Ok(()),
    )
    .await?;
    Ok(total)
}

/// One scan: queues every unseen version of the rule's scope, in write order per key, and
/// records the scan for the last sync point. Returns how many tasks were queued.
///
/// Once in a while (`PRUNE_SEEN_EVERY`) the scan also forgets the versions it has seen that are
/// no longer on the source (deleted for good), so the seen set follows the source instead of
/// growing with every version ever written.
pub async fn scan(src: &S3, rule: &Rule, generation: i64, store: &Store) -> Result<usize> {
    let started = now_ms();
    let mut queued = 0;
    let mut batch: Vec<NewChange> = Vec::new();
    let prune = store
        .seen_pruned_at(&rule.id)?
        .is_none_or(|t| started - t >= PRUNE_SEEN_EVERY_MS);
    if prune {
        store.begin_listing(&rule.id)?;
    }
    let unseen = |page: &[VersionEntry]| {
        if prune {
            store.add_listed(&rule.id, page)?;
        }
        store.unseen(&rule.id, page)
    };
    list_scope(src, rule, unseen, |mut group| {
        chronological(&mut group);
        for e in group {
            batch.push(NewChange {
                // Under "put" a delete marker is only marked seen, never queued.
                queue: !(e.delete_marker && rule.operations == Operations::Put),
                kind: if e.delete_marker {
                    TaskKind::Delete
                } else {
                    TaskKind::Put
                },
                key: e.key,
                version_id: e.version_id,
                size: e.size,
                etag: e.etag,
                source_time: e.last_modified,
                dest_absent: false,
            });
        }
        if batch.len() >= 500 {
            queued += store.queue_new(&rule.id, generation, &batch)?;
            batch.clear();
        }
        Ok(())
    })
    .await?;
    queued += store.queue_new(&rule.id, generation, &batch)?;
    store.record_scan(&rule.id, generation, started, store.max_task_id()?)?;
    if prune {
        // The whole scope was listed: what it did not hold is gone from the source.
        let forgotten = store.prune_seen(&rule.id, generation, started)?;
        if forgotten > 0 {
            tracing::info!(rule = %rule.id, forgotten, "forgot seen versions no longer on the source");
        }
    }
    Ok(queued)
}

/// What one rule's scan came to.
pub(crate) enum RuleScan {
    /// Not enabled (or no longer), stopped while it listed, or its baseline listing counted as
    /// this scan.
    Skipped,
    /// Listed: this many changes were queued.
    Queued(usize),
    /// Held, and why: a bucket is not versioning.
    Held(String),
    /// The listing or its record failed, and why.
    Failed(String),
}

/// How often the serving scanner looks for rules due, enabled or added meanwhile.
const LOOK_AGAIN: Duration = Duration::from_millis(250);

impl Core {
    /// Scans every enabled rule once. Returns (tasks queued, errors, rules held and why). A
    /// held rule is not a failing scan: it says so once when the hold starts.
    pub async fn scan_all(&self) -> (usize, Vec<String>, Vec<String>) {
        self.scan_rules(&HashMap::new()).await
    }

    /// `scan_all`, but a rule whose baseline `listed` names (by id: generation, when its
    /// listing began) is not listed again: that listing is recorded as its scan. The rules are
    /// scanned at once, so that a long listing does not hold up the others.
    pub(crate) async fn scan_rules(&self, listed: &HashMap<String, (i64, i64)>) -> (usize, Vec<String>, Vec<String>) {
        let config = self.config();
        let scans = config
            .rules
            .iter()
            .filter(|r| r.enabled)
            .map(|rule| self.scan_rule(rule, listed.get(&rule.id).copied()));
        let mut queued = 0;
        let mut errors = Vec::new();
        let mut held = Vec::new();
        for scanned in futures::future::join_all(scans).await {
            match scanned {
                RuleScan::Skipped => {}
                RuleScan::Queued(n) => queued += n,
                RuleScan::Held(why) => held.push(why),
                RuleScan::Failed(error) => errors.push(error),
            }
        }
        (queued, errors, held)
    }

    /// Scans one rule, if it is enabled: its changes since the last scan are queued. A rule
    /// whose baseline was `listed` (generation, when its listing began) in this generation
    /// records that listing as its scan instead.
    pub(crate) async fn scan_rule(&self, rule: &Rule, listed: Option<(i64, i64)>) -> RuleScan {
        let clients = self.clients();
        let Ok(Some(state)) = self.store.rule_state(&rule.id) else {
            return RuleScan::Skipped;
        };
        if state.state != "enabled" {
            return RuleScan::Skipped;
        }
        // A run right after the rule's enabling: its baseline was listed a moment ago, and
        // writes since are the next run's. That listing counts as this scan.
        if let Some((generation, started)) = listed
            && generation == state.generation
        {
            let recorded = self
                .store
                .max_task_id()
                .and_then(|max| self.store.record_scan(&rule.id, generation, started, max));
            return match recorded {
                Ok(()) => RuleScan::Skipped,
                Err(e) => RuleScan::Failed(format!("rule {:?}: recording its scan failed: {e:#}", rule.id)),
            };
        }
        // Copies and scans wait while either bucket is not versioning: a source version
        // without an id can change under it, and a destination's unversioned write or delete
        // replaces what was there for good.
        if let Some(reason) = self.versioning_halt(rule, &clients).await {
            return RuleScan::Held(format!("rule {:?}: held: {reason}", rule.id));
        }
        let token = self.rule_token(&rule.id);
        let result = match clients.get(&rule.source.endpoint) {
            Ok(src) => tokio::select! {
                r = scan(src, rule, state.generation, &self.store) => r,
                // Stopped meanwhile: what was listed is not committed (generation guard).
                _ = token.cancelled() => return RuleScan::Skipped,
            },
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(rule = %rule.id, queued = n, "scan found new changes");
                    self.work.notify_waiters();
                }
                if lock(&self.scan_failing).remove(&rule.id) {
                    self.emit(Event::ScanRecovered { rule: rule.id.clone() });
                }
                RuleScan::Queued(n)
            }
            Err(e) => {
                let error = format!("{e:#}");
                if lock(&self.scan_failing).insert(rule.id.clone()) {
                    self.emit(Event::ScanFailed {
                        rule: rule.id.clone(),
                        error: error.clone(),
                    });
                } else {
                    tracing::warn!(rule = %rule.id, error = %error, "scan failed again");
                }
                RuleScan::Failed(format!("rule {:?}: scanning {} failed: {error}", rule.id, rule.source))
            }
        }
    }

    /// Serving: scans each enabled rule every `scan_interval` after its last scan ended, each
    /// rule on its own, so that a rule with a long listing (a big bucket, a slow endpoint)
    /// never delays the scans of the others. A rule whose scans keep failing (its source is
    /// down) is scanned less and less often, up to every 10 s or the scan interval if that is
    /// longer. A held rule's scan is not a failure.
    pub(super) async fn scan_each_rule(self: Arc<Self>, stop: CancellationToken) {
        // Per rule: when its next scan is due, and how many of its scans failed in a row.
        let mut due: HashMap<String, (Instant, u32)> = HashMap::new();
        let mut scans: JoinSet<(String, RuleScan)> = JoinSet::new();
        let mut scanning: HashMap<tokio::task::Id, String> = HashMap::new();
        loop {
            let config = self.config();
            let now = Instant::now();
            due.retain(|id, _| config.rules.iter().any(|r| r.enabled && r.id == *id));
            for rule in config.rules.iter().filter(|r| r.enabled) {
                if scanning.values().any(|id| *id == rule.id) || due.get(&rule.id).is_some_and(|(at, _)| *at > now) {
                    continue;
                }
                let (engine, rule) = (self.clone(), rule.clone());
                let id = rule.id.clone();
                let task = scans.spawn(async move {
                    let scanned = engine.scan_rule(&rule, None).await;
                    (rule.id, scanned)
                });
                scanning.insert(task.id(), id);
            }
            // Rules added or enabled meanwhile are seen within this.
            let next = due
                .iter()
                .filter(|(id, _)| !scanning.values().any(|s| s == *id))
                .map(|(_, (at, _))| *at)
                .min()
                .unwrap_or(now + LOOK_AGAIN)
                .min(now + LOOK_AGAIN);
            tokio::select! {
                Some(done) = scans.join_next_with_id() => {
                    let (task, rule, failed) = match done {
                        Ok((task, (rule, scanned))) => {
                            let failed = match scanned {
                                RuleScan::Failed(e) => {
                                    tracing::warn!("{e}");
                                    true
                                }
                                _ => false,
                            };
                            (task, rule, failed)
                        }
                        // A scan that panicked counts as failed.
                        Err(e) => {
                            let rule = scanning.get(&e.id()).cloned().unwrap_or_default();
                            tracing::warn!(rule = %rule, "a scan ended abnormally: {e}");
                            (e.id(), rule, true)
                        }
                    };
                    scanning.remove(&task);
                    let failing = if failed { due.get(&rule).map_or(0, |d| d.1).saturating_add(1) } else { 0 };
                    let interval = self.config().engine.scan_interval;
                    let wait = if failing == 0 {
                        interval
                    } else {
                        interval
                            .saturating_mul(1 << failing.min(6))
                            .min(Duration::from_secs(10).max(interval))
                    };
                    due.insert(rule, (Instant::now() + wait, failing));
                }
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}
