//! The durable state in `STATE_DIR/crr.db` (SQLite, WAL): each rule's enable point and counters,
//! the versions each rule has already seen, the task queue, multipart progress, scans (from
//! which the last sync point follows).
//! Credentials never enter it.

mod group;
mod lock;
mod migrations;
mod queue;
pub mod replica;
mod rules;
mod scans;
pub mod tally;
mod uploads;

pub use lock::{EngineLock, LockHeld, check_state_dir, create_state_dir};
pub use migrations::{Migration, MigrationFigures};
pub use queue::Backlog;
pub use queue::{KeyTasks, Start, StartCheck};
pub use rules::{Disabled, RuleState};
pub use tally::{Count, State, Tally};
use tally::{Tallies, TallyKey};

use anyhow::{Context, Result, anyhow};
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
    replicated_bytes INTEGER NOT NULL DEFAULT 0,
    halted TEXT                        -- why the rule's copies are held (e.g. versioning suspended)
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
    dest_absent INTEGER NOT NULL DEFAULT 0, -- migration: the destination's listing lacked the key
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
-- Also the queue in claim order (by rowid within a state): real-time tasks (migration_id
-- NULL), then each migration's.
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
-- Unfinished real-time tasks, for the last sync point.
CREATE INDEX IF NOT EXISTS tasks_unsynced ON tasks (rule_id, generation, id)
    WHERE migration_id IS NULL AND state IN ('queued', 'running', 'failed');
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

/// The layout of the database this crr writes (`PRAGMA user_version`). A database of a later
/// layout belongs to a newer crr: it is refused, never changed.
pub const SCHEMA_VERSION: i64 = 3;

/// Brings a database of an earlier layout (or a new, empty one) to [`SCHEMA_VERSION`].
fn upgrade(conn: &Connection) -> Result<()> {
    let newer = |version: i64| {
        anyhow!(
            "it was written by a newer crr (state layout {version}; this crr knows layouts up to \
             {SCHEMA_VERSION}): run that crr, or give this one another state directory; the \
             database was left as it is"
        )
    };
    let version: i64 = conn.row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(newer(version));
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    // The write lock first, then the reads: a transaction that read first and then wrote could
    // meet another process doing the same (`crr status` while `crr serve` starts on a new
    // state directory) and be refused at once, without waiting.
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    // Brought up to date by another process while this one waited for the lock.
    let version: i64 = tx.row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(newer(version));
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    let has_tasks: bool = tx
        .row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tasks'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if has_tasks {
        // Columns later layouts added: tasks.dest_absent (2), rules.halted (3).
        for (table, column, ddl) in [
            (
                "tasks",
                "dest_absent",
                "ALTER TABLE tasks ADD COLUMN dest_absent INTEGER NOT NULL DEFAULT 0",
            ),
            ("rules", "halted", "ALTER TABLE rules ADD COLUMN halted TEXT"),
        ] {
            let has_column: bool = tx
                .row(
                    "SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2",
                    [table, column],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !has_column {
                tx.execute_batch(ddl)?;
            }
        }
    }
    tx.execute_batch(SCHEMA)?;
    tx.execute_batch(replica::SCHEMA)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// Whether `e` is SQLite's "database is locked".
fn is_busy(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<rusqlite::Error>()
            .and_then(rusqlite::Error::sqlite_error_code)
            == Some(rusqlite::ErrorCode::DatabaseBusy)
    })
}

/// The error for a state database crr cannot use. A damaged file is named as such, with a way
/// forward; crr never overwrites or recreates it, since it holds every rule's enable point and
/// the queue.
fn damaged(e: anyhow::Error, path: &Path) -> anyhow::Error {
    let unreadable = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<rusqlite::Error>()
                .and_then(rusqlite::Error::sqlite_error_code),
            Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
        )
    });
    if unreadable {
        anyhow!(
            "{}: the state database is damaged or is not a crr database ({e:#}); crr left it as it \
             is. Restore it from a backup, or move it (with crr.db-wal and crr.db-shm) aside to \
             start afresh: the rules are then enabled again at a new enable point, and changes \
             made meanwhile are found only by a migration",
            path.display()
        )
    } else {
        e.context(format!("preparing {}", path.display()))
    }
}

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
    /// See [`NewChange::dest_absent`].
    pub dest_absent: bool,
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
    /// A migration's object that a listing of the destination did not hold: copied without
    /// asking the destination first (under `overwrite = "if-different"`).
    pub dest_absent: bool,
}

pub struct Store {
    conn: Mutex<Connection>,
    /// Task counts by rule, migration and state, moved by every method that moves a task.
    tally: Mutex<Tallies>,
    /// Writes waiting for the next group commit (see `group`).
    pending: group::Pending,
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

/// Statements run through the connection's cache of prepared statements: the store runs the
/// same few statements for every task, and parsing them again each time cost more than running
/// them.
pub(crate) trait Cached {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// Store work on one task's rows, which takes microseconds: run in place. Handing the
/// runtime's worker thread over, as [`blocking`] does, costs more than such statements (two
/// thread switches each), and a copy makes several.
pub(crate) fn quick<T>(f: impl FnOnce() -> T) -> T {
    f()
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
        .row(
            "SELECT rule_id, migration_id, size FROM tasks WHERE id = ?1",
            [id],
            |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)),
        )
        .optional()?)
}

const TASK_COLUMNS: &str = "id, rule_id, generation, kind, key, version_id, size, etag, state, attempts, last_error, \
     upload_id, updated_at, migration_id, bytes_done, interrupted, dest_absent";

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
        dest_absent: r.get::<_, i64>(16)? != 0,
    })
}

/// Whether `generation` is the rule's current one and the rule is enabled: what a feed or a
/// lister that began earlier checks, in the same transaction, before committing what it found.
fn is_current(tx: &rusqlite::Transaction, rule_id: &str, generation: i64) -> Result<bool> {
    Ok(tx
        .row(
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
    tx.exec(
        &format!("DELETE FROM parts WHERE task_id IN (SELECT id FROM tasks WHERE {unfinished})"),
        [value],
    )?;
    tx.exec(
        &format!("UPDATE tasks SET state = 'dropped', last_error = ?2, updated_at = ?3 WHERE {unfinished}"),
        params![value, reason, now_ms()],
    )?;
    Ok((uploads, moved))
}

impl Store {
    /// Opens (creating if needed) the state database in `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        lock::create_state_dir(dir)?;
        let path = dir.join("crr.db");
        let conn = Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let set_up = |conn: &Connection| -> Result<()> {
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            conn.set_prepared_statement_cache_capacity(128);
            // Plans fixed at prepare time. Without this, a statement whose parameter meets a
            // partial index's condition is prepared again each time a value is bound to it,
            // which made every claim a fresh parse and plan (most of the queue's CPU).
            conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
            // Before anything else changes the file: a newer crr's database is left as it is.
            upgrade(conn)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            // The write-ahead log is copied back into the database every 10,000 pages (40 MB)
            // rather than SQLite's 1,000: each copy-back syncs twice while the store is held,
            // and a page rewritten by many tasks meanwhile is copied once. In a migration of
            // 10,000 small objects that was 42 syncs instead of 312.
            conn.pragma_update(None, "wal_autocheckpoint", 10000)?;
            Ok(())
        };
        // Another process setting up the same new database (`crr status` while `crr serve`
        // starts) can make a step fail at once with "database is locked" rather than wait (the
        // switch to write-ahead logging, a lock SQLite refuses to wait for): set-up is tried
        // again, for as long as the busy timeout.
        let started = std::time::Instant::now();
        loop {
            match set_up(&conn) {
                Err(e) if is_busy(&e) && started.elapsed() < std::time::Duration::from_secs(10) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                done => break done.map_err(|e| damaged(e, &path))?,
            }
        }
        let store = Store {
            conn: Mutex::new(conn),
            tally: Mutex::new(Tallies::default()),
            pending: group::Pending::default(),
            dir: dir.to_path_buf(),
        };
        // Reads the whole queue: a damaged page shows here, before crr writes anything.
        store.reload_tally().map_err(|e| damaged(e, &path))?;
        Ok(store)
    }

    /// Opens the state database in `dir` to read it: as [`Store::open`] does, unless crr may not
    /// write in `dir` (a read-only mount); then the database is read as it is, and nothing is
    /// written.
    pub fn open_for_reading(dir: &Path) -> Result<Store> {
        let path = dir.join("crr.db");
        if lock::writable(dir).is_ok() || !path.exists() {
            return Store::open(dir);
        }
        use rusqlite::OpenFlags;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let read = |conn: Connection| -> Result<Store> {
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            let version: i64 = conn.row("PRAGMA user_version", [], |r| r.get(0))?;
            if version != SCHEMA_VERSION {
                anyhow::bail!(
                    "it was written by another crr (state layout {version}; this crr knows layout \
                     {SCHEMA_VERSION}) and cannot be brought up to date where it cannot be written"
                );
            }
            let store = Store {
                conn: Mutex::new(conn),
                tally: Mutex::new(Tallies::default()),
                pending: group::Pending::default(),
                dir: dir.to_path_buf(),
            };
            store.reload_tally()?;
            Ok(store)
        };
        // The write-ahead log needs its shared-memory file, which a read-only directory may
        // lack: then the database file is read as it stands (a clean stop leaves it complete).
        let uri = |extra: &str| {
            let encoded =
                percent_encoding::utf8_percent_encode(&path.to_string_lossy(), percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
                    .replace("%2F", "/");
            format!("file:{encoded}?mode=ro{extra}")
        };
        Connection::open_with_flags(uri(""), flags)
            .map_err(anyhow::Error::from)
            .and_then(read)
            .or_else(|_| {
                Connection::open_with_flags(uri("&immutable=1"), flags)
                    .map_err(anyhow::Error::from)
                    .and_then(read)
            })
            .map_err(|e| damaged(e, &path))
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
}

#[cfg(test)]
pub(super) mod tests;
