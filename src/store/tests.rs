//! The store's tests: the queue's order and outcomes, pruning, and opening databases of other layouts (newer, damaged, older).

use super::*;

pub(super) fn change(key: &str, v: &str) -> NewChange {
    NewChange {
        queue: true,
        kind: TaskKind::Put,
        key: key.into(),
        version_id: v.into(),
        size: 1,
        etag: String::new(),
        source_time: 0,
        dest_absent: false,
    }
}

/// A store whose rule "r" is enabled, with its generation (keep the directory alive).
pub(super) fn enabled_store() -> (tempfile::TempDir, Store, i64) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let g = s.begin_enable("r", "scope", "sh/b").unwrap();
    assert!(s.finish_enable("r", g, 1).unwrap());
    (dir, s, g)
}

/// Records a running task done and claims the next, as a worker does (a group commit).
fn complete_and_claim(s: &Store, task: &Task, dest_version: Option<&str>, bytes: u64) -> (KeyTasks, Option<Task>) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(s.complete_and_claim_grouped(task, dest_version.map(str::to_owned), bytes, now_ms()))
        .unwrap()
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
fn completing_a_task_claims_the_next_one_it_held_back() {
    let (_dir, s, g) = enabled_store();
    s.queue_new("r", g, &[change("a", "v1"), change("a", "v2")]).unwrap();
    let v1 = s.claim(now_ms()).unwrap().unwrap();
    // v2 waits for v1 until v1 is done, and the same commit hands it out.
    let (key, v2) = complete_and_claim(&s, &v1, Some("d1"), 1);
    assert_eq!(
        key,
        KeyTasks {
            unfinished: 1,
            total: 2
        },
        "v2 is still queued"
    );
    let v2 = v2.unwrap();
    assert_eq!(
        (v2.version_id.as_str(), v2.attempts, v2.state.as_str()),
        ("v2", 1, "running")
    );
    assert_eq!(s.may_start(&v2).unwrap().start, Start::Go);
    let t = s.tally("r", None);
    assert_eq!((t.done.objects, t.running.objects, t.queued.objects), (1, 1, 0));
    let (key, next) = complete_and_claim(&s, &v2, Some("d2"), 1);
    assert_eq!(
        (key, next.is_none()),
        (
            KeyTasks {
                unfinished: 0,
                total: 2
            },
            true
        )
    );
    assert_eq!(s.tally("r", None).done.objects, 2);
    assert_eq!(s.replica_of("r", "a", "v1", g).unwrap(), Some(Some("d1".into())));
}

#[test]
fn a_claimed_task_whose_rule_was_held_meanwhile_goes_back_unstarted() {
    let (_dir, s, g) = enabled_store();
    s.queue_new("r", g, &[change("a", "v1"), change("b", "w1")]).unwrap();
    let a = s.claim(now_ms()).unwrap().unwrap();
    let b = complete_and_claim(&s, &a, Some("d1"), 1).1.unwrap();
    assert!(s.set_halted("r", Some("the destination stopped versioning")).unwrap());
    assert_eq!(s.may_start(&b).unwrap().start, Start::Held);
    s.unclaim(b.id).unwrap();
    let t = s.tally("r", None);
    assert_eq!((t.running.objects, t.queued.objects), (0, 1));
    assert!(s.claim(now_ms()).unwrap().is_none(), "held: nothing is handed out");
    s.set_halted("r", None).unwrap();
    let again = s.claim(now_ms()).unwrap().unwrap();
    assert_eq!(
        (again.id, again.attempts),
        (b.id, 1),
        "the unstarted claim cost no attempt"
    );
    s.disable("r", "disabled").unwrap();
    assert_eq!(s.may_start(&again).unwrap().start, Start::Dropped);
}

#[test]
fn an_older_task_waits_while_a_newer_one_of_its_key_runs() {
    let (_dir, s, g) = enabled_store();
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
    assert_eq!(s.may_start(&again).unwrap().start, Start::Superseded);
}

#[test]
fn a_migration_task_starts_with_its_overwrite_policy_unless_real_time_replaced_it() {
    let (_dir, s, g) = enabled_store();
    let id = s.create_migration("r", "never").unwrap().unwrap();
    let m = s.migration(id).unwrap().unwrap();
    assert!(
        s.add_migration_page(&m, g, &[change("a", "v1"), change("b", "w1")], (0, None), true)
            .unwrap()
    );
    let a = s.claim(now_ms()).unwrap().unwrap();
    assert_eq!(
        s.may_start(&a).unwrap(),
        StartCheck {
            start: Start::Go,
            overwrite: Some("never".into())
        }
    );
    // A real-time change of "b" comes while its migration task waits: the migration's copy
    // of the older version must not land over it.
    s.queue_new("r", g, &[change("b", "w2")]).unwrap();
    let b = complete_and_claim(&s, &a, Some("d1"), 1).1.unwrap();
    assert_eq!((b.version_id.as_str(), b.migration_id), ("w1", Some(id)));
    assert_eq!(s.may_start(&b).unwrap().start, Start::Superseded);
    s.skip(b.id, "superseded").unwrap();
    let rt = s.claim(now_ms()).unwrap().unwrap();
    assert_eq!(
        s.may_start(&rt).unwrap(),
        StartCheck {
            start: Start::Go,
            overwrite: None
        }
    );
}

#[test]
fn pruning_keeps_the_newest_replica_of_each_key() {
    let (_dir, s, g) = enabled_store();
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
fn a_database_of_a_newer_crr_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let path = dir.path().join("crr.db");
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = format!("{:#}", Store::open(dir.path()).err().expect("refused"));
    assert!(err.contains("newer crr") && err.contains("crr.db"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "the database was changed");
}

#[test]
fn a_damaged_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crr.db");
    for garbage in [
        b"this is not a database, it is a note somebody wrote here".to_vec(),
        // A real database's header with its pages overwritten.
        {
            drop(Store::open(dir.path()).unwrap());
            let mut bytes = std::fs::read(&path).unwrap();
            for b in bytes.iter_mut().skip(100) {
                *b = 0xA5;
            }
            let _ = std::fs::remove_file(dir.path().join("crr.db-wal"));
            let _ = std::fs::remove_file(dir.path().join("crr.db-shm"));
            bytes
        },
    ] {
        std::fs::write(&path, &garbage).unwrap();
        let err = format!("{:#}", Store::open(dir.path()).err().expect("refused"));
        assert!(
            err.contains("crr.db") && err.contains("damaged") && err.contains("aside"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            garbage,
            "the damaged database was changed"
        );
    }
}

#[test]
fn a_database_of_the_first_layout_is_upgraded_with_its_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crr.db");
    {
        // The first layout: no recorded version, tasks without `dest_absent`.
        let conn = Connection::open(&path).unwrap();
        let first = SCHEMA.replace(
            "    dest_absent INTEGER NOT NULL DEFAULT 0, -- migration: the destination's listing lacked the key\n",
            "",
        );
        let first = first.replace(
            "    replicated_bytes INTEGER NOT NULL DEFAULT 0,\n    halted TEXT                        -- why the rule's copies are held (e.g. versioning suspended)\n",
            "    replicated_bytes INTEGER NOT NULL DEFAULT 0\n",
        );
        assert!(!first.contains("dest_absent") && !first.contains("halted"));
        conn.execute_batch(&first).unwrap();
        conn.exec(
            "INSERT INTO tasks (rule_id, generation, kind, key, version_id, size, etag, source_time, state,
             created_at, updated_at) VALUES ('r', 1, 'put', 'k', 'v', 1, '', 0, 'failed', 0, 0)",
            [],
        )
        .unwrap();
        conn.exec(
            "INSERT INTO rules (rule_id, state, generation) VALUES ('r', 'enabled', 1)",
            [],
        )
        .unwrap();
    }
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.tasks_in(&["failed"], 10).unwrap().len(), 1);
    assert_eq!(s.rule_state("r").unwrap().unwrap().halted, None);
    assert!(s.set_halted("r", Some("versioning is Suspended")).unwrap());
    assert_eq!(s.tally("r", None).failed.objects, 1);
}

#[test]
fn disable_drops_queue() {
    let (_dir, s, g) = enabled_store();
    s.queue_new("r", g, &[change("a", "v1")]).unwrap();
    s.disable("r", "disabled").unwrap();
    assert!(s.claim(now_ms()).unwrap().is_none());
    assert_eq!(s.backlog("r").unwrap().pending_tasks, 0);
}

/// Processes opening a new state directory at the same moment (`crr status` polling while
/// `crr serve` starts) each wait for the other's set-up rather than fail with "database is
/// locked".
#[test]
fn stores_opened_at_once_on_a_new_directory_all_open() {
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let start = std::sync::Barrier::new(4);
        std::thread::scope(|s| {
            let opened: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        Store::open(dir.path()).map(|_| ())
                    })
                })
                .collect();
            for o in opened {
                if let Err(e) = o.join().unwrap() {
                    panic!("{e:#}");
                }
            }
        });
    }
}
