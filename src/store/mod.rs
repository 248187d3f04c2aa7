//! The durable state in `STATE_DIR/crr.db` (SQLite, WAL): each rule's enable point and counters,
//! the versions each rule has already seen, the task queue, multipart progress, scans (from
//! which the last sync point follows).
//! Credentials never enter it.

mod lock;
pub mod replica;
pub mod tally;

pub use lock::{EngineLock, LockHeld};
pub use tally::{Count, State, Tally};
use tally::{Tallies, TallyKey};

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS rules (
    rule_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,               -- enabled | enabling | disabled | deleted
    generation INTEGER NOT NULL DEFAULT 0,
    scope TEXT NOT NULL DEFAULT '',
    destination TEXT NOT NULL DEFAULT '',  -- ENDPOINT/BUCKET, to abort uploads of a deleted rule
    enable_point INTEGER,              -- unix ms
    disabled_at INTEGER,
    last_sync_point INTEGER,
    replicated_objects INTEGER NOT NULL DEFAULT 0,
    replicated_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS seen (
    rule_id TEXT NOT NULL,
    key TEXT NOT NULL,
    version_id TEXT NOT NULL,
    PRIMARY KEY (rule_id, key, version_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule_id TEXT NOT NULL,
    generation INTEGER NOT NULL,
    kind TEXT NOT NULL,                -- put | delete
    key TEXT NOT NULL,
    version_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    source_time INTEGER NOT NULL,      -- unix seconds of the source version
    state TEXT NOT NULL,               -- queued | running | done | failed | dropped | skipped
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    upload_id TEXT,
    upload_part_size INTEGER,          -- the part size the open upload was started with
    dest_version_id TEXT,
    migration_id INTEGER,              -- set for tasks of a historical migration
    bytes_done INTEGER NOT NULL DEFAULT 0,  -- sampled from the running copy, for `crr queue`
    interrupted INTEGER NOT NULL DEFAULT 0, -- a run was cut off: its write may have landed
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_migration ON tasks (migration_id, state);
CREATE TABLE IF NOT EXISTS migrations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule_id TEXT NOT NULL,
    control TEXT NOT NULL,             -- run | pause | cancel
    started_at INTEGER NOT NULL,       -- unix ms; versions newer than its second are left to real time
    overwrite TEXT NOT NULL,
    listing_done INTEGER NOT NULL DEFAULT 0,
    prefix_index INTEGER NOT NULL DEFAULT 0,
    key_marker TEXT,
    version_marker TEXT,
    total_objects INTEGER NOT NULL DEFAULT 0,
    total_bytes INTEGER NOT NULL DEFAULT 0,
    finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, id);
CREATE INDEX IF NOT EXISTS tasks_by_key ON tasks (rule_id, key, id);
CREATE INDEX IF NOT EXISTS tasks_by_rule ON tasks (rule_id, state, id);
CREATE INDEX IF NOT EXISTS tasks_with_upload ON tasks (id) WHERE upload_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS seen_pruned (
    rule_id TEXT PRIMARY KEY,
    at INTEGER NOT NULL                -- unix ms of the scan that last pruned the seen set
);
CREATE TABLE IF NOT EXISTS parts (
    task_id INTEGER NOT NULL,
    part_number INTEGER NOT NULL,
    etag TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (task_id, part_number)
);
CREATE TABLE IF NOT EXISTS scans (
    rule_id TEXT NOT NULL,
    generation INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    max_task_id INTEGER NOT NULL
);
"#;

/// Scans kept per rule for the last sync point.
const MAX_SCANS: i64 = 256;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 in UTC, to the second.
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    Put,
    Delete,
}

impl TaskKind {
    fn as_str(self) -> &'static str {
        match self {
            TaskKind::Put => "put",
            TaskKind::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Task {
    pub id: i64,
    pub rule_id: String,
    pub generation: i64,
    pub kind: TaskKind,
    pub key: String,
    pub version_id: String,
    pub size: u64,
    pub etag: String,
    pub state: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub upload_id: Option<String>,
    pub updated_at: i64,
    pub migration_id: Option<i64>,
    pub bytes_done: u64,
    /// An earlier run of this task was cut off (crash, shutdown): what it wrote may have landed.
    pub interrupted: bool,
}

/// A change found by a scan, to be queued.
#[derive(Debug, Clone)]
pub struct NewChange {
    /// false: only mark it seen (a delete marker under `operations = "put"`), so that it is
    /// never replayed later, e.g. after the rule changes to "all".
    pub queue: bool,
    pub kind: TaskKind,
    pub key: String,
    pub version_id: String,
    pub size: u64,
    pub etag: String,
    pub source_time: i64,
}

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
}

/// What disabling a rule dropped.
#[derive(Debug, Default)]
pub struct Disabled {
    /// Dropped tasks that had a multipart upload open, to abort.
    pub uploads: Vec<Task>,
    /// Queued, running and failed tasks dropped.
    pub dropped: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Backlog {
    pub pending_tasks: i64,
    pub pending_bytes: i64,
    pub failed_tasks: i64,
}

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

pub struct Store {
    conn: Mutex<Connection>,
    /// Task counts by rule, migration and state, moved by every method that moves a task.
    tally: Mutex<Tallies>,
    pub dir: PathBuf,
}

/// Runs store work so that it never stalls the async runtime: on a multi-threaded runtime the
/// calling worker hands its other tasks to another thread while SQLite works.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Counts moved by one statement: (whose tasks, from which state, how many, their bytes).
type Moved = Vec<(TallyKey, State, i64, i64)>;

/// Counts of the tasks matching `filter` (a WHERE clause with ?1), by rule, migration and state.
fn count_where(tx: &rusqlite::Transaction, filter: &str, value: &dyn rusqlite::ToSql) -> Result<Moved> {
    let mut st = tx.prepare(&format!(
        "SELECT rule_id, migration_id, state, COUNT(*), COALESCE(SUM(size), 0) FROM tasks WHERE {filter}
         GROUP BY rule_id, migration_id, state"
    ))?;
    let rows = st.query_map([value], |r| {
        Ok((
            (r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?),
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (key, state, n, bytes) = row?;
        if let Some(state) = State::parse(&state) {
            out.push((key, state, n, bytes));
        }
    }
    Ok(out)
}

/// Whose tally a task is in, and its size.
fn task_tally_key(tx: &rusqlite::Connection, id: i64) -> Result<Option<(TallyKey, i64)>> {
    Ok(tx
        .query_row(
            "SELECT rule_id, migration_id, size FROM tasks WHERE id = ?1",
            [id],
            |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)),
        )
        .optional()?)
}

const TASK_COLUMNS: &str = "id, rule_id, generation, kind, key, version_id, size, etag, state, attempts, last_error, \
     upload_id, updated_at, migration_id, bytes_done, interrupted";

fn task_from_row(r: &rusqlite::Row) -> rusqlite::Result<Task> {
    let kind: String = r.get(3)?;
    Ok(Task {
        id: r.get(0)?,
        rule_id: r.get(1)?,
        generation: r.get(2)?,
        kind: if kind == "delete" {
            TaskKind::Delete
        } else {
            TaskKind::Put
        },
        key: r.get(4)?,
        version_id: r.get(5)?,
        size: r.get::<_, i64>(6)? as u64,
        etag: r.get(7)?,
        state: r.get(8)?,
        attempts: r.get::<_, i64>(9)? as u32,
        last_error: r.get(10)?,
        upload_id: r.get(11)?,
        updated_at: r.get(12)?,
        migration_id: r.get(13)?,
        bytes_done: r.get::<_, i64>(14)? as u64,
        interrupted: r.get::<_, i64>(15)? != 0,
    })
}

/// Whether `generation` is the rule's current one and the rule is enabled: what a feed or a
/// lister that began earlier checks, in the same transaction, before committing what it found.
fn is_current(tx: &rusqlite::Transaction, rule_id: &str, generation: i64) -> Result<bool> {
    Ok(tx
        .query_row(
            "SELECT 1 FROM rules WHERE rule_id = ?1 AND generation = ?2 AND state IN ('enabled', 'enabling')",
            params![rule_id, generation],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Drops the queued, running and failed tasks where `column` (rule_id or migration_id) equals
/// `value`, with their recorded parts. Returns those that had a multipart upload open, to abort.
fn drop_unfinished(
    tx: &rusqlite::Transaction,
    column: &str,
    value: &dyn rusqlite::ToSql,
    reason: &str,
) -> Result<(Vec<Task>, Moved)> {
    let unfinished = format!("{column} = ?1 AND state IN ('queued', 'running', 'failed')");
    let moved = count_where(tx, &unfinished, value)?;
    let uploads = {
        let mut st = tx.prepare(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE {unfinished} AND upload_id IS NOT NULL"
        ))?;
        st.query_map([value], task_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?
    };
    tx.execute(
        &format!("DELETE FROM parts WHERE task_id IN (SELECT id FROM tasks WHERE {unfinished})"),
        [value],
    )?;
    tx.execute(
        &format!("UPDATE tasks SET state = 'dropped', last_error = ?2, updated_at = ?3 WHERE {unfinished}"),
        params![value, reason, now_ms()],
    )?;
    Ok((uploads, moved))
}

impl Store {
    /// Opens (creating if needed) the state database in `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating the state directory {}", dir.display()))?;
        let path = dir.join("crr.db");
        let conn = Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("preparing {}", path.display()))?;
        conn.execute_batch(replica::SCHEMA)
            .with_context(|| format!("preparing {}", path.display()))?;
        let store = Store {
            conn: Mutex::new(conn),
            tally: Mutex::new(Tallies::default()),
            dir: dir.to_path_buf(),
        };
        store.reload_tally()?;
        Ok(store)
    }

    fn tallies(&self) -> MutexGuard<'_, Tallies> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts every task once (at start, and after bulk changes).
    fn reload_tally(&self) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let all = count_where(&tx, "?1", &1)?;
        tx.commit()?;
        let mut t = self.tallies();
        t.clear();
        for (key, state, n, bytes) in all {
            t.set(key, state, Count { objects: n, bytes });
        }
        Ok(())
    }

    /// Moves counts from the states in `moved` to `to`.
    fn apply_moved(&self, moved: &Moved, to: State) {
        let mut t = self.tallies();
        for (key, from, n, bytes) in moved {
            t.shift(key, Some(*from), Some(to), *n, *bytes);
        }
    }

    fn shift_task(&self, key: Option<(TallyKey, i64)>, from: State, to: State) {
        if let Some((key, size)) = key {
            self.tallies().shift(&key, Some(from), Some(to), 1, size);
        }
    }

    /// The tasks of a rule's real-time replication (`migration: None`) or of one migration, by state.
    pub fn tally(&self, rule: &str, migration: Option<i64>) -> Tally {
        self.tallies().get(&(rule.to_string(), migration))
    }

    /// Every task of a rule, real time and migrations together, by state.
    pub fn rule_tally(&self, rule: &str) -> Tally {
        self.tallies().rule_total(rule)
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- rules ------------------------------------------------------------------------------

    pub fn rule_state(&self, id: &str) -> Result<Option<RuleState>> {
        blocking(|| {
            Ok(self
                .db()
                .query_row(
                    "SELECT rule_id, state, generation, scope, enable_point, disabled_at, last_sync_point,
                        replicated_objects, replicated_bytes, destination FROM rules WHERE rule_id = ?1",
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
                        })
                    },
                )
                .optional()?)
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
            tx.execute(
                "INSERT INTO rules (rule_id, state, generation, scope, destination) VALUES (?1, 'enabling', 1, ?2, ?3)
             ON CONFLICT (rule_id) DO UPDATE SET state = 'enabling', generation = generation + 1, scope = ?2,
             destination = ?3",
                params![id, scope, destination],
            )?;
            tx.execute("DELETE FROM seen WHERE rule_id = ?1", [id])?;
            tx.execute("DELETE FROM scans WHERE rule_id = ?1", [id])?;
            let generation = tx.query_row("SELECT generation FROM rules WHERE rule_id = ?1", [id], |r| r.get(0))?;
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
            Ok(self.db().execute(
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
            tx.execute(
                "UPDATE migrations SET control = 'cancel', finished_at = ?2 WHERE rule_id = ?1 AND control != 'cancel'
             AND (listing_done = 0 OR EXISTS (SELECT 1 FROM tasks t
                 WHERE t.migration_id = migrations.id AND t.state IN ('queued', 'running', 'failed')))",
                params![id, now],
            )?;
            let (uploads, moved) = drop_unfinished(&tx, "rule_id", &id, "rule disabled")?;
            tx.execute(
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

    // ---- changes and tasks -------------------------------------------------------------------

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
                let mut ins = tx.prepare_cached(
                "INSERT INTO tasks (rule_id, generation, kind, key, version_id, size, etag, source_time, state, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', ?9, ?9)",
            )?;
                for c in changes {
                    if seen.execute(params![rule_id, c.key, c.version_id])? == 1 && c.queue {
                        ins.execute(params![
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

    /// When the rule's seen set was last pruned (unix ms).
    pub fn seen_pruned_at(&self, rule_id: &str) -> Result<Option<i64>> {
        blocking(|| {
            Ok(self
                .db()
                .query_row("SELECT at FROM seen_pruned WHERE rule_id = ?1", [rule_id], |r| r.get(0))
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
            db.execute("DELETE FROM temp.listed WHERE rule_id = ?1", [rule_id])?;
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
            let n = tx.execute(
                "DELETE FROM seen WHERE rule_id = ?1
                 AND NOT EXISTS (SELECT 1 FROM temp.listed l WHERE l.rule_id = ?1 AND l.key = seen.key
                                 AND l.version_id = seen.version_id)
                 AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.rule_id = ?1 AND t.key = seen.key
                                 AND t.version_id = seen.version_id AND t.state IN ('queued', 'running', 'failed'))",
                [rule_id],
            )?;
            tx.execute("DELETE FROM temp.listed WHERE rule_id = ?1", [rule_id])?;
            tx.execute(
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
                .execute("DELETE FROM seen_pruned WHERE rule_id = ?1", [rule_id])?;
            Ok(())
        })
    }

    /// For each entry, whether the rule has not seen that version yet.
    pub fn unseen(&self, rule_id: &str, entries: &[crate::s3::VersionEntry]) -> Result<Vec<bool>> {
        blocking(|| {
            let db = self.db();
            let mut st = db.prepare_cached("SELECT 1 FROM seen WHERE rule_id = ?1 AND key = ?2 AND version_id = ?3")?;
            let mut out = Vec::with_capacity(entries.len());
            for e in entries {
                out.push(!st.exists(params![rule_id, e.key, e.version_id])?);
            }
            Ok(out)
        })
    }

    /// Whether this version is in the rule's baseline: seen at the enable point, and never
    /// queued for real-time replication.
    pub fn is_baseline(&self, rule_id: &str, key: &str, version_id: &str) -> Result<bool> {
        blocking(|| {
            Ok(self
                .db()
                .query_row(
                    "SELECT 1 FROM seen WHERE rule_id = ?1 AND key = ?2 AND version_id = ?3
                 AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.rule_id = ?1 AND t.key = ?2 AND t.version_id = ?3
                                 AND t.migration_id IS NULL
                                 AND t.generation = (SELECT generation FROM rules WHERE rule_id = ?1))",
                    params![rule_id, key, version_id],
                    |_| Ok(()),
                )
                .optional()?
                .is_some())
        })
    }

    /// Leases the next runnable task: queued, due, of an enabled rule, and with no earlier
    /// unfinished task for the same key (per-key order).
    pub fn claim(&self, now: i64) -> Result<Option<Task>> {
        blocking(|| {
            let mut db = self.db();
            let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let task = tx
                .query_row(
                    &format!(
                        "SELECT {TASK_COLUMNS} FROM tasks t WHERE state = 'queued' AND not_before <= ?1
                     AND EXISTS (SELECT 1 FROM rules r WHERE r.rule_id = t.rule_id AND r.state = 'enabled'
                                 AND r.generation = t.generation)
                     AND (t.migration_id IS NULL OR EXISTS (
                          SELECT 1 FROM migrations m WHERE m.id = t.migration_id AND m.control = 'run'))
                     AND NOT EXISTS (SELECT 1 FROM tasks e WHERE e.rule_id = t.rule_id AND e.key = t.key
                                     AND e.id != t.id AND (e.state = 'running' OR (e.id < t.id AND e.state = 'queued'
                                         AND (e.migration_id IS NULL OR EXISTS (SELECT 1 FROM migrations m
                                             WHERE m.id = e.migration_id AND m.control = 'run')))))
                     ORDER BY (t.migration_id IS NOT NULL), id LIMIT 1"
                    ),
                    [now],
                    task_from_row,
                )
                .optional()?;
            if let Some(t) = &task {
                tx.execute(
                    "UPDATE tasks SET state = 'running', attempts = attempts + 1, updated_at = ?2 WHERE id = ?1",
                    params![t.id, now],
                )?;
            }
            tx.commit()?;
            if let Some(t) = &task {
                self.tallies().shift(
                    &(t.rule_id.clone(), t.migration_id),
                    Some(State::Queued),
                    Some(State::Running),
                    1,
                    t.size as i64,
                );
            }
            Ok(task.map(|mut t| {
                t.attempts += 1;
                t.state = "running".into();
                t
            }))
        })
    }

    /// Tasks left `running` by a process that died are queued again (their parts are kept),
    /// marked interrupted: their write may have landed, so the next run checks before copying.
    pub fn requeue_running(&self) -> Result<usize> {
        blocking(|| {
            let n = self.db().execute(
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
        blocking(|| {
            self.move_running(
                id,
                State::Queued,
                "UPDATE tasks SET state = 'queued', attempts = MAX(attempts - 1, 0), interrupted = 1, updated_at = ?2
             WHERE id = ?1 AND state = 'running'",
                params![id, now_ms()],
            )
        })
    }

    /// Runs `sql` (which moves the running task `id` to `to`) and moves its count if it did.
    fn move_running(&self, id: i64, to: State, sql: &str, params: impl rusqlite::Params) -> Result<()> {
        let db = self.db();
        let key = task_tally_key(&db, id)?;
        if db.execute(sql, params)? == 1 {
            self.shift_task(key, State::Running, to);
        }
        Ok(())
    }

    pub fn complete(&self, task: &Task, dest_version: Option<&str>, bytes: u64) -> Result<()> {
        blocking(|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            let n = tx.execute(
                "UPDATE tasks SET state = 'done', dest_version_id = ?2, last_error = NULL, updated_at = ?3
             WHERE id = ?1 AND state = 'running'",
                params![task.id, dest_version, now_ms()],
            )?;
            if n == 1 {
                tx.execute(
                "UPDATE rules SET replicated_objects = replicated_objects + 1, replicated_bytes = replicated_bytes + ?2
                 WHERE rule_id = ?1",
                params![task.rule_id, bytes as i64],
            )?;
            }
            tx.execute("DELETE FROM parts WHERE task_id = ?1", [task.id])?;
            tx.commit()?;
            if n == 1 {
                self.shift_task(
                    Some(((task.rule_id.clone(), task.migration_id), task.size as i64)),
                    State::Running,
                    State::Done,
                );
            }
            Ok(())
        })
    }

    /// Ends a task without copying (`skipped`): the reason says why.
    pub fn skip(&self, id: i64, reason: &str) -> Result<()> {
        blocking(|| {
            self.move_running(
            id,
            State::Skipped,
            "UPDATE tasks SET state = 'skipped', last_error = ?2, updated_at = ?3 WHERE id = ?1 AND state = 'running'",
            params![id, reason, now_ms()],
        )
        })
    }

    pub fn retry_later(&self, id: i64, error: &str, not_before: i64) -> Result<()> {
        blocking(|| {
            self.move_running(
                id,
                State::Queued,
                "UPDATE tasks SET state = 'queued', last_error = ?2, not_before = ?3, updated_at = ?4
             WHERE id = ?1 AND state = 'running'",
                params![id, error, not_before, now_ms()],
            )
        })
    }

    pub fn fail(&self, id: i64, error: &str) -> Result<()> {
        blocking(|| {
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
        blocking(|| {
            Ok(self
            .db()
            .query_row(
                "SELECT 1 FROM tasks WHERE rule_id = ?1 AND key = ?2 AND (
                    (id > ?3 AND state = 'done')
                    -- A migration copies what existed at the enable point: any real-time change of
                    -- the key in this generation is newer, whatever order their tasks were queued in.
                    OR (?4 AND migration_id IS NULL AND generation = ?5 AND state IN ('queued', 'running', 'done', 'failed')))
                 LIMIT 1",
                params![task.rule_id, task.key, task.id, task.migration_id.is_some(), task.generation],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
        })
    }

    /// Of a key's tasks in this generation: how many are unfinished, and how many are not dropped.
    pub fn key_tasks(&self, rule_id: &str, key: &str, generation: i64) -> Result<(i64, i64)> {
        blocking(|| {
            Ok(self.db().query_row(
                "SELECT COALESCE(SUM(state IN ('queued', 'running')), 0), COALESCE(SUM(state != 'dropped'), 0)
             FROM tasks WHERE rule_id = ?1 AND key = ?2 AND generation = ?3",
                params![rule_id, key, generation],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
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
        blocking(|| {
            Ok(self
                .db()
                .query_row(
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
            self.db().execute(
            "INSERT INTO tasks (rule_id, generation, kind, key, version_id, size, etag, source_time, state, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', ?9, ?9)",
            params![
                rule_id,
                generation,
                c.kind.as_str(),
                c.key,
                c.version_id,
                c.size as i64,
                c.etag,
                c.source_time,
                now_ms()
            ],
        )?;
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
                n += tx.execute(
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
            Ok(self.db().query_row(
                "SELECT COUNT(*) FROM tasks t WHERE state IN ('queued', 'running')
             AND EXISTS (SELECT 1 FROM rules r WHERE r.rule_id = t.rule_id AND r.state = 'enabled'
                         AND r.generation = t.generation)
             AND (t.migration_id IS NULL OR EXISTS (
                  SELECT 1 FROM migrations m WHERE m.id = t.migration_id AND m.control = 'run'))",
                [],
                |r| r.get(0),
            )?)
        })
    }

    pub fn backlog(&self, rule_id: &str) -> Result<Backlog> {
        blocking(|| {
            Ok(self.db().query_row(
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

    // ---- migrations ---------------------------------------------------------------------------

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
            db.execute(
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
                .query_row(
                    &format!("SELECT {MIGRATION_COLUMNS} FROM migrations WHERE rule_id = ?1 ORDER BY id DESC LIMIT 1"),
                    [rule_id],
                    migration_from_row,
                )
                .optional()?)
        })
    }

    /// Migrations whose listing should run now.
    pub fn migrations_to_list(&self) -> Result<Vec<Migration>> {
        blocking(|| {
            let db = self.db();
            let mut st = db.prepare(&format!(
                "SELECT {MIGRATION_COLUMNS} FROM migrations WHERE control = 'run' AND listing_done = 0 ORDER BY id"
            ))?;
            let rows = st.query_map([], migration_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    pub fn migration(&self, id: i64) -> Result<Option<Migration>> {
        blocking(|| {
            Ok(self
                .db()
                .query_row(
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
                .execute("UPDATE migrations SET control = ?2 WHERE id = ?1", params![id, control])?;
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
            tx.execute(
                "UPDATE migrations SET control = 'cancel', finished_at = ?2 WHERE id = ?1",
                params![id, now_ms()],
            )?;
            tx.commit()?;
            self.apply_moved(&moved, State::Dropped);
            Ok(uploads)
        })
    }

    /// Queues one listing page of a migration and moves its position past it, atomically: a
    /// restart continues from the next page and never queues an object twice.
    pub fn add_migration_page(
        &self,
        m: &Migration,
        generation: i64,
        objects: &[NewChange],
        position: (i64, Option<(String, String)>),
        listing_done: bool,
    ) -> Result<()> {
        blocking(|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            // A page listed while the migration was being paused or cancelled is not queued; a
            // resumed listing fetches it again from the saved position.
            let control: String = tx.query_row("SELECT control FROM migrations WHERE id = ?1", [m.id], |r| r.get(0))?;
            if control != "run" || !is_current(&tx, &m.rule_id, generation)? {
                return Ok(());
            }
            let now = now_ms();
            let mut bytes = 0i64;
            {
                let mut ins = tx.prepare_cached(
                    "INSERT INTO tasks (rule_id, generation, kind, key, version_id, size, etag, source_time, state,
                                    migration_id, created_at, updated_at)
                 VALUES (?1, ?2, 'put', ?3, ?4, ?5, ?6, ?7, 'queued', ?8, ?9, ?9)",
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
                        now
                    ])?;
                    bytes += o.size as i64;
                }
            }
            let (prefix_index, marker) = position;
            let (key, version) = marker.map(|(k, v)| (Some(k), Some(v))).unwrap_or((None, None));
            tx.execute(
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
            Ok(())
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
            let mut f = self.db().query_row(
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
                .query_row(
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

    // ---- multipart ---------------------------------------------------------------------------

    /// Records the task's multipart upload and its part size (or forgets it: `None`); the
    /// parts recorded for an earlier upload are forgotten either way.
    pub fn set_upload(&self, task_id: i64, upload: Option<(&str, u64)>) -> Result<()> {
        blocking(|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            tx.execute(
                "UPDATE tasks SET upload_id = ?2, upload_part_size = ?3 WHERE id = ?1",
                params![task_id, upload.map(|u| u.0), upload.map(|u| u.1 as i64)],
            )?;
            tx.execute("DELETE FROM parts WHERE task_id = ?1", [task_id])?;
            tx.commit()?;
            Ok(())
        })
    }

    /// The part size the task's open upload was started with.
    pub fn upload_part_size(&self, task_id: i64) -> Result<Option<u64>> {
        blocking(|| {
            Ok(self
                .db()
                .query_row("SELECT upload_part_size FROM tasks WHERE id = ?1", [task_id], |r| {
                    r.get::<_, Option<i64>>(0)
                })
                .optional()?
                .flatten()
                .map(|v| v as u64))
        })
    }

    /// Whether the task is still running (not dropped by a disable or cancel meanwhile).
    pub fn is_running(&self, task_id: i64) -> Result<bool> {
        blocking(|| {
            Ok(self
                .db()
                .query_row("SELECT state = 'running' FROM tasks WHERE id = ?1", [task_id], |r| {
                    r.get(0)
                })
                .optional()?
                .unwrap_or(false))
        })
    }

    /// Tasks that will never run again but still have a multipart upload recorded, with their
    /// rule's destination (ENDPOINT/BUCKET): uploads to abort.
    pub fn orphan_uploads(&self) -> Result<Vec<(Task, String)>> {
        blocking(|| {
            let db = self.db();
            let mut st = db.prepare(&format!(
                "SELECT {TASK_COLUMNS}, (SELECT destination FROM rules r WHERE r.rule_id = tasks.rule_id)
             FROM tasks WHERE upload_id IS NOT NULL AND state IN ('dropped', 'skipped', 'done', 'failed')"
            ))?;
            let rows = st.query_map([], |r| {
                Ok((task_from_row(r)?, r.get::<_, Option<String>>(16)?.unwrap_or_default()))
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    pub fn tasks_upload(&self, task_id: i64) -> Result<Option<String>> {
        blocking(|| {
            Ok(self
                .db()
                .query_row("SELECT upload_id FROM tasks WHERE id = ?1", [task_id], |r| r.get(0))
                .optional()?
                .flatten())
        })
    }

    pub fn add_part(&self, task_id: i64, part: i32, etag: &str, size: u64) -> Result<()> {
        blocking(|| {
            self.db().execute(
                "INSERT OR REPLACE INTO parts (task_id, part_number, etag, size) VALUES (?1, ?2, ?3, ?4)",
                params![task_id, part, etag, size as i64],
            )?;
            Ok(())
        })
    }

    pub fn parts(&self, task_id: i64) -> Result<Vec<(i32, String, u64)>> {
        blocking(|| {
            let db = self.db();
            let mut st =
                db.prepare("SELECT part_number, etag, size FROM parts WHERE task_id = ?1 ORDER BY part_number")?;
            let rows = st.query_map([task_id], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    // ---- scans and the last sync point -------------------------------------------------------

    /// The highest task id so far (a scan's high-water mark).
    pub fn max_task_id(&self) -> Result<i64> {
        blocking(|| {
            Ok(self
                .db()
                .query_row("SELECT COALESCE(MAX(id), 0) FROM tasks", [], |r| r.get(0))?)
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
                tx.execute(
                    "DELETE FROM scans WHERE rule_id = ?1 AND generation = ?2 AND max_task_id = ?3",
                    params![rule_id, generation, max_task_id],
                )?;
                tx.execute(
                    "INSERT INTO scans (rule_id, generation, started_at, max_task_id) VALUES (?1, ?2, ?3, ?4)",
                    params![rule_id, generation, started_at, max_task_id],
                )?;
                // While a failed task holds the sync point back, scans that found changes pile
                // up: keep the oldest and the newest, thinning those between (the sync point can
                // only come out earlier than the truth, never later).
                let count: i64 =
                    tx.query_row("SELECT COUNT(*) FROM scans WHERE rule_id = ?1", [rule_id], |r| r.get(0))?;
                if count > MAX_SCANS {
                    tx.execute(
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
            let n = tx.execute(&format!("DELETE FROM tasks WHERE {filter}"), [1])?;
            tx.execute("DELETE FROM parts WHERE task_id NOT IN (SELECT id FROM tasks)", [])?;
            tx.execute("DELETE FROM replicas WHERE task_id NOT IN (SELECT id FROM tasks)", [])?;
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
        blocking(|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            let best: Option<i64> = tx.query_row(
            "SELECT MAX(s.started_at) FROM scans s JOIN rules r ON r.rule_id = s.rule_id AND r.generation = s.generation
             WHERE s.rule_id = ?1 AND NOT EXISTS (
                SELECT 1 FROM tasks t WHERE t.rule_id = s.rule_id AND t.generation = s.generation
                AND t.id <= s.max_task_id
                AND t.migration_id IS NULL AND t.state IN ('queued', 'running', 'failed'))",
            [rule_id],
            |r| r.get(0),
        )?;
            if let Some(best) = best {
                tx.execute(
                    "UPDATE rules SET last_sync_point = MAX(COALESCE(last_sync_point, 0), ?2) WHERE rule_id = ?1",
                    params![rule_id, best],
                )?;
                tx.execute(
                    "DELETE FROM scans WHERE rule_id = ?1 AND started_at < ?2",
                    params![rule_id, best],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &str, v: &str) -> NewChange {
        NewChange {
            queue: true,
            kind: TaskKind::Put,
            key: key.into(),
            version_id: v.into(),
            size: 1,
            etag: String::new(),
            source_time: 0,
        }
    }

    #[test]
    fn queue_dedups_and_keeps_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let g = s.begin_enable("r", "scope", "sh/b").unwrap();
        s.add_baseline("r", g, &[("old".into(), "v0".into())]).unwrap();
        assert!(s.finish_enable("r", g, 1).unwrap());
        assert_eq!(
            s.queue_new("r", g, &[change("old", "v0"), change("a", "v1"), change("a", "v2")])
                .unwrap(),
            2
        );
        assert_eq!(s.queue_new("r", g, &[change("a", "v1")]).unwrap(), 0);
        let first = s.claim(now_ms()).unwrap().unwrap();
        assert_eq!(first.version_id, "v1");
        // v2 waits for v1: same key.
        assert!(s.claim(now_ms()).unwrap().is_none());
        s.complete(&first, Some("d1"), 1).unwrap();
        assert_eq!(s.claim(now_ms()).unwrap().unwrap().version_id, "v2");
    }

    #[test]
    fn an_older_task_waits_while_a_newer_one_of_its_key_runs() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let g = s.begin_enable("r", "scope", "sh/b").unwrap();
        assert!(s.finish_enable("r", g, 1).unwrap());
        s.queue_new("r", g, &[change("a", "v1"), change("a", "v2")]).unwrap();
        let v1 = s.claim(now_ms()).unwrap().unwrap();
        s.fail(v1.id, "boom").unwrap();
        let v2 = s.claim(now_ms()).unwrap().unwrap();
        assert_eq!(v2.version_id, "v2");
        // v1 is retried while v2 still runs: it must not run beside it (it could finish last).
        assert_eq!(s.retry_failed(None, &[v1.id]).unwrap(), 1);
        assert!(s.claim(now_ms()).unwrap().is_none());
        s.complete(&v2, Some("d2"), 1).unwrap();
        let again = s.claim(now_ms()).unwrap().unwrap();
        assert_eq!(again.version_id, "v1");
        assert!(s.superseded(&again).unwrap(), "v1 is older than the replicated v2");
    }

    #[test]
    fn pruning_keeps_the_newest_replica_of_each_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let g = s.begin_enable("r", "scope", "sh/b").unwrap();
        assert!(s.finish_enable("r", g, 1).unwrap());
        s.queue_new("r", g, &[change("a", "v1"), change("a", "v2"), change("b", "w1")])
            .unwrap();
        for _ in 0..3 {
            let t = s.claim(now_ms()).unwrap().unwrap();
            let dest = format!("d-{}", t.version_id);
            s.complete(&t, Some(&dest), 1).unwrap();
        }
        assert_eq!(s.prune_tasks().unwrap(), 1, "only a/v1 has a newer replica");
        assert_eq!(s.replica_of("r", "a", "v2", g).unwrap(), Some(Some("d-v2".into())));
        assert_eq!(s.replica_of("r", "a", "v1", g).unwrap(), None);
        assert_eq!(s.replica_of("r", "b", "w1", g).unwrap(), Some(Some("d-w1".into())));
        assert_eq!(s.tally("r", None).done.objects, 2);
        assert_eq!(s.prune_tasks().unwrap(), 0);
    }

    #[test]
    fn disable_drops_queue() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let g = s.begin_enable("r", "scope", "sh/b").unwrap();
        assert!(s.finish_enable("r", g, 1).unwrap());
        s.queue_new("r", g, &[change("a", "v1")]).unwrap();
        s.disable("r", "disabled").unwrap();
        assert!(s.claim(now_ms()).unwrap().is_none());
        assert_eq!(s.backlog("r").unwrap().pending_tasks, 0);
    }
}
