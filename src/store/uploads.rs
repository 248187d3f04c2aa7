//! Multipart uploads in progress: each task's upload id, part size and verified parts.

use super::*;

impl Store {
    /// Records the task's multipart upload and its part size (or forgets it: `None`); the
    /// parts recorded for an earlier upload are forgotten either way.
    pub fn set_upload(&self, task_id: i64, upload: Option<(&str, u64)>) -> Result<()> {
        quick(|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            tx.exec(
                "UPDATE tasks SET upload_id = ?2, upload_part_size = ?3 WHERE id = ?1",
                params![task_id, upload.map(|u| u.0), upload.map(|u| u.1 as i64)],
            )?;
            tx.exec("DELETE FROM parts WHERE task_id = ?1", [task_id])?;
            tx.commit()?;
            Ok(())
        })
    }

    /// The part size the task's open upload was started with.
    pub fn upload_part_size(&self, task_id: i64) -> Result<Option<u64>> {
        quick(|| {
            Ok(self
                .db()
                .row("SELECT upload_part_size FROM tasks WHERE id = ?1", [task_id], |r| {
                    r.get::<_, Option<i64>>(0)
                })
                .optional()?
                .flatten()
                .map(|v| v as u64))
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
                Ok((
                    task_from_row(r)?,
                    r.get::<_, Option<String>>(TASK_COLUMNS.split(',').count())?
                        .unwrap_or_default(),
                ))
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    pub fn tasks_upload(&self, task_id: i64) -> Result<Option<String>> {
        quick(|| {
            Ok(self
                .db()
                .row("SELECT upload_id FROM tasks WHERE id = ?1", [task_id], |r| r.get(0))
                .optional()?
                .flatten())
        })
    }

    pub fn add_part(&self, task_id: i64, part: i32, etag: &str, size: u64) -> Result<()> {
        quick(|| {
            self.db().exec(
                "INSERT OR REPLACE INTO parts (task_id, part_number, etag, size) VALUES (?1, ?2, ?3, ?4)",
                params![task_id, part, etag, size as i64],
            )?;
            Ok(())
        })
    }

    /// Forgets one uploaded part (found not to be what the source holds).
    pub fn remove_part(&self, task_id: i64, part: i32) -> Result<()> {
        quick(|| {
            self.db().exec(
                "DELETE FROM parts WHERE task_id = ?1 AND part_number = ?2",
                params![task_id, part],
            )?;
            Ok(())
        })
    }

    pub fn parts(&self, task_id: i64) -> Result<Vec<(i32, String, u64)>> {
        quick(|| {
            let db = self.db();
            let mut st =
                db.prepare("SELECT part_number, etag, size FROM parts WHERE task_id = ?1 ORDER BY part_number")?;
            let rows = st.query_map([task_id], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }
}
