//! Historical migration: listing what existed before the rule's enable point (its baseline),
//! one page at a time, into the durable queue. The listing position moves with each page's tasks in one
//! transaction, so memory stays flat and a restart continues where the listing stopped.

use crate::config::{Overwrite, Rule};
use crate::s3::S3;
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
        if m.overwrite == Overwrite::IfDifferent.as_str()
            && let Some(last) = page.entries.iter().map(|e| e.key.as_str()).max()
        {
            let c = cursor.get_or_insert_with(|| {
                DestCursor::new(
                    dst,
                    &rule.destination.bucket,
                    prefix,
                    m.marker.as_ref().map(|(k, _)| k.as_str()),
                )
            });
            c.mark_absent(&mut objects, last).await;
        }
        let (position, done) = match page.next {
            Some(marker) => ((idx as i64, Some(marker)), false),
            None => {
                cursor = None;
                ((idx as i64 + 1, None), idx + 1 >= prefixes.len())
            }
        };
        store.add_migration_page(&m, generation, &objects, position, done)?;
        page_done();
        if done {
            return Ok(Listed::Done);
        }
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
    entries: impl Iterator<Item = &'e crate::s3::VersionEntry>,
) -> Result<Vec<NewChange>> {
    let latest: Vec<&crate::s3::VersionEntry> = entries
        .filter(|e| e.is_latest && !e.delete_marker && rule.in_scope(&e.key))
        .collect();
    let baseline = store.baseline_of(&rule.id, latest.iter().map(|e| (e.key.as_str(), e.version_id.as_str())))?;
    let mut out = Vec::new();
    for (e, base) in latest.into_iter().zip(baseline) {
        if base {
            out.push(NewChange {
                queue: true,
                kind: TaskKind::Put,
                key: e.key.clone(),
                version_id: e.version_id.clone(),
                size: e.size,
                etag: e.etag.clone(),
                source_time: e.last_modified,
                dest_absent: false,
            });
        }
    }
    Ok(out)
}
