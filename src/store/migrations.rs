//! Historical migrations: their control state, listing position, and figures.

use super::*;

#[derive(Debug, Clone)]
pub struct Migration {
    pub id: i64,
    pub rule_id: String,
    pub control: String,
    pub started_at: i64,
    pub overwrite: String,
    pub listing_done: bool,
    pub prefix_index: i64,
    pub marker: Option<(String, String)>,
    pub total_objects: i64,
    pub total_bytes: i64,
}

const MIGRATION_COLUMNS: &str = "id, rule_id, control, started_at, overwrite, listing_done, prefix_index, \
     key_marker, version_marker, total_objects, total_bytes";

fn migration_from_row(r: &rusqlite::Row) -> rusqlite::Result<Migration> {
    let key: Option<String> = r.get(7)?;
    let version: Option<String> = r.get(8)?;
    Ok(Migration {
        id: r.get(0)?,
        rule_id: r.get(1)?,
        control: r.get(2)?,
        started_at: r.get(3)?,
        overwrite: r.get(4)?,
        listing_done: r.get::<_, i64>(5)? != 0,
        prefix_index: r.get(6)?,
        marker: key.map(|k| (k, version.unwrap_or_default())),
        total_objects: r.get(9)?,
        total_bytes: r.get(10)?,
    })
}

/// A migration's progress, derived from its tasks.
#[derive(Debug, Clone, Default)]
pub struct MigrationFigures {
    pub control: String,
    pub started_at: i64,
    pub listing_done: bool,
    pub total_objects: i64,
    pub total_bytes: i64,
    pub done_objects: i64,
    pub done_bytes: i64,
    pub skipped_objects: i64,
    pub skipped_bytes: i64,
    pub failed_objects: i64,
    pub pending_objects: i64,
    pub recent_bytes: i64,
}

impl MigrationFigures {
    /// Listing complete and every object has an outcome.
    pub fn finished(&self) -> bool {
        self.listing_done && self.pending_objects == 0
    }

    /// listing | running | paused | completed | cancelled | failed
    pub fn state(&self) -> &'static str {
        match self.control.as_str() {
            "cancel" => "cancelled",
            "pause" if !self.finished() => "paused",
            _ if !self.listing_done => "listing",
            _ if self.pending_objects > 0 => "running",
            _ if self.failed_objects > 0 => "failed",
            _ => "completed",
        }
    }

    /// Percent by bytes (by objects when every object is empty), one decimal, rounded down, and
    /// 100 only when the migration completed.
    pub fn percent(&self) -> f64 {
        let p = if self.total_bytes > 0 {
            (self.done_bytes + self.skipped_bytes) as f64 * 100.0 / self.total_bytes as f64
        } else if self.total_objects > 0 {
            (self.done_objects + self.skipped_objects) as f64 * 100.0 / self.total_objects as f64
        } else if self.finished() {
            100.0
        } else {
            0.0
        };
        let p = (p * 10.0).floor() / 10.0;
        if self.state() == "completed" {
            100.0
        } else {
            p.min(99.9)
        }
    }

    /// Bytes per second over the last minute (or since the start, if sooner).
    pub fn throughput(&self, now: i64) -> f64 {
        if self.recent_bytes <= 0 {
            return 0.0;
        }
        let window = (now - self.started_at).clamp(1_000, 60_000);
        self.recent_bytes as f64 * 1000.0 / window as f64
    }

    /// Seconds until done at the current throughput, when it can be told.
    pub fn eta_seconds(&self, now: i64) -> Option<u64> {
        let rate = self.throughput(now);
        let state = self.state();
        if rate <= 0.0 || !(state == "running" || state == "listing") || !self.listing_done {
            return None;
        }
        let left = (self.total_bytes - self.done_bytes - self.skipped_bytes).max(0) as f64;
        Some((left / rate).ceil() as u64)
    }
}

impl Store {
    /// Starts a migration of the rule. Refuses while another one is unfinished.
    pub fn create_migration(&self, rule_id: &str, overwrite: &str) -> Result<std::result::Result<i64, Migration>> {
        blocking(|| {
            if let Some(m) = self.latest_migration(rule_id)?
                && m.control != "cancel"
                && !self.migration_counts(&m).finished()
            {
                return Ok(Err(m));
            }
            let db = self.db();
            db.exec(
                "INSERT INTO migrations (rule_id, control, started_at, overwrite) VALUES (?1, 'run', ?2, ?3)",
                params![rule_id, now_ms(), overwrite],
            )?;
            Ok(Ok(db.last_insert_rowid()))
        })
    }

    pub fn latest_migration(&self, rule_id: &str) -> Result<Option<Migration>> {
        blocking(|| {
            Ok(self
                .db()
                .row(
                    &format!("SELECT {MIGRATION_COLUMNS} FROM migrations WHERE rule_id = ?1 ORDER BY id DESC LIMIT 1"),
                    [rule_id],
                    migration_from_row,
                )
                .optional()?)
        })
    }

    /// Migrations whose listing should run now: not those of a rule still being enabled, whose
    /// first listing feeds the baseline and the migration at once (it owns that listing).
    pub fn migrations_to_list(&self) -> Result<Vec<Migration>> {
        blocking(|| {
            let db = self.db();
            let mut st = db.prepare(&format!(
                "SELECT {MIGRATION_COLUMNS} FROM migrations WHERE control = 'run' AND listing_done = 0
                 AND EXISTS (SELECT 1 FROM rules r WHERE r.rule_id = migrations.rule_id AND r.state = 'enabled')
                 ORDER BY id"
            ))?;
            let rows = st.query_map([], migration_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    pub fn migration(&self, id: i64) -> Result<Option<Migration>> {
        quick(|| {
            Ok(self
                .db()
                .row(
                    &format!("SELECT {MIGRATION_COLUMNS} FROM migrations WHERE id = ?1"),
                    [id],
                    migration_from_row,
                )
                .optional()?)
        })
    }

    pub fn set_migration_control(&self, id: i64, control: &str) -> Result<()> {
        blocking(|| {
            self.db()
                .exec("UPDATE migrations SET control = ?2 WHERE id = ?1", params![id, control])?;
            Ok(())
        })
    }

    /// Cancels a migration: its unfinished tasks are dropped. Returns those with an open
    /// multipart upload, to abort.
    pub fn cancel_migration(&self, id: i64) -> Result<Vec<Task>> {
        blocking(|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            let (uploads, moved) = drop_unfinished(&tx, "migration_id", &id, "migration cancelled")?;
            tx.exec(
                "UPDATE migrations SET control = 'cancel', finished_at = ?2 WHERE id = ?1",
                params![id, now_ms()],
            )?;
            tx.commit()?;
            self.apply_moved(&moved, State::Dropped);
            Ok(uploads)
        })
    }

    /// Queues one listing page of a migration and moves its position past it, atomically: a
    /// restart continues from the next page and never queues an object twice. Returns whether
    /// the page was taken (not when the migration was paused or cancelled, or the rule changed).
    pub fn add_migration_page(
        &self,
        m: &Migration,
        generation: i64,
        objects: &[NewChange],
        position: (i64, Option<(String, String)>),
        listing_done: bool,
    ) -> Result<bool> {
        blocking(|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            // A page listed while the migration was being paused or cancelled is not queued; a
            // resumed listing fetches it again from the saved position.
            let control: String = tx.row("SELECT control FROM migrations WHERE id = ?1", [m.id], |r| r.get(0))?;
            if control != "run" || !is_current(&tx, &m.rule_id, generation)? {
                return Ok(false);
            }
            let now = now_ms();
            let mut bytes = 0i64;
            {
                let mut ins = tx.prepare_cached(
                    "INSERT INTO tasks (rule_id, generation, kind, key, version_id, size, etag, source_time, state,
                                    migration_id, dest_absent, created_at, updated_at)
                 VALUES (?1, ?2, 'put', ?3, ?4, ?5, ?6, ?7, 'queued', ?8, ?10, ?9, ?9)",
                )?;
                for o in objects {
                    ins.execute(params![
                        m.rule_id,
                        generation,
                        o.key,
                        o.version_id,
                        o.size as i64,
                        o.etag,
                        o.source_time,
                        m.id,
                        now,
                        o.dest_absent as i64
                    ])?;
                    bytes += o.size as i64;
                }
            }
            let (prefix_index, marker) = position;
            let (key, version) = marker.map(|(k, v)| (Some(k), Some(v))).unwrap_or((None, None));
            tx.exec(
                "UPDATE migrations SET total_objects = total_objects + ?2, total_bytes = total_bytes + ?3,
                    prefix_index = ?4, key_marker = ?5, version_marker = ?6, listing_done = ?7
             WHERE id = ?1",
                params![
                    m.id,
                    objects.len() as i64,
                    bytes,
                    prefix_index,
                    key,
                    version,
                    listing_done as i64
                ],
            )?;
            tx.commit()?;
            self.tallies().shift(
                &(m.rule_id.clone(), Some(m.id)),
                None,
                Some(State::Queued),
                objects.len() as i64,
                bytes,
            );
            Ok(true)
        })
    }

    /// A migration's progress from the in-memory counts (no aggregate over its tasks); no
    /// throughput, which the caller measures.
    pub fn migration_counts(&self, m: &Migration) -> MigrationFigures {
        let t = self.tally(&m.rule_id, Some(m.id));
        MigrationFigures {
            control: m.control.clone(),
            started_at: m.started_at,
            listing_done: m.listing_done,
            total_objects: m.total_objects,
            total_bytes: m.total_bytes,
            done_objects: t.done.objects,
            done_bytes: t.done.bytes,
            skipped_objects: t.skipped.objects,
            skipped_bytes: t.skipped.bytes,
            failed_objects: t.failed.objects,
            pending_objects: t.pending().objects,
            recent_bytes: 0,
        }
    }

    /// Counts of a migration's tasks by outcome, and the bytes finished in the last minute.
    pub fn migration_figures(&self, m: &Migration) -> Result<MigrationFigures> {
        blocking(|| {
            let since = now_ms() - 60_000;
            let mut f = self.db().row(
                "SELECT COALESCE(SUM(state = 'done'), 0), COALESCE(SUM(CASE WHEN state = 'done' THEN size END), 0),
                    COALESCE(SUM(state = 'skipped'), 0), COALESCE(SUM(CASE WHEN state = 'skipped' THEN size END), 0),
                    COALESCE(SUM(state = 'failed'), 0), COALESCE(SUM(state IN ('queued', 'running')), 0),
                    COALESCE(SUM(CASE WHEN state = 'done' AND updated_at >= ?2 THEN size END), 0)
             FROM tasks WHERE migration_id = ?1",
                params![m.id, since],
                |r| {
                    Ok(MigrationFigures {
                        done_objects: r.get(0)?,
                        done_bytes: r.get(1)?,
                        skipped_objects: r.get(2)?,
                        skipped_bytes: r.get(3)?,
                        failed_objects: r.get(4)?,
                        pending_objects: r.get(5)?,
                        recent_bytes: r.get(6)?,
                        ..Default::default()
                    })
                },
            )?;
            f.total_objects = m.total_objects;
            f.total_bytes = m.total_bytes;
            f.listing_done = m.listing_done;
            f.control = m.control.clone();
            f.started_at = m.started_at;
            Ok(f)
        })
    }

    /// Done-task provenance: whether crr wrote `dest_version` as the replica of `version` of `key`.
    pub fn is_our_replica(&self, rule_id: &str, key: &str, version: &str, dest_version: &str) -> Result<bool> {
        blocking(|| {
            Ok(self
                .db()
                .row(
                    "SELECT 1 FROM tasks WHERE rule_id = ?1 AND key = ?2 AND version_id = ?3 AND dest_version_id = ?4
                 AND state = 'done' LIMIT 1",
                    params![rule_id, key, version, dest_version],
                    |_| Ok(()),
                )
                .optional()?
                .is_some())
        })
    }

    /// Records the bytes running copies have sent, for readers in other processes.
    pub fn record_bytes_done(&self, done: &[(i64, u64)]) -> Result<()> {
        blocking(|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            {
                let mut st =
                    tx.prepare_cached("UPDATE tasks SET bytes_done = ?2 WHERE id = ?1 AND state = 'running'")?;
                for (id, bytes) in done {
                    st.execute(params![id, *bytes as i64])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }
}
