//! One engine per state directory: an exclusive lock on `STATE_DIR/engine.lock`, released by
//! the operating system when the process ends, however it ends. The file holds the holder's pid.

use anyhow::{Context, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

pub struct EngineLock {
    _file: File,
}

/// Another engine holds the lock.
#[derive(Debug, thiserror::Error)]
#[error(
    "another crr engine (pid {pid}) is running on the state directory {dir}: stop it first, or send it commands with `crr rule`, `crr migrate` and `crr retry` (they reach it through its socket), and read its progress with `crr status`"
)]
pub struct LockHeld {
    pub pid: String,
    pub dir: String,
}

impl EngineLock {
    /// Takes the lock, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<std::result::Result<EngineLock, LockHeld>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("engine.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0)?;
                file.seek(SeekFrom::Start(0))?;
                write!(file, "{}", std::process::id())?;
                file.flush()?;
                Ok(Ok(EngineLock { _file: file }))
            }
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = if pid.trim().is_empty() {
                    "unknown".to_string()
                } else {
                    pid.trim().to_string()
                };
                Ok(Err(LockHeld {
                    pid,
                    dir: dir.display().to_string(),
                }))
            }
            Err(TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }
}
