//! What crr recorded of the replica each task was about to write: its size, the ETag the
//! destination should give it (once that can be known) and a digest of its content headers,
//! user metadata and tags. Written before the write is sent, so that a task retried after a
//! crash can tell whether the destination's latest version is the write that landed.

use super::{Cached, Store, quick};
use anyhow::Result;
use rusqlite::{Connection, OptionalExtension, params};

/// Run by `Store::open`.
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS replicas (
    task_id INTEGER PRIMARY KEY,
    size INTEGER NOT NULL,
    etag TEXT,                         -- expected ETag, without quotes, lower case; NULL: not known
    digest TEXT NOT NULL               -- content headers, user metadata and tags
);
"#;

/// The fingerprint of one replica crr wrote, or was about to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub size: u64,
    /// `None` until it can be known: a multipart upload's ETag follows from its parts, and is
    /// recorded just before the upload is completed.
    pub etag: Option<String>,
    pub digest: String,
}

impl Store {
    /// Records the replica the task is about to write, replacing what an earlier attempt
    /// recorded.
    pub fn record_replica(&self, task_id: i64, replica: &Replica) -> Result<()> {
        quick(|| record_in(&self.db(), task_id, replica))
    }

    /// Forgets what the task wrote: that write was found wrong, and a later attempt must copy
    /// again rather than find it "already there".
    pub fn forget_replica(&self, task_id: i64) -> Result<()> {
        quick(|| {
            self.db().exec("DELETE FROM replicas WHERE task_id = ?1", [task_id])?;
            Ok(())
        })
    }

    /// Sets the ETag the task's replica is expected to get.
    pub fn set_replica_etag(&self, task_id: i64, etag: &str) -> Result<()> {
        quick(|| {
            self.db().exec(
                "UPDATE replicas SET etag = ?2 WHERE task_id = ?1",
                params![task_id, etag],
            )?;
            Ok(())
        })
    }

    /// What the task recorded of the replica it was writing, if anything.
    pub fn replica(&self, task_id: i64) -> Result<Option<Replica>> {
        quick(|| self.replica_now(task_id))
    }

    fn replica_now(&self, task_id: i64) -> Result<Option<Replica>> {
        Ok(self
            .db()
            .row(
                "SELECT size, etag, digest FROM replicas WHERE task_id = ?1",
                [task_id],
                |r| {
                    Ok(Replica {
                        size: r.get::<_, i64>(0)? as u64,
                        etag: r.get(1)?,
                        digest: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }
}

pub(super) fn record_in(db: &Connection, task_id: i64, replica: &Replica) -> Result<()> {
    db.exec(
        "INSERT OR REPLACE INTO replicas (task_id, size, etag, digest) VALUES (?1, ?2, ?3, ?4)",
        params![task_id, replica.size as i64, replica.etag, replica.digest],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_is_recorded_then_given_its_etag() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.replica(7).unwrap(), None);
        let mut r = Replica {
            size: 12,
            etag: None,
            digest: "d".into(),
        };
        s.record_replica(7, &r).unwrap();
        assert_eq!(s.replica(7).unwrap(), Some(r.clone()));
        s.set_replica_etag(7, "abc-2").unwrap();
        r.etag = Some("abc-2".into());
        assert_eq!(s.replica(7).unwrap(), Some(r.clone()));
        // A new attempt replaces the record.
        r.size = 13;
        s.record_replica(7, &r).unwrap();
        assert_eq!(s.replica(7).unwrap().map(|x| x.size), Some(13));
    }
}
