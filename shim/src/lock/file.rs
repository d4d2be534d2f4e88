//! The file backend's primitives: an flock on one file, with the holder's identity written inside.
//!
//! Why flock on an open file, and nothing cleverer:
//! - the kernel drops it when the descriptor closes, however the process ends (SIGKILL, OOM kill,
//!   panic), so a dead shim can never leave a stale lock behind;
//! - std opens files with `O_CLOEXEC`, so no child inherits the descriptor by accident; the
//!   engine is handed it on purpose (`InheritedLock`), so the lock outlives a killed shim until its
//!   engine is dead too;
//! - a blocked `flock(LOCK_EX)` returns the moment the holder closes or dies: waiters wake at once,
//!   with no polling interval.
//!
//! The file itself is never deleted: deleting a lock file while it is held would let the next shim
//! lock a fresh file beside it. A waiter that finds its file replaced after all re-opens the new one.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::HolderInfo;

/// The tail of every error: the three ways out an operator has.
const WAYS_OUT: &str = "pass --lock-dir DIR / --lock file:PATH / --lock none";

/// How many times a lock is re-taken because its file was replaced, before giving up.
const MAX_REOPENS: usize = 8;

/// Holder information longer than this is not ours: it is ignored rather than read whole.
const MAX_HOLDER_BYTES: usize = 4096;

/// One open lock file. The flock, when taken, lives exactly as long as this value.
#[derive(Debug)]
pub(super) struct LockFile {
    file: File,
    path: PathBuf,
}

/// What a non-blocking attempt found.
#[derive(Debug)]
pub(super) enum TryLock {
    /// The flock is ours.
    Got(LockFile),
    /// Another open file (another shim, or another `Lock` in this one) holds it.
    Busy(LockFile),
}

impl LockFile {
    /// Opens (creating with mode 0644 if needed) the lock file. The directory is never created:
    /// a missing directory usually means a wrong path, and a lock in a directory nobody else looks
    /// at excludes nothing.
    pub(super) fn open(path: &Path) -> Result<LockFile, String> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(|err| open_error(path, &err))?;
        Ok(LockFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Takes the flock if it is free; never blocks.
    pub(super) fn try_lock(path: &Path) -> Result<TryLock, String> {
        for _ in 0..MAX_REOPENS {
            let lock = LockFile::open(path)?;
            match lock.file.try_lock() {
                Ok(()) if lock.is_current()? => return Ok(TryLock::Got(lock)),
                // Locked a file that was replaced meanwhile: take the one now at `path`.
                Ok(()) => continue,
                Err(TryLockError::WouldBlock) => return Ok(TryLock::Busy(lock)),
                Err(TryLockError::Error(err)) => return Err(lock.lock_error(&err)),
            }
        }
        Err(replaced_error(path))
    }

    /// Blocks the calling thread until the flock is ours.
    pub(super) fn lock(mut self) -> Result<LockFile, String> {
        for _ in 0..MAX_REOPENS {
            loop {
                match self.file.lock() {
                    Ok(()) => break,
                    Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                    Err(err) => return Err(self.lock_error(&err)),
                }
            }
            if self.is_current()? {
                return Ok(self);
            }
            self = LockFile::open(&self.path)?;
        }
        Err(replaced_error(&self.path))
    }

    /// Whoever wrote their information last; `None` if there is none or it cannot be read.
    pub(super) fn holder(&self) -> Option<HolderInfo> {
        let mut buf = vec![0; MAX_HOLDER_BYTES];
        let len = self.file.read_at(&mut buf, 0).ok()?;
        serde_json::from_slice(buf[..len].trim_ascii()).ok()
    }

    /// Replaces the file's content with `me`, as one JSON line.
    pub(super) fn write_holder(&self, me: &HolderInfo) -> io::Result<()> {
        let mut line = serde_json::to_vec(me).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.set_len(0)?;
        self.file.write_all_at(&line, 0)
    }

    /// Empties the file, so nobody reads a holder that is gone.
    pub(super) fn clear_holder(&self) -> io::Result<()> {
        self.file.set_len(0)
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Whether `path` still names the file this descriptor has open.
    fn is_current(&self) -> Result<bool, String> {
        let open = self
            .file
            .metadata()
            .map_err(|err| format!("cannot inspect lock file {}: {err}", self.path.display()))?;
        match std::fs::metadata(&self.path) {
            Ok(now) => Ok(now.dev() == open.dev() && now.ino() == open.ino()),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(false),
            Err(err) => Err(format!(
                "cannot inspect lock file {}: {err}",
                self.path.display()
            )),
        }
    }

    fn lock_error(&self, err: &io::Error) -> String {
        format!(
            "cannot lock {}: {err}: put the lock on a local file system, or {WAYS_OUT}",
            self.path.display()
        )
    }
}

/// Names the cause and the fix for a lock file that cannot be opened.
fn open_error(path: &Path, err: &io::Error) -> String {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let path = path.display();
    match err.kind() {
        ErrorKind::NotFound if !dir.is_dir() => format!(
            "lock directory {} does not exist: create it, or {WAYS_OUT}",
            dir.display()
        ),
        ErrorKind::PermissionDenied => format!(
            "cannot open lock file {path}: permission denied: let this user write {} (and the \
             file, if it exists), or {WAYS_OUT}",
            dir.display()
        ),
        ErrorKind::ReadOnlyFilesystem => format!(
            "cannot create lock file {path}: the file system is read-only: put the lock on a \
             writable volume, or {WAYS_OUT}"
        ),
        ErrorKind::IsADirectory => {
            format!("lock path {path} is a directory: name a file inside it, or {WAYS_OUT}")
        }
        _ => format!("cannot open lock file {path}: {err}: {WAYS_OUT}"),
    }
}

fn replaced_error(path: &Path) -> String {
    format!(
        "lock file {} keeps being replaced while it is locked: stop whatever deletes it (a lock \
         file must never be deleted), or {WAYS_OUT}",
        path.display()
    )
}
