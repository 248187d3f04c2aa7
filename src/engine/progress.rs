//! Live progress of running copies, kept in memory by the engine and read by its drivers:
//! bytes done, part i of n, attempt. Updated per chunk here; drivers sample it.

use aws_sdk_s3::primitives::ByteStream;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct TaskProgress {
    pub task_id: i64,
    pub rule_id: String,
    pub key: String,
    pub size: u64,
    pub bytes_done: u64,
    pub parts_done: u32,
    pub parts_total: u32,
    pub attempt: u32,
    pub started: Instant,
}

#[derive(Default)]
pub struct Progress {
    running: Mutex<HashMap<i64, TaskProgress>>,
}

impl Progress {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<i64, TaskProgress>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn start(&self, p: TaskProgress) {
        self.map().insert(p.task_id, p);
    }

    pub fn finish(&self, task_id: i64) {
        self.map().remove(&task_id);
    }

    pub fn set(&self, task_id: i64, f: impl FnOnce(&mut TaskProgress)) {
        if let Some(p) = self.map().get_mut(&task_id) {
            f(p);
        }
    }

    /// A copy of what runs now, ordered by task id.
    pub fn snapshot(&self) -> Vec<TaskProgress> {
        let mut v: Vec<TaskProgress> = self.map().values().cloned().collect();
        v.sort_by_key(|p| p.task_id);
        v
    }

    /// Reads one part's body into memory, counting the bytes as they arrive.
    pub async fn read_part(&self, task_id: i64, mut body: ByteStream) -> Result<Bytes, String> {
        let mut buf = BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            self.set(task_id, |p| p.bytes_done += chunk.len() as u64);
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}
