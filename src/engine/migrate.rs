//! Historical migration: listing what existed before the rule's enable point (its baseline),
//! one page at a time, into the durable queue. The listing position moves with each page's tasks in one
//! transaction, so memory stays flat and a restart continues where the listing stopped.

use crate::config::Rule;
use crate::s3::S3;
use crate::store::{NewChange, Store, TaskKind};
use anyhow::Result;

/// What a listing run ended with.
pub enum Listed {
    Done,
    /// Paused or cancelled: the position is saved.
    Stopped,
}

/// Lists the migration's scope from its saved position until done or told to stop; `page_done`
/// runs after each page (to wake the workers).
pub async fn list(
    src: &S3,
    rule: &Rule,
    store: &Store,
    generation: i64,
    id: i64,
    page_done: impl Fn(),
) -> Result<Listed> {
    let prefixes = rule.scan_prefixes();
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
        let objects = existing_objects(store, rule, page.entries)?;
        let (position, done) = match page.next {
            Some(marker) => ((idx as i64, Some(marker)), false),
            None => ((idx as i64 + 1, None), idx + 1 >= prefixes.len()),
        };
        store.add_migration_page(&m, generation, &objects, position, done)?;
        page_done();
        if done {
            return Ok(Listed::Done);
        }
    }
}

/// The latest version of each object in the rule's baseline: what existed at its enable point
/// and so is not replicated in real time. Versions written since are real time's work; they are
/// told apart by version id, never by comparing the server's clock with this host's. Delete
/// markers are left out.
fn existing_objects(store: &Store, rule: &Rule, entries: Vec<crate::s3::VersionEntry>) -> Result<Vec<NewChange>> {
    let mut out = Vec::new();
    for e in entries {
        if e.is_latest
            && !e.delete_marker
            && rule.in_scope(&e.key)
            && store.is_baseline(&rule.id, &e.key, &e.version_id)?
        {
            out.push(NewChange {
                queue: true,
                kind: TaskKind::Put,
                key: e.key,
                version_id: e.version_id,
                size: e.size,
                etag: e.etag,
                source_time: e.last_modified,
            });
        }
    }
    Ok(out)
}
