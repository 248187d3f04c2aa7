//! Group commit: the writes every copy makes (recording the replica it is about to write;
//! recording its outcome and claiming the next task) are committed together with those other
//! copies ask for at about the same time. Each caller still waits for its own write to be on
//! disk, and each write is applied as it would be alone; they just share one transaction.
//!
//! A commit, not its statements, was most of the store's cost per task: the write-ahead log's
//! pages and checksums, and the file locks SQLite takes for every transaction.

use super::queue::{claim_in, complete_in};
use super::replica::Replica;
use super::{KeyTasks, Store, Task};
use anyhow::{Result, anyhow};
use rusqlite::Connection;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::oneshot;

/// The writes waiting for the next group commit, and how many groups were committed.
#[derive(Default)]
pub(super) struct Pending(Mutex<Vec<Box<dyn Grouped>>>, AtomicU64);

/// One caller's write in a group.
trait Grouped: Send {
    /// Applies the write in the group's transaction.
    fn apply(&mut self, db: &Connection) -> Result<()>;
    /// Hands the caller its result once the group committed (or did not).
    fn answer(self: Box<Self>, store: &Store, committed: &std::result::Result<(), String>);
}

struct Write<R, F> {
    apply: Option<F>,
    out: Option<Result<R>>,
    /// Moves the store's counts once the write is on disk.
    after: fn(&Store, &R),
    reply: oneshot::Sender<Result<R>>,
}

impl<R, F> Grouped for Write<R, F>
where
    R: Send + 'static,
    F: FnOnce(&Connection) -> Result<R> + Send + 'static,
{
    fn apply(&mut self, db: &Connection) -> Result<()> {
        let f = self.apply.take().expect("a write is applied once");
        // A write that fails is undone alone; the others in the group go on.
        db.execute_batch("SAVEPOINT grouped")?;
        let r = f(db);
        if r.is_ok() {
            db.execute_batch("RELEASE grouped")?;
        } else {
            db.execute_batch("ROLLBACK TO grouped; RELEASE grouped")?;
        }
        self.out = Some(r);
        Ok(())
    }

    fn answer(self: Box<Self>, store: &Store, committed: &std::result::Result<(), String>) {
        let out = match (self.out, committed) {
            (Some(Ok(r)), Ok(())) => {
                (self.after)(store, &r);
                Ok(r)
            }
            (Some(Err(e)), _) => Err(e),
            (_, Err(e)) => Err(anyhow!("{e}")),
            (None, Ok(())) => Err(anyhow!("the write was not applied")),
        };
        let _ = self.reply.send(out);
    }
}

/// Commits the store's waiting writes when dropped: by the first caller of a group once it
/// has waited for others, or as it is cancelled.
struct CommitOnDrop<'a>(&'a Store);

impl Drop for CommitOnDrop<'_> {
    fn drop(&mut self) {
        // In place, as the other writes of one task are (see `quick`): handing the runtime's
        // thread over, or waking another, costs more than the commit.
        super::quick(|| self.0.commit_group());
    }
}

impl Store {
    /// Runs `apply` in the next group commit and returns its result once that is on disk;
    /// `after` then moves the store's counts. The first caller of a group commits it, after
    /// letting the tasks ready to run add theirs; a first caller that stops waiting (a copy
    /// cancelled meanwhile) commits the group as it goes, so it holds up no one else.
    async fn grouped<R, F>(&self, apply: F, after: fn(&Store, &R)) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let first = {
            let mut pending = self.pending.0.lock().unwrap_or_else(|p| p.into_inner());
            pending.push(Box::new(Write {
                apply: Some(apply),
                out: None,
                after,
                reply,
            }));
            pending.len() == 1
        };
        if first {
            let commit = CommitOnDrop(self);
            // Copies that finished meanwhile, ready to run, ask for their writes first.
            tokio::task::yield_now().await;
            drop(commit);
        }
        answer
            .await
            .map_err(|_| anyhow!("the state database's writer stopped"))?
    }

    /// Commits every write waiting, in one transaction.
    fn commit_group(&self) {
        let mut db = self.db();
        let mut writes = std::mem::take(&mut *self.pending.0.lock().unwrap_or_else(|p| p.into_inner()));
        let committed = (|| -> Result<()> {
            let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for w in &mut writes {
                w.apply(&tx)?;
            }
            tx.commit()?;
            self.pending.1.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })()
        .map_err(|e| format!("{e:#}"));
        for w in writes {
            w.answer(self, &committed);
        }
    }

    /// [`Store::record_replica`], in a group commit.
    pub async fn record_replica_grouped(&self, task_id: i64, replica: Replica) -> Result<()> {
        self.grouped(move |db| super::replica::record_in(db, task_id, &replica), |_, _| ())
            .await
    }

    /// Marks a running task done, counting its bytes for its rule (as [`Store::complete`]),
    /// and claims the next task in the same commit, as a worker that finished a copy does.
    pub async fn complete_and_claim_grouped(
        &self,
        task: &Task,
        dest_version: Option<String>,
        bytes: u64,
        now: i64,
    ) -> Result<(KeyTasks, Option<Task>)> {
        type Out = (Task, bool, KeyTasks, Option<Task>);
        let done_task = task.clone();
        let (_, _, key, next) = self
            .grouped(
                move |db| {
                    let (done, key) = complete_in(db, &done_task, dest_version.as_deref(), bytes)?;
                    let next = claim_in(db, now)?;
                    Ok((done_task, done, key, next))
                },
                |store: &Store, (task, done, _, next): &Out| {
                    store.completed(task, *done);
                    store.count_claimed(next.as_ref());
                },
            )
            .await?;
        Ok((key, next.map(Store::as_claimed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::enabled_store;

    fn replica(size: u64) -> Replica {
        Replica {
            size,
            etag: None,
            digest: "d".into(),
        }
    }

    #[tokio::test]
    async fn writes_asked_for_together_share_a_commit_and_a_failed_one_alone_is_undone() {
        let (_dir, s, _) = enabled_store();
        let failing = s.grouped(
            |db| {
                super::super::replica::record_in(db, 99, &replica(99))?;
                anyhow::bail!("this write fails after its insert")
            },
            |_, _: &()| (),
        );
        let good = (1..=8).map(|id| s.record_replica_grouped(id, replica(id as u64)));
        let (failed, recorded) = tokio::join!(failing, futures::future::join_all(good));
        assert!(failed.unwrap_err().to_string().contains("fails after its insert"));
        for (id, r) in (1..=8).zip(recorded) {
            r.unwrap();
            assert_eq!(s.replica(id).unwrap(), Some(replica(id as u64)));
        }
        assert_eq!(s.replica(99).unwrap(), None, "the failed write's insert was undone");
        assert_eq!(
            s.pending.1.load(Ordering::Relaxed),
            1,
            "the nine writes were one commit"
        );
    }
}
