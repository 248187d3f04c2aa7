//! The change feed: listing a rule's scope with ListObjectVersions and queueing every version
//! (and delete marker) the rule has not seen. Versions are recognised by id, never by time, so
//! writes that share a second with the enable point or with a scan are neither missed nor
//! queued twice.

use crate::config::{Operations, Rule};
use crate::s3::{S3, VersionEntry, chronological};
use crate::store::{NewChange, Store, TaskKind, now_ms};
use anyhow::Result;

/// Lists every version in the rule's scope and hands it to `each` one key at a time, all
/// versions of a key together (a key's versions may straddle listing pages).
async fn list_scope<F>(src: &S3, rule: &Rule, mut each: F) -> Result<()>
where
    F: FnMut(Vec<VersionEntry>) -> Result<()>,
{
    for prefix in rule.scan_prefixes() {
        let mut marker = None;
        let mut carry: Vec<VersionEntry> = Vec::new();
        // Later pages hold older versions of a carried key: keep list positions increasing.
        let mut offset = 0;
        loop {
            let page = src.list_versions_page(&rule.source.bucket, &prefix, marker).await?;
            let mut entries = std::mem::take(&mut carry);
            let count = page.entries.len();
            entries.extend(page.entries.into_iter().filter(|e| rule.in_scope(&e.key)).map(|mut e| {
                e.list_index += offset;
                e
            }));
            offset += count;
            // Versions and markers arrive as two lists; regroup them by key, in key order.
            entries.sort_by(|a, b| a.key.cmp(&b.key));
            let last_key = entries.last().map(|e| e.key.clone());
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
    let mut batch: Vec<(String, String)> = Vec::new();
    let mut total = 0;
    list_scope(src, rule, |group| {
        for e in group {
            batch.push((e.key, e.version_id));
        }
        if batch.len() >= 1000 {
            total += batch.len();
            store.add_baseline(&rule.id, generation, &batch)?;
            batch.clear();
        }
        Ok(())
    })
    .await?;
    total += batch.len();
    store.add_baseline(&rule.id, generation, &batch)?;
    Ok(total)
}

/// One scan: queues every unseen version of the rule's scope, in write order per key, and
/// records the scan for the last sync point. Returns how many tasks were queued.
pub async fn scan(src: &S3, rule: &Rule, generation: i64, store: &Store) -> Result<usize> {
    let started = now_ms();
    let mut queued = 0;
    let mut batch: Vec<NewChange> = Vec::new();
    list_scope(src, rule, |mut group| {
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
    Ok(queued)
}
