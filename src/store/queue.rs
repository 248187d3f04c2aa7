//! The task queue: queueing changes, claiming them in per-key order, their outcomes, retries,
//! and pruning what nothing needs any more.

use super::*;
use std::sync::LazyLock;

#[derive(Debug, Clone, Default)]
pub struct Backlog {
    pub pending_tasks: i64,
    pub pending_bytes: i64,
    pub failed_tasks: i64,
}

impl Store {
    /// Queues the changes not seen before, in the given order, together with marking them seen,
    /// in one transaction: a change is on disk before the scan moves past it.
    pub fn queue_new(&self, rule_id: &str, generation: i64, changes: &[NewChange]) -> Result<usize> {
        blocking(|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            if !is_current(&tx, rule_id, generation)? {
                // Listed before the rule was disabled, re-enabled or re-scoped: that generation's
                // changes are not this one's to queue (nor to mark seen).
                return Ok(0);
            }
            let mut queued = 0;
            let mut queued_bytes = 0i64;
            let now = now_ms();
            {
                let mut seen =
                    tx.prepare_cached("INSERT OR IGNORE INTO seen (rule_id, key, version_id) VALUES (?1, ?2, ?3)")?;
                for c in changes {
                    if seen.execute(params![rule_id, c.key, c.version_id])? == 1 && c.queue {
                        insert_task(&tx, rule_id, generation, c, now)?;
                        queued += 1;
                        queued_bytes += c.size as i64;
                    }
                }
            }
            tx.commit()?;
            self.tallies().shift(
                &(rule_id.to_string(), None),
                None,
                Some(State::Queued),
                queued as i64,
                queued_bytes,
            );
            Ok(queued)
        })
    }

    /// Leases the next runnable task: queued, due, of an enabled rule not halted, and with no earlier
    /// unfinished task for the same key (per-key order). Real-time changes come first, then the
    /// running migrations' tasks, each in queue order. Every lookup walks the index of queued
    /// tasks from its start, so a claim costs the same with a million tasks queued as with ten.
    pub fn claim(&self, now: i64) -> Result<Option<Task>> {
        quick(|| {
            let mut db = self.db();
            let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let task = claim_in(&tx, now)?;
            tx.commit()?;
            Ok(self.claimed(task))
        })
    }

    /// Counts a claimed task as running, and marks it so.
    fn claimed(&self, task: Option<Task>) -> Option<Task> {
        self.count_claimed(task.as_ref());
        task.map(Store::as_claimed)
    }

    /// Counts a claimed task as running.
    pub(super) fn count_claimed(&self, task: Option<&Task>) {
        if let Some(t) = task {
            self.tallies().shift(
                &(t.rule_id.clone(), t.migration_id),
                Some(State::Queued),
                Some(State::Running),
                1,
                t.size as i64,
            );
        }
    }

    /// A task as its claim left it: running, one attempt more.
    pub(super) fn as_claimed(mut t: Task) -> Task {
        t.attempts += 1;
        t.state = "running".into();
        t
    }

    /// Tasks left `running` by a process that died are queued again (their parts are kept),
    /// marked interrupted: their write may have landed, so the next run checks before copying.
    pub fn requeue_running(&self) -> Result<usize> {
        blocking(|| {
            let n = self.db().exec(
                "UPDATE tasks SET state = 'queued', attempts = MAX(attempts - 1, 0), interrupted = 1, updated_at = ?1
             WHERE state = 'running'",
                [now_ms()],
            )?;
            if n > 0 {
                self.reload_tally()?;
            }
            Ok(n)
        })
    }

    /// Gives a task cut off by shutdown back to the queue without counting the attempt.
    pub fn release(&self, id: i64) -> Result<()> {
        quick(|| {
            self.move_running(
                id,
                State::Queued,
                "UPDATE tasks SET state = 'queued', attempts = MAX(attempts - 1, 0), interrupted = 1, updated_at = ?2
             WHERE id = ?1 AND state = 'running'",
                params![id, now_ms()],
            )
        })
    }

    /// Whether a claimed task may start now: still running (not dropped by a disable or cancel
    /// meanwhile), its rule enabled in the task's generation and not held, and its migration
    /// (if any) not paused. A task claimed as the last copy was recorded can wait a while (that
    /// copy's checks) before it starts.
    pub fn may_start(&self, task: &Task) -> Result<StartCheck> {
        quick(|| {
            // One statement, so one read of the database per task: whether it is still ours,
            // whether a newer change of its key was replicated (see `superseded`), and its
            // migration's overwrite policy.
            let found: Option<(bool, bool, bool, Option<String>)> = self
                .db()
                .prepare_cached(concat!(
                    "SELECT t.state = 'running',
                        EXISTS (SELECT 1 FROM rules r WHERE r.rule_id = t.rule_id AND ",
                    rule_runs!(),
                    "
                                AND r.generation = t.generation AND r.halted IS NULL)
                        AND (t.migration_id IS NULL OR EXISTS (SELECT 1 FROM migrations m
                                WHERE m.id = t.migration_id AND m.control = 'run')),
                        EXISTS (SELECT 1 FROM tasks s WHERE s.rule_id = t.rule_id AND s.key = t.key AND (",
                    superseding!(),
                    ")),
                        (SELECT m.overwrite FROM migrations m WHERE m.id = t.migration_id)
                     FROM tasks t WHERE t.id = ?1"
                ))?
                .query_row([task.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()?;
            Ok(match found {
                Some((true, true, false, overwrite)) => StartCheck {
                    start: Start::Go,
                    overwrite,
                },
                Some((true, true, true, _)) => StartCheck {
                    start: Start::Superseded,
                    overwrite: None,
                },
                Some((true, false, _, _)) => StartCheck {
                    start: Start::Held,
                    overwrite: None,
                },
                _ => StartCheck {
                    start: Start::Dropped,
                    overwrite: None,
                },
            })
        })
    }

    /// Gives back a claimed task that did not start (see `may_start`): queued as it was, its
    /// attempt not counted.
    pub fn unclaim(&self, id: i64) -> Result<()> {
        quick(|| {
            self.move_running(
                id,
                State::Queued,
                "UPDATE tasks SET state = 'queued', attempts = MAX(attempts - 1, 0), updated_at = ?2
                 WHERE id = ?1 AND state = 'running'",
                params![id, now_ms()],
            )
        })
    }
    /// Runs `sql` (which moves the running task `id` to `to`) and moves its count if it did.
    fn move_running(&self, id: i64, to: State, sql: &str, params: impl rusqlite::Params) -> Result<()> {
        let db = self.db();
        let key = task_tally_key(&db, id)?;
        if db.exec(sql, params)? == 1 {
            self.shift_task(key, State::Running, to);
        }
        Ok(())
    }

    /// Marks a running task done, counting its bytes for its rule. Returns the counts of its
    /// key's tasks after it.
    pub fn complete(&self, task: &Task, dest_version: Option<&str>, bytes: u64) -> Result<KeyTasks> {
        quick(|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            let (done, key) = complete_in(&tx, task, dest_version, bytes)?;
            tx.commit()?;
            self.completed(task, done);
            Ok(key)
        })
    }

    /// Counts a task that `complete_in` moved (when `done`) as done.
    pub(super) fn completed(&self, task: &Task, done: bool) {
        if done {
            self.shift_task(
                Some(((task.rule_id.clone(), task.migration_id), task.size as i64)),
                State::Running,
                State::Done,
            );
        }
    }

    /// Ends a task without copying (`skipped`): the reason says why.
    pub fn skip(&self, id: i64, reason: &str) -> Result<()> {
        quick(|| {
            self.move_running(
            id,
            State::Skipped,
            "UPDATE tasks SET state = 'skipped', last_error = ?2, updated_at = ?3 WHERE id = ?1 AND state = 'running'",
            params![id, reason, now_ms()],
        )
        })
    }

    pub fn retry_later(&self, id: i64, error: &str, not_before: i64) -> Result<()> {
        quick(|| {
            self.move_running(
                id,
                State::Queued,
                "UPDATE tasks SET state = 'queued', last_error = ?2, not_before = ?3, updated_at = ?4
             WHERE id = ?1 AND state = 'running'",
                params![id, error, not_before, now_ms()],
            )
        })
    }

    /// Puts a task that could not run because an endpoint is down back in the queue until
    /// `not_before`, without counting the attempt: an outage must not use up a task's attempts.
    pub fn wait_for_endpoint(&self, id: i64, error: &str, not_before: i64) -> Result<()> {
        quick(|| {
            self.move_running(
                id,
                State::Queued,
                "UPDATE tasks SET state = 'queued', attempts = MAX(attempts - 1, 0), last_error = ?2, not_before = ?3,
                 updated_at = ?4 WHERE id = ?1 AND state = 'running'",
                params![id, error, not_before, now_ms()],
            )
        })
    }

    /// Makes the queued tasks of these rules that wait for a later time (an endpoint that was
    /// down, a retry's backoff) due at `now`. Returns how many.
    pub fn due_now(&self, rule_ids: &[String], now: i64) -> Result<usize> {
        blocking(|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            let mut n = 0;
            for rule in rule_ids {
                n += tx.exec(
                    "UPDATE tasks SET not_before = ?2 WHERE rule_id = ?1 AND state = 'queued' AND not_before > ?2",
                    params![rule, now],
                )?;
            }
            tx.commit()?;
            Ok(n)
        })
    }

    pub fn fail(&self, id: i64, error: &str) -> Result<()> {
        quick(|| {
            self.move_running(
            id,
            State::Failed,
            "UPDATE tasks SET state = 'failed', last_error = ?2, updated_at = ?3 WHERE id = ?1 AND state = 'running'",
            params![id, error, now_ms()],
        )
        })
    }

    /// Whether a later change of the same key has already been replicated: copying this one
    /// now would make an older version the destination's latest.
    pub fn superseded(&self, task: &Task) -> Result<bool> {
        quick(|| {
            Ok(self
                .db()
                .row(
                    concat!(
                        "SELECT 1 FROM tasks s, (SELECT ?1 AS rule_id, ?2 AS key, ?3 AS id, ?4 AS migration_id, ?5 AS generation) t
                         WHERE s.rule_id = t.rule_id AND s.key = t.key AND (",
                        superseding!(),
                        ") LIMIT 1"
                    ),
                    params![task.rule_id, task.key, task.id, task.migration_id, task.generation],
                    |_| Ok(()),
                )
                .optional()?
                .is_some())
        })
    }

    /// The destination version crr recorded for its newest replica of this source version in
    /// this generation: `None` when it replicated none.
    pub fn replica_of(
        &self,
        rule_id: &str,
        key: &str,
        version: &str,
        generation: i64,
    ) -> Result<Option<Option<String>>> {
        quick(|| {
            Ok(self
                .db()
                .row(
                    "SELECT dest_version_id FROM tasks WHERE rule_id = ?1 AND key = ?2 AND version_id = ?3
                 AND generation = ?4 AND state = 'done' ORDER BY id DESC LIMIT 1",
                    params![rule_id, key, version, generation],
                    |r| r.get(0),
                )
                .optional()?)
        })
    }

    /// Queues a version again (whether or not it was seen): it runs after every task queued so far.
    pub fn requeue_version(&self, rule_id: &str, generation: i64, c: &NewChange) -> Result<()> {
        blocking(|| {
            insert_task(&self.db(), rule_id, generation, c, now_ms())?;
            self.tallies().shift(
                &(rule_id.to_string(), None),
                None,
                Some(State::Queued),
                1,
                c.size as i64,
            );
            Ok(())
        })
    }

    /// Puts failed tasks back in the queue. `None` selects every failed task.
    pub fn retry_failed(&self, rule: Option<&str>, ids: &[i64]) -> Result<usize> {
        blocking(|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            let now = now_ms();
            let mut moved = Vec::new();
            let mut n = 0;
            let mut requeue = |filter: &str, value: &dyn rusqlite::ToSql| -> Result<()> {
                let filter = format!("{filter} AND state = 'failed'");
                moved.extend(count_where(&tx, &filter, value)?);
                n += tx.exec(
                &format!("UPDATE tasks SET state = 'queued', attempts = 0, not_before = 0, updated_at = {now} WHERE {filter}"),
                [value],
            )?;
                Ok(())
            };
            if !ids.is_empty() {
                for id in ids {
                    requeue("id = ?1", id)?;
                }
            } else {
                match rule {
                    Some(r) => requeue("rule_id = ?1", &r)?,
                    None => requeue("?1", &1)?,
                }
            }
            tx.commit()?;
            self.apply_moved(&moved, State::Queued);
            Ok(n)
        })
    }

    pub fn tasks_in(&self, states: &[&str], limit: usize) -> Result<Vec<Task>> {
        blocking(|| {
            let list = states.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ");
            let db = self.db();
            let mut st = db.prepare(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE state IN ({list}) ORDER BY id LIMIT ?1"
            ))?;
            let rows = st.query_map([limit as i64], task_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// How many tasks are queued or running (optionally only those due by `now`).
    pub fn unfinished(&self) -> Result<i64> {
        blocking(|| {
            Ok(self.db().row(
                concat!(
                    "SELECT COUNT(*) FROM tasks t WHERE state IN ('queued', 'running')
             AND EXISTS (SELECT 1 FROM rules r WHERE r.rule_id = t.rule_id AND ",
                    rule_runs!(),
                    "
                         AND r.generation = t.generation)
             AND (t.migration_id IS NULL OR EXISTS (
                  SELECT 1 FROM migrations m WHERE m.id = t.migration_id AND m.control = 'run'))"
                ),
                [],
                |r| r.get(0),
            )?)
        })
    }

    pub fn backlog(&self, rule_id: &str) -> Result<Backlog> {
        blocking(|| {
            Ok(self.db().row(
                "SELECT COALESCE(SUM(state IN ('queued', 'running')), 0),
                    COALESCE(SUM(CASE WHEN state IN ('queued', 'running') THEN size ELSE 0 END), 0),
                    COALESCE(SUM(state = 'failed'), 0)
             FROM tasks WHERE rule_id = ?1",
                [rule_id],
                |r| {
                    Ok(Backlog {
                        pending_tasks: r.get(0)?,
                        pending_bytes: r.get(1)?,
                        failed_tasks: r.get(2)?,
                    })
                },
            )?)
        })
    }
}

/// Of a key's tasks in one generation: how many are unfinished (queued or running), and how
/// many are not dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyTasks {
    pub unfinished: i64,
    pub total: i64,
}

/// Whether a claimed task may start (see `Store::may_start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Go,
    /// Its rule is held, disabled or in a newer generation, or its migration paused: it goes
    /// back to the queue.
    Held,
    /// Dropped or cancelled meanwhile.
    Dropped,
    /// A newer change of its key was already replicated (see `Store::superseded`).
    Superseded,
}

/// What `Store::may_start` found of a claimed task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartCheck {
    pub start: Start,
    /// Its migration's overwrite policy, when it may start and belongs to a migration.
    pub overwrite: Option<String>,
}

/// What makes task `s` (of the same rule and key) supersede task `t`: a later change of the key
/// already replicated, or, for a migration's task, any real-time change of the key in the same
/// generation (a migration copies what existed at the enable point: such a change is newer,
/// whatever order their tasks were queued in).
macro_rules! superseding {
    () => {
        "(s.id > t.id AND s.state = 'done')
         OR (t.migration_id IS NOT NULL AND s.migration_id IS NULL AND s.generation = t.generation
             AND s.state IN ('queued', 'running', 'done', 'failed'))"
    };
}
use superseding;

/// The next runnable real-time task; the next runnable task of migration `?2`. Built once: a
/// claim runs for every task.
static CLAIM_REAL_TIME: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {TASK_COLUMNS} FROM tasks t WHERE state = 'queued' AND migration_id IS NULL {RUNNABLE}
             ORDER BY id LIMIT 1"
    )
});
static CLAIM_MIGRATION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {TASK_COLUMNS} FROM tasks t WHERE state = 'queued' AND migration_id = ?2 {RUNNABLE}
             ORDER BY id LIMIT 1"
    )
});

/// Leases the next runnable task in `tx` (see `Store::claim`), not yet counted.
pub(super) fn claim_in(tx: &Connection, now: i64) -> Result<Option<Task>> {
    let mut task = tx
        .prepare_cached(&CLAIM_REAL_TIME)?
        .query_row([now], task_from_row)
        .optional()?;
    if task.is_none() {
        let running: Vec<i64> = tx
            .prepare_cached("SELECT id FROM migrations WHERE control = 'run' ORDER BY id")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut next = tx.prepare_cached(&CLAIM_MIGRATION)?;
        for m in running {
            task = next.query_row(params![now, m], task_from_row).optional()?;
            if task.is_some() {
                break;
            }
        }
    }
    if let Some(t) = &task {
        tx.prepare_cached(
            "UPDATE tasks SET state = 'running', attempts = attempts + 1, updated_at = ?2 WHERE id = ?1",
        )?
        .execute(params![t.id, now])?;
    }
    Ok(task)
}

/// Marks a running task done in `tx`, counting its bytes for its rule. Returns whether it was
/// still running (a disable may have dropped it meanwhile), and its key's tasks then (in the
/// same transaction: one read of the database less per task).
pub(super) fn complete_in(
    tx: &Connection,
    task: &Task,
    dest_version: Option<&str>,
    bytes: u64,
) -> Result<(bool, KeyTasks)> {
    let n = tx
        .prepare_cached(
            "UPDATE tasks SET state = 'done', dest_version_id = ?2, last_error = NULL, updated_at = ?3
             WHERE id = ?1 AND state = 'running'",
        )?
        .execute(params![task.id, dest_version, now_ms()])?;
    if n == 1 {
        tx.prepare_cached(
            "UPDATE rules SET replicated_objects = replicated_objects + 1, replicated_bytes = replicated_bytes + ?2
             WHERE rule_id = ?1",
        )?
        .execute(params![task.rule_id, bytes as i64])?;
    }
    tx.prepare_cached("DELETE FROM parts WHERE task_id = ?1")?
        .execute([task.id])?;
    Ok((n == 1, key_tasks_in(tx, &task.rule_id, &task.key, task.generation)?))
}

fn key_tasks_in(db: &Connection, rule_id: &str, key: &str, generation: i64) -> Result<KeyTasks> {
    Ok(db.row(
        "SELECT COALESCE(SUM(state IN ('queued', 'running')), 0), COALESCE(SUM(state != 'dropped'), 0)
         FROM tasks WHERE rule_id = ?1 AND key = ?2 AND generation = ?3",
        params![rule_id, key, generation],
        |r| {
            Ok(KeyTasks {
                unfinished: r.get(0)?,
                total: r.get(1)?,
            })
        },
    )?)
}

/// The state of rule `r` in which task `t` of its generation may run: enabled, or still being
/// enabled for a task of its first migration, which the enabling's listing queues page by page
/// (copies need not wait for the whole listing).
macro_rules! rule_runs {
    () => {
        "(r.state = 'enabled' OR (r.state = 'enabling' AND t.migration_id IS NOT NULL))"
    };
}
use rule_runs;

/// What makes a queued task `t` runnable at `?1`: due, its rule enabled in the task's generation,
/// and no unfinished task of the same key ahead of it: one running, or one queued earlier that
/// will run (not one of a paused migration).
const RUNNABLE: &str = concat!(
    "AND t.not_before <= ?1
    AND EXISTS (SELECT 1 FROM rules r WHERE r.rule_id = t.rule_id AND ",
    rule_runs!(),
    "
                AND r.generation = t.generation AND r.halted IS NULL)
    AND NOT EXISTS (SELECT 1 FROM tasks e WHERE e.rule_id = t.rule_id AND e.key = t.key
                    AND e.id != t.id AND (e.state = 'running' OR (e.id < t.id AND e.state = 'queued'
                        AND (e.migration_id IS NULL OR EXISTS (SELECT 1 FROM migrations m
                            WHERE m.id = e.migration_id AND m.control = 'run')))))"
);

/// A queued real-time task for the change `c`.
fn insert_task(db: &rusqlite::Connection, rule_id: &str, generation: i64, c: &NewChange, now: i64) -> Result<()> {
    db.prepare_cached(
        "INSERT INTO tasks (rule_id, generation, kind, key, version_id, size, etag, source_time, state, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', ?9, ?9)",
    )?
    .execute(params![
        rule_id,
        generation,
        c.kind.as_str(),
        c.key,
        c.version_id,
        c.size as i64,
        c.etag,
        c.source_time,
        now
    ])?;
    Ok(())
}
