//! Rules' recorded state: enable points and generations, disabling, and the versions each
//! rule has seen (its baseline and what scans queued).

use super::*;

#[derive(Debug, Clone, Default)]
pub struct RuleState {
    pub rule_id: String,
    pub state: String,
    pub generation: i64,
    pub scope: String,
    pub destination: String,
    pub enable_point: Option<i64>,
    pub disabled_at: Option<i64>,
    pub last_sync_point: Option<i64>,
    pub replicated_objects: i64,
    pub replicated_bytes: i64,
    /// Why the rule's copies are held while it stays enabled (versioning not Enabled on one of
    /// its buckets); None when they run.
    pub halted: Option<String>,
}

/// What disabling a rule dropped.
#[derive(Debug, Default)]
pub struct Disabled {
    /// Dropped tasks that had a multipart upload open, to abort.
    pub uploads: Vec<Task>,
    /// Queued, running and failed tasks dropped.
    pub dropped: u64,
}

impl Store {
    pub fn rule_state(&self, id: &str) -> Result<Option<RuleState>> {
        blocking(|| {
            Ok(self
                .db()
                .row(
                    "SELECT rule_id, state, generation, scope, enable_point, disabled_at, last_sync_point,
                        replicated_objects, replicated_bytes, destination, halted FROM rules WHERE rule_id = ?1",
                    [id],
                    |r| {
                        Ok(RuleState {
                            rule_id: r.get(0)?,
                            state: r.get(1)?,
                            generation: r.get(2)?,
                            scope: r.get(3)?,
                            enable_point: r.get(4)?,
                            disabled_at: r.get(5)?,
                            last_sync_point: r.get(6)?,
                            replicated_objects: r.get(7)?,
                            replicated_bytes: r.get(8)?,
                            destination: r.get(9)?,
                            halted: r.get(10)?,
                        })
                    },
                )
                .optional()?)
        })
    }

    /// Holds the rule's copies with the reason, or lets them run again (`None`). Returns whether
    /// that changed anything. Enable point, generation and queue are kept as they are.
    pub fn set_halted(&self, id: &str, reason: Option<&str>) -> Result<bool> {
        blocking(|| {
            Ok(self.db().exec(
                "UPDATE rules SET halted = ?2 WHERE rule_id = ?1 AND halted IS NOT ?2",
                params![id, reason],
            )? > 0)
        })
    }

    pub fn rule_ids(&self) -> Result<Vec<(String, String)>> {
        blocking(|| {
            let db = self.db();
            let mut st = db.prepare("SELECT rule_id, state FROM rules ORDER BY rule_id")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Starts (re-)enabling a rule: a new generation with an empty seen set.
    pub fn begin_enable(&self, id: &str, scope: &str, destination: &str) -> Result<i64> {
        blocking(|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            tx.exec(
                "INSERT INTO rules (rule_id, state, generation, scope, destination) VALUES (?1, 'enabling', 1, ?2, ?3)
             ON CONFLICT (rule_id) DO UPDATE SET state = 'enabling', generation = generation + 1, scope = ?2,
             destination = ?3, halted = NULL",
                params![id, scope, destination],
            )?;
            tx.exec("DELETE FROM seen WHERE rule_id = ?1", [id])?;
            tx.exec("DELETE FROM scans WHERE rule_id = ?1", [id])?;
            let generation = tx.row("SELECT generation FROM rules WHERE rule_id = ?1", [id], |r| r.get(0))?;
            tx.commit()?;
            Ok(generation)
        })
    }

    /// Records versions that existed at the enable point: they are never replicated in real time.
    pub fn add_baseline(&self, id: &str, generation: i64, entries: &[(String, String)]) -> Result<()> {
        blocking(|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            if !is_current(&tx, id, generation)? {
                anyhow::bail!("rule {id:?} changed while its baseline was being listed");
            }
            {
                let mut st =
                    tx.prepare_cached("INSERT OR IGNORE INTO seen (rule_id, key, version_id) VALUES (?1, ?2, ?3)")?;
                for (key, version) in entries {
                    st.execute(params![id, key, version])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Marks the rule enabled at `enable_point`, unless it changed since `generation` began.
    pub fn finish_enable(&self, id: &str, generation: i64, enable_point: i64) -> Result<bool> {
        blocking(|| {
            Ok(self.db().exec(
                "UPDATE rules SET state = 'enabled', enable_point = ?3, last_sync_point = ?3, disabled_at = NULL
             WHERE rule_id = ?1 AND generation = ?2 AND state = 'enabling'",
                params![id, generation, enable_point],
            )? == 1)
        })
    }

    /// Marks the rule disabled (or deleted) and drops its queued, running and failed tasks.
    /// Returns the dropped tasks that had a multipart upload open, so it can be aborted.
    pub fn disable(&self, id: &str, new_state: &str) -> Result<Disabled> {
        blocking(|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            let now = now_ms();
            // Unfinished migrations are cancelled (judged before their tasks are dropped); a
            // completed one stays completed.
            tx.exec(
                "UPDATE migrations SET control = 'cancel', finished_at = ?2 WHERE rule_id = ?1 AND control != 'cancel'
             AND (listing_done = 0 OR EXISTS (SELECT 1 FROM tasks t
                 WHERE t.migration_id = migrations.id AND t.state IN ('queued', 'running', 'failed')))",
                params![id, now],
            )?;
            let (uploads, moved) = drop_unfinished(&tx, "rule_id", &id, "rule disabled")?;
            tx.exec(
                "INSERT INTO rules (rule_id, state, disabled_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (rule_id) DO UPDATE SET state = ?2, disabled_at = ?3",
                params![id, new_state, now],
            )?;
            tx.commit()?;
            self.apply_moved(&moved, State::Dropped);
            Ok(Disabled {
                uploads,
                dropped: moved.iter().map(|m| m.2).sum::<i64>() as u64,
            })
        })
    }

    /// When the rule's seen set was last pruned (unix ms).
    pub fn seen_pruned_at(&self, rule_id: &str) -> Result<Option<i64>> {
        blocking(|| {
            Ok(self
                .db()
                .row("SELECT at FROM seen_pruned WHERE rule_id = ?1", [rule_id], |r| r.get(0))
                .optional()?)
        })
    }

    /// Starts recording what a full listing of the rule's scope holds (a temporary table).
    pub fn begin_listing(&self, rule_id: &str) -> Result<()> {
        blocking(|| {
            let db = self.db();
            db.execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS listed (rule_id TEXT NOT NULL, key TEXT NOT NULL,
                 version_id TEXT NOT NULL, PRIMARY KEY (rule_id, key, version_id)) WITHOUT ROWID",
            )?;
            db.exec("DELETE FROM temp.listed WHERE rule_id = ?1", [rule_id])?;
            Ok(())
        })
    }

    pub fn add_listed(&self, rule_id: &str, entries: &[crate::s3::VersionEntry]) -> Result<()> {
        blocking(|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT OR IGNORE INTO temp.listed (rule_id, key, version_id) VALUES (?1, ?2, ?3)",
                )?;
                for e in entries {
                    st.execute(params![rule_id, e.key, e.version_id])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Forgets the seen versions the listing did not hold (deleted for good from the source),
    /// unless a task still needs them; records the prune. Returns how many were forgotten.
    pub fn prune_seen(&self, rule_id: &str, generation: i64, at: i64) -> Result<usize> {
        blocking(|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            if !is_current(&tx, rule_id, generation)? {
                // Re-enabled since the listing: its baseline is not this listing's to judge.
                return Ok(0);
            }
            let n = tx.exec(
                "DELETE FROM seen WHERE rule_id = ?1
                 AND NOT EXISTS (SELECT 1 FROM temp.listed l WHERE l.rule_id = ?1 AND l.key = seen.key
                                 AND l.version_id = seen.version_id)
                 AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.rule_id = ?1 AND t.key = seen.key
                                 AND t.version_id = seen.version_id AND t.state IN ('queued', 'running', 'failed'))",
                [rule_id],
            )?;
            tx.exec("DELETE FROM temp.listed WHERE rule_id = ?1", [rule_id])?;
            tx.exec(
                "INSERT INTO seen_pruned (rule_id, at) VALUES (?1, ?2)
                 ON CONFLICT (rule_id) DO UPDATE SET at = ?2",
                params![rule_id, at],
            )?;
            tx.commit()?;
            Ok(n)
        })
    }

    /// Makes the next scan of the rule prune its seen set (tests, and after a long pause).
    pub fn prune_seen_next_scan(&self, rule_id: &str) -> Result<()> {
        blocking(|| {
            self.db()
                .exec("DELETE FROM seen_pruned WHERE rule_id = ?1", [rule_id])?;
            Ok(())
        })
    }

    /// For each entry, whether the rule has not seen that version yet.
    pub fn unseen(&self, rule_id: &str, entries: &[crate::s3::VersionEntry]) -> Result<Vec<bool>> {
        blocking(|| {
            // One read transaction for the page: otherwise every lookup takes and drops the
            // database's locks on its own.
            let mut db = self.db();
            let tx = db.transaction()?;
            let mut out = Vec::with_capacity(entries.len());
            {
                let mut st =
                    tx.prepare_cached("SELECT 1 FROM seen WHERE rule_id = ?1 AND key = ?2 AND version_id = ?3")?;
                for e in entries {
                    out.push(!st.exists(params![rule_id, e.key, e.version_id])?);
                }
            }
            tx.commit()?;
            Ok(out)
        })
    }

    /// Which of these versions are in the rule's baseline: seen at the enable point, and never
    /// queued for real-time replication. One lock and one prepared statement for a whole page.
    pub fn baseline_of<'k>(
        &self,
        rule_id: &str,
        versions: impl Iterator<Item = (&'k str, &'k str)>,
    ) -> Result<Vec<bool>> {
        blocking(|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            let generation: Option<i64> = tx
                .row("SELECT generation FROM rules WHERE rule_id = ?1", [rule_id], |r| {
                    r.get(0)
                })
                .optional()?;
            let mut st = tx.prepare_cached(
                "SELECT 1 FROM seen WHERE rule_id = ?1 AND key = ?2 AND version_id = ?3
                 AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.rule_id = ?1 AND t.key = ?2 AND t.version_id = ?3
                                 AND t.migration_id IS NULL AND t.generation = ?4)",
            )?;
            let mut out = Vec::new();
            for (key, version) in versions {
                out.push(st.exists(params![rule_id, key, version, generation])?);
            }
            drop(st);
            tx.commit()?;
            Ok(out)
        })
    }
}
