//! One engine per state directory: an exclusive lock on `STATE_DIR/engine.lock`, released by
//! the operating system when the process ends, however it ends. The file holds the holder's pid.
//! Also the state directory's privacy: it is created 0700, and one crr finds open to other
//! users is made private again, or named in a warning.

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
        create_state_dir(dir)?;
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

/// Creates the state directory (and any missing parents) with mode 0700, so that nobody else
/// reads the queue, the log or the socket. One that exists is left as it is.
pub fn create_state_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EROFS | libc::EACCES | libc::EPERM) => anyhow::anyhow!(
                "the state directory {} cannot be created ({e}): crr keeps its queue, its log and \
                 its lock there. Point --state (or CRR_STATE) at a directory this user may write in",
                dir.display()
            ),
            _ => anyhow::Error::new(e).context(format!("creating the state directory {}", dir.display())),
        })?;
    writable(dir).map_err(|e| not_writable(dir, &e))
}

/// Whether this process may write in the existing directory `dir` (a read-only mount, or
/// permissions, may forbid it).
pub fn writable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `path` is a valid NUL-terminated string; access() has no other preconditions.
    if unsafe { libc::access(path.as_ptr(), libc::W_OK) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The error for a state directory crr may not write in.
fn not_writable(dir: &Path, e: &std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "the state directory {} cannot be written ({e}): crr keeps its queue, its log and its lock \
         there, and changed nothing in it. Make it writable again (remount it read-write, or give \
         this user write permission), or point --state (or CRR_STATE) at another directory; \
         `crr status` can still read it as it is",
        dir.display()
    )
}

/// Checks that an existing state directory is closed to other users; `None` when it is (or does
/// not exist yet), else what an operator should read. crr makes it private itself (takes the
/// group's and others' permissions away) when the directory is its own: owned by this user and
/// holding only crr's files. Any other directory (`--state /tmp`, say) is only named in a
/// warning.
pub fn check_state_dir(dir: &Path) -> Option<String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(dir).ok()?;
    let mode = meta.permissions().mode() & 0o777;
    if !meta.is_dir() || mode & 0o077 == 0 {
        return None;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let ours = meta.uid() == unsafe { libc::geteuid() } && holds_only_crr_files(dir);
    let what = format!(
        "the state directory {} is open to other users (mode {mode:03o}): they could read its queue and log",
        dir.display()
    );
    if ours {
        // Only other users' bits are taken away: a directory made read-only stays so.
        let private = mode & 0o700;
        match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(private)) {
            Ok(()) => return Some(format!("{what}; crr made it private (mode {private:03o})")),
            Err(e) => {
                return Some(format!(
                    "{what}, and crr could not change it ({e}): run `chmod 700 {}`",
                    dir.display()
                ));
            }
        }
    }
    Some(format!(
        "{what}: run `chmod 700 {}`, or use a directory of its own",
        dir.display()
    ))
}

/// True when every entry of `dir` is one crr makes there.
fn holds_only_crr_files(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().all(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.starts_with("crr.") || name.starts_with(".crr.") || name == "engine.lock"
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    }

    #[test]
    fn the_state_directory_is_created_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/state");
        create_state_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(check_state_dir(&dir), None);
    }

    #[test]
    fn an_open_state_directory_of_crr_is_made_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("crr.db"), b"").unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let note = check_state_dir(&dir).unwrap();
        assert!(note.contains("mode 755") && note.contains("made it private"), "{note}");
        assert_eq!(mode(&dir), 0o700);
        // Read-only stays read-only.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        let note = check_state_dir(&dir).unwrap();
        assert!(note.contains("mode 555") && note.contains("(mode 500)"), "{note}");
        assert_eq!(mode(&dir), 0o500);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn a_shared_directory_is_only_warned_about() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shared");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("someone-elses-file"), b"").unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
        let note = check_state_dir(&dir).unwrap();
        assert!(
            note.contains("chmod 700") && note.contains(&dir.display().to_string()),
            "{note}"
        );
        assert_eq!(mode(&dir), 0o775);
    }
}
