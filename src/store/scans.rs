//! Scans, from which the last sync point follows, and the pruning of the seen set.

use super::*;

/// Scans kept per rule for the last sync point.
const MAX_SCANS: i64 = 256;

impl Store {
    /// The highest task id so far (a scan's high-water mark).
    pub fn max_task_id(&self) -> Result<i64> {
        blocking(|| {
            Ok(self
                .db()
                .row("SELECT COALESCE(MAX(id), 0) FROM tasks", [], |r| r.get(0))?)
        })
    }

    /// Records a completed scan that started at `started_at` and queued tasks up to `max_task_id`.
    pub fn record_scan(&self, rule_id: &str, generation: i64, started_at: i64, max_task_id: i64) -> Result<()> {
        blocking(|| {
            {
                let mut db = self.db();
                let tx = db.transaction()?;
                if !is_current(&tx, rule_id, generation)? {
                    return Ok(());
                }
                // A scan that queued nothing new supersedes the earlier ones with the same mark.
                tx.exec(
                    "DELETE FROM scans WHERE rule_id = ?1 AND generation = ?2 AND max_task_id = ?3",
                    params![rule_id, generation, max_task_id],
                )?;
                tx.exec(
                    "INSERT INTO scans (rule_id, generation, started_at, max_task_id) VALUES (?1, ?2, ?3, ?4)",
                    params![rule_id, generation, started_at, max_task_id],
                )?;
                // While a failed task holds the sync point back, scans that found changes pile
                // up: keep the oldest and the newest, thinning those between (the sync point can
                // only come out earlier than the truth, never later).
                let count: i64 = tx.row("SELECT COUNT(*) FROM scans WHERE rule_id = ?1", [rule_id], |r| r.get(0))?;
                if count > MAX_SCANS {
                    tx.exec(
                        "DELETE FROM scans WHERE rowid IN (SELECT rowid FROM scans WHERE rule_id = ?1
                         ORDER BY started_at LIMIT 1 OFFSET 1)",
                        [rule_id],
                    )?;
                }
                tx.commit()?;
            }
            self.update_sync_point(rule_id)
        })
    }

    /// Forgets finished tasks nothing needs any more: those of a key with a newer replicated
    /// change (provenance and supersede checks only read the newest), and those of earlier
    /// generations; never the tasks of a rule's latest migration (its figures) or one with an
    /// upload still to abort. Returns how many went.
    pub fn prune_tasks(&self) -> Result<usize> {
        blocking(|| {
            let filter = "state IN ('done', 'skipped', 'dropped') AND upload_id IS NULL
                 AND (migration_id IS NULL OR migration_id != (SELECT MAX(m.id) FROM migrations m WHERE m.rule_id = tasks.rule_id))
                 AND (generation != (SELECT generation FROM rules r WHERE r.rule_id = tasks.rule_id)
                      OR EXISTS (SELECT 1 FROM tasks n WHERE n.rule_id = tasks.rule_id AND n.key = tasks.key
                                 AND n.id > tasks.id AND n.state = 'done' AND n.generation = tasks.generation))
                 AND ?1";
            let mut db = self.db();
            let tx = db.transaction()?;
            let gone = count_where(&tx, filter, &1)?;
            let n = tx.exec(&format!("DELETE FROM tasks WHERE {filter}"), [1])?;
            tx.exec("DELETE FROM parts WHERE task_id NOT IN (SELECT id FROM tasks)", [])?;
            tx.exec("DELETE FROM replicas WHERE task_id NOT IN (SELECT id FROM tasks)", [])?;
            tx.commit()?;
            let mut t = self.tallies();
            for (key, state, count, bytes) in gone {
                t.shift(&key, Some(state), None, count, bytes);
            }
            Ok(n)
        })
    }

    /// The last sync point is the start of the newest scan all of whose changes (and all
    /// earlier ones) are replicated. Failed tasks hold it back, as they should.
    pub fn update_sync_point(&self, rule_id: &str) -> Result<()> {
        quick(|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            let best: Option<i64> = tx.row(
            "SELECT MAX(s.started_at) FROM scans s JOIN rules r ON r.rule_id = s.rule_id AND r.generation = s.generation
             WHERE s.rule_id = ?1 AND NOT EXISTS (
                SELECT 1 FROM tasks t WHERE t.rule_id = s.rule_id AND t.generation = s.generation
                AND t.id <= s.max_task_id
                AND migration_id IS NULL AND state IN ('queued', 'running', 'failed'))",
            [rule_id],
            |r| r.get(0),
        )?;
            if let Some(best) = best {
                tx.exec(
                    "UPDATE rules SET last_sync_point = MAX(COALESCE(last_sync_point, 0), ?2) WHERE rule_id = ?1",
                    params![rule_id, best],
                )?;
                tx.exec(
                    "DELETE FROM scans WHERE rule_id = ?1 AND started_at < ?2",
                    params![rule_id, best],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }
}
