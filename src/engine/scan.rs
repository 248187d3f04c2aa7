//! The change feed: listing a rule's scope with ListObjectVersions and queueing every version
//! (and delete marker) the rule has not seen. Versions are recognised by id, never by time, so
//! writes that share a second with the enable point or with a scan are neither missed nor
//! queued twice.

use crate::config::{Operations, Rule};
use crate::s3::{S3, VersionEntry, chronological};
use crate::store::{NewChange, Store, TaskKind, now_ms};
use anyhow::Result;

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
