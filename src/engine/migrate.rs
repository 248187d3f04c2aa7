//! Historical migration: listing what existed before the rule's enable point (its baseline),
//! one page at a time, into the durable queue. The listing position moves with each page's tasks in one
//! transaction, so memory stays flat and a restart continues where the listing stopped.

use crate::config::{Overwrite, Rule};
use crate::s3::{S3, VersionEntry};
use crate::store::{NewChange, Store, TaskKind};
use anyhow::Result;
use std::collections::{HashSet, VecDeque};

/// What a listing run ended with.
pub enum Listed {
    Done,
    /// Paused or cancelled: the position is saved.
    Stopped,
}

/// Lists the migration's scope from its saved position until done or told to stop; `page_done`
/// runs after each page (to wake the workers). Under `overwrite = "if-different"` the
/// destination's keys are listed beside the source's, so that objects it does not hold are
/// copied without a HeadObject each.
pub async fn list(
    (src, dst): (&S3, &S3),
    rule: &Rule,
    store: &Store,
    generation: i64,
    id: i64,
    page_done: impl Fn(),
) -> Result<Listed> {
    let prefixes = rule.scan_prefixes();
    let mut cursor: Option<DestCursor> = None;
    loop {
        let Some(m) = store.migration(id)? else {
            return Ok(Listed::Stopped);
        };
        if m.control != "run" {
            return Ok(Listed::Stopped);
        }
        if m.listing_done {
            return Ok(Listed::Done);
        }
        let idx = m.prefix_index.max(0) as usize;
        let Some(prefix) = prefixes.get(idx) else {
            store.add_migration_page(&m, generation, &[], (idx as i64, None), true)?;
            return Ok(Listed::Done);
        };
        let page = src
            .list_versions_page(&rule.source.bucket, prefix, m.marker.clone())
            .await?;
        let mut objects = existing_objects(store, rule, page.entries.iter())?;
        if m.overwrite == Overwrite::IfDifferent.as_str() {
            let c = cursor.get_or_insert_with(|| {
                DestCursor::new(
                    dst,
                    &rule.destination.bucket,
                    prefix,
                    m.marker.as_ref().map(|(k, _)| k.as_str()),
                )
            });
            c.mark_page(&mut objects, &page.entries).await;
        }
        let (position, done) = position_after(&page.next, idx, prefixes.len());
        if page.next.is_none() {
            cursor = None;
        }
        store.add_migration_page(&m, generation, &objects, position, done)?;
        page_done();
        if done {
            return Ok(Listed::Done);
        }
    }
}

/// Lists the rule's scope once, for a rule enabled for the first time with `historical`: every
/// version in scope goes into the baseline (as `scan::baseline` does) and the latest version of
/// each object into the migration `id`, created just before, page by page. One listing instead
/// of two. If the migration is paused or cancelled meanwhile, the pages that follow go into
/// the baseline only; a resumed migration lists on from its saved position once the rule is
/// enabled. Returns how many versions the baseline holds.
pub async fn list_with_baseline(
    (src, dst): (&S3, &S3),
    rule: &Rule,
    store: &Store,
    generation: i64,
    id: i64,
    page_done: impl Fn(),
) -> Result<usize> {
    let prefixes = rule.scan_prefixes();
    let mut total = 0;
    let mut feeding = true;
    for (idx, prefix) in prefixes.iter().enumerate() {
        let mut marker = None;
        let mut cursor = None;
        loop {
            let page = src.list_versions_page(&rule.source.bucket, prefix, marker).await?;
            let baseline: Vec<(String, String)> = page
                .entries
                .iter()
                .filter(|e| rule.in_scope(&e.key))
                .map(|e| (e.key.clone(), e.version_id.clone()))
                .collect();
            total += baseline.len();
            store.add_baseline(&rule.id, generation, &baseline)?;
            if feeding {
                let Some(m) = store.migration(id)? else {
                    anyhow::bail!("migration {id} of rule {:?} is gone", rule.id);
                };
                // Everything listed is in the baseline now: each object's latest version is
                // the migration's.
                let mut objects: Vec<NewChange> = latest_in_scope(rule, page.entries.iter()).map(change).collect();
                if m.overwrite == Overwrite::IfDifferent.as_str() {
                    cursor
                        .get_or_insert_with(|| DestCursor::new(dst, &rule.destination.bucket, prefix, None))
                        .mark_page(&mut objects, &page.entries)
                        .await;
                }
                let (position, done) = position_after(&page.next, idx, prefixes.len());
                feeding = store.add_migration_page(&m, generation, &objects, position, done)?;
                page_done();
            }
            match page.next {
                Some(next) => marker = Some(next),
                None => break,
            }
        }
    }
    if prefixes.is_empty()
        && feeding
        && let Some(m) = store.migration(id)?
    {
        store.add_migration_page(&m, generation, &[], (0, None), true)?;
    }
    Ok(total)
}

/// Where a migration's listing stands after a page of prefix `idx` (of `prefixes`), and
/// whether it is done.
fn position_after(
    next: &Option<(String, String)>,
    idx: usize,
    prefixes: usize,
) -> ((i64, Option<(String, String)>), bool) {
    match next {
        Some(marker) => ((idx as i64, Some(marker.clone())), false),
        None => ((idx as i64 + 1, None), idx + 1 >= prefixes),
    }
}

/// The destination's keys under one prefix, listed in step with the source's listing pages:
/// it holds at most about one page of keys. Keys come in UTF-8 byte order from both listings
/// (as S3 documents); a listing out of that order makes the cursor give up, and the
/// migration's objects are then checked one by one as before.
struct DestCursor<'a> {
    dst: &'a S3,
    bucket: &'a str,
    prefix: &'a str,
    /// Listed and not yet passed by the source.
    keys: VecDeque<String>,
    /// The last key listed (at first: where the listing starts, exclusive). The first request
    /// starts after it; then `token` continues.
    last_listed: Option<String>,
    token: Option<String>,
    exhausted: bool,
    /// The last key of the source's previous page: keys below it were passed.
    passed: Option<String>,
    broken: bool,
}

impl<'a> DestCursor<'a> {
    /// A cursor from `from` (inclusive; the start of the prefix when `None`).
    fn new(dst: &'a S3, bucket: &'a str, prefix: &'a str, from: Option<&str>) -> Self {
        // StartAfter is exclusive: any key below `from` will do, such as `from` less its last
        // character.
        let start_after = from.and_then(|k| {
            let mut k = k.to_string();
            k.pop();
            (!k.is_empty()).then_some(k)
        });
        DestCursor {
            dst,
            bucket,
            prefix,
            keys: VecDeque::new(),
            last_listed: start_after,
            token: None,
            exhausted: false,
            passed: from.map(str::to_string),
            broken: false,
        }
    }

    /// Marks the objects of a source page listing `entries` that the destination does not hold.
    async fn mark_page(&mut self, objects: &mut [NewChange], entries: &[VersionEntry]) {
        if let Some(last) = entries.iter().map(|e| e.key.as_str()).max() {
            self.mark_absent(objects, last).await;
        }
    }

    /// Marks the objects of a source page (whose greatest key is `last`) that the destination
    /// does not hold. On a listing error or a listing out of order nothing is marked.
    async fn mark_absent(&mut self, objects: &mut [NewChange], last: &str) {
        if self.broken {
            return;
        }
        let held = match self.through(last).await {
            Ok(held) => held,
            Err(why) => {
                tracing::info!(bucket = %self.bucket, "listing the destination beside the migration stopped: {why}; objects are checked one by one");
                self.broken = true;
                return;
            }
        };
        for o in objects.iter_mut() {
            // A key below the previous page's last was passed already: not known.
            let after_passed = self.passed.as_deref().is_none_or(|p| o.key.as_str() >= p);
            o.dest_absent = after_passed && !held.contains(o.key.as_str());
        }
        if self.passed.as_deref().is_none_or(|p| last > p) {
            self.passed = Some(last.to_string());
        }
    }

    /// The destination's keys from the previous page's last key through `last`, both
    /// included; keys equal to `last` stay for the next page too.
    async fn through(&mut self, last: &str) -> Result<HashSet<String>, String> {
        let mut held = HashSet::new();
        loop {
            while let Some(k) = self.keys.front() {
                if k.as_str() > last {
                    return Ok(held);
                }
                if k.as_str() == last {
                    held.insert(k.clone());
                    return Ok(held);
                }
                held.extend(self.keys.pop_front());
            }
            if self.exhausted {
                return Ok(held);
            }
            let (keys, next) = self
                .dst
                .list_keys_page(self.bucket, self.prefix, self.last_listed.as_deref(), self.token.take())
                .await
                .map_err(|e| e.message)?;
            for k in &keys {
                if let Some(prev) = &self.last_listed
                    && k <= prev
                {
                    return Err(format!("the destination listed {k:?} after {prev:?}"));
                }
                self.last_listed = Some(k.clone());
            }
            self.keys.extend(keys);
            self.exhausted = next.is_none();
            self.token = next;
        }
    }
}

/// The latest version of each object in the rule's baseline: what existed at its enable point
/// and so is not replicated in real time. Versions written since are real time's work; they are
/// told apart by version id, never by comparing the server's clock with this host's. Delete
/// markers are left out.
fn existing_objects<'e>(
    store: &Store,
    rule: &Rule,
    entries: impl Iterator<Item = &'e VersionEntry>,
) -> Result<Vec<NewChange>> {
    let latest: Vec<&VersionEntry> = latest_in_scope(rule, entries).collect();
    let baseline = store.baseline_of(&rule.id, latest.iter().map(|e| (e.key.as_str(), e.version_id.as_str())))?;
    Ok(latest
        .into_iter()
        .zip(baseline)
        .filter(|(_, base)| *base)
        .map(|(e, _)| change(e))
        .collect())
}

/// The latest version of each object in scope among `entries` (delete markers left out).
fn latest_in_scope<'e>(
    rule: &Rule,
    entries: impl Iterator<Item = &'e VersionEntry>,
) -> impl Iterator<Item = &'e VersionEntry> {
    entries.filter(|e| e.is_latest && !e.delete_marker && rule.in_scope(&e.key))
}

/// The migration task for copying a listed version.
fn change(e: &VersionEntry) -> NewChange {
    NewChange {
        queue: true,
        kind: TaskKind::Put,
        key: e.key.clone(),
        version_id: e.version_id.clone(),
        size: e.size,
        etag: e.etag.clone(),
        source_time: e.last_modified,
        dest_absent: false,
    }
}
