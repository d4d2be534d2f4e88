//! The file backend's primitives: an flock on one file, with the holder's identity written inside,
//! and an *anchor* on the file's directory that survives the file being deleted or replaced.
//!
//! Why flock on an open file:
//! - the kernel drops it when the descriptor closes, however the process ends (SIGKILL, OOM kill,
//!   panic), so a dead shim can never leave a stale lock behind;
//! - std opens files with `O_CLOEXEC`, so no child inherits the descriptor by accident; the
//!   engine's guardian (and the engine) are handed it on purpose (`InheritedLock`), so the lock
//!   outlives a killed shim until the engine's whole process tree is dead too;
//! - a blocked `flock(LOCK_EX)` returns the moment the holder closes or dies: waiters wake at once,
//!   with no polling interval.
//!
//! # The anchor: a lock file that is deleted or replaced while held
//! A lock on a file is a lock on an inode, and a path can be made to name another inode at any
//! time (`rm`, a tmp cleaner, `mv other engine-shim.lock`). A shim opening the path afterwards
//! would create or find a fresh, unlocked file and start its engine beside the running one. So
//! every holder also keeps an open file description (OFD) *read* lock on one byte of the lock's
//! **directory**, at an offset derived from the file's name. A directory cannot be replaced by
//! deleting a file in it, read locks never exclude each other (holders of different lock files in
//! one directory do not interfere), and `F_OFD_GETLK` lets anyone see whether another open file
//! description holds that byte. The rule, for every acquisition:
//! 1. take the flock on the file the path names (blocking, or not);
//! 2. place our anchor (before looking, so two newcomers cannot both miss each other);
//! 3. if the path no longer names our file, let both go and start again (this also breaks the tie
//!    between two processes that each hold a different file of the same name);
//! 4. if another description holds the anchor, somebody still holds a lock on a file that used to
//!    be at this path (its engine runs): wait, looking again every [`ANCHOR_POLL`];
//! 5. otherwise the lock is ours.
//!
//! Of two holders at once, the one that looked last would have seen the other's anchor, placed
//! before that one looked: so no two acquisitions of one path in one directory ever both succeed
//! while both hold. What the anchor cannot survive is the **directory** itself being deleted or
//! replaced while held (a new directory is a new inode): the README says so.
//!
//! The lock path is never followed if it is a symbolic link, and anything but a regular file with
//! a single link is refused: a root shim must not be led into writing into (or emptying) a file
//! that is not its lock. The file itself is never deleted by the shim.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::HolderInfo;

/// The tail of every error: the three ways out an operator has.
const WAYS_OUT: &str = "pass --lock-dir DIR / --lock file:PATH / --lock none";

/// How many times a lock is re-taken because its file was replaced, before giving up.
const MAX_REOPENS: usize = 8;

/// Holder information longer than this is not ours: it is ignored rather than read whole.
const MAX_HOLDER_BYTES: usize = 4096;

/// How often a waiter looks again while the holder of a deleted or replaced lock file lives on:
/// at first after 1 ms, doubling up to 50 ms. There is no notification for an OFD lock going away
/// to block on; a long wait only happens after somebody deleted a held lock file. The short first
/// looks cover a holder caught between closing its file and closing its anchor (see
/// [`LockFile`]'s field order), so an ordinary hand-over is not delayed by a whole poll.
pub(super) const ANCHOR_POLL_FIRST: Duration = Duration::from_millis(1);
pub(super) const ANCHOR_POLL: Duration = Duration::from_millis(50);

/// One open lock file and its directory's anchor. The flock and the anchor, when taken, live
/// exactly as long as this value (and the copies of its descriptors an engine inherited).
///
/// The anchor is let go *before* the flock, so a waiter woken by the flock does not find the
/// anchor still held by the holder it just replaced: `anchor` is declared (and so dropped) first,
/// and its directory is opened first, so its descriptor number is the lower one and a process that
/// exits with both (the guardian, the engine) closes it first too.
#[derive(Debug)]
pub(super) struct LockFile {
    anchor: Anchor,
    file: File,
    path: PathBuf,
}

/// What a non-blocking attempt found.
#[derive(Debug)]
pub(super) enum TryLock {
    /// The flock and the anchor are ours.
    Got(LockFile),
    /// Another open file (another shim, or another `Lock` in this one) holds it, or the holder of
    /// a file that used to be at this path still lives.
    Busy(LockFile),
}

impl LockFile {
    /// Opens (creating with mode 0644 if needed) the lock file and its directory. The directory
    /// is never created: a missing directory usually means a wrong path, and a lock in a directory
    /// nobody else looks at excludes nothing. A symbolic link at the path is never followed, and
    /// anything but a regular file with one link is refused.
    pub(super) fn open(path: &Path) -> Result<LockFile, String> {
        refuse_what_is_not_a_lock_file(path)?;
        let anchor = Anchor::open(path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            // The check above may race with someone placing a link: the kernel refuses it then.
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|err| open_error(path, &err))?;
        let opened = file
            .metadata()
            .map_err(|err| format!("cannot inspect lock file {}: {err}", path.display()))?;
        check_is_a_lock_file(path, &opened)?;
        Ok(LockFile {
            anchor,
            file,
            path: path.to_path_buf(),
        })
    }

    /// Takes the flock and the anchor if both are free; never blocks.
    pub(super) fn try_lock(path: &Path) -> Result<TryLock, String> {
        for _ in 0..MAX_REOPENS {
            let lock = LockFile::open(path)?;
            match lock.file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => return Ok(TryLock::Busy(lock)),
                Err(TryLockError::Error(err)) => return Err(lock.lock_error(&err)),
            }
            match lock.settle()? {
                Settled::Ours => return Ok(TryLock::Got(lock)),
                Settled::Orphan => return Ok(TryLock::Busy(lock)),
                // Locked a file that was replaced meanwhile: take the one now at `path`.
                Settled::Replaced => continue,
            }
        }
        Err(replaced_error(path))
    }

    /// Blocks the calling thread until the flock and the anchor are ours.
    pub(super) fn lock(mut self) -> Result<LockFile, String> {
        let mut reopens = 0;
        let mut told = false;
        let mut poll = ANCHOR_POLL_FIRST;
        loop {
            loop {
                match self.file.lock() {
                    Ok(()) => break,
                    Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                    Err(err) => return Err(self.lock_error(&err)),
                }
            }
            match self.settle()? {
                Settled::Ours => return Ok(self),
                Settled::Orphan => {
                    std::thread::sleep(poll);
                    poll = (poll * 2).min(ANCHOR_POLL);
                    if !told && poll == ANCHOR_POLL {
                        told = true;
                        tracing::warn!(
                            lock = %self.path.display(),
                            "lock file {} was deleted or replaced while held, and its holder's \
                             engine still runs; waiting until it has ended",
                            self.path.display()
                        );
                    }
                }
                Settled::Replaced => {
                    reopens += 1;
                    if reopens >= MAX_REOPENS {
                        return Err(replaced_error(&self.path));
                    }
                    self = LockFile::open(&self.path)?;
                }
            }
        }
    }

    /// Steps 2 to 5 of the rule in the module docs, with the flock already held.
    fn settle(&self) -> Result<Settled, String> {
        self.anchor.hold()?;
        if !self.is_current()? {
            return Ok(Settled::Replaced);
        }
        if self.anchor.held_by_another()? {
            return Ok(Settled::Orphan);
        }
        Ok(Settled::Ours)
    }

    /// Whoever wrote their information last; `None` if there is none or it cannot be read.
    pub(super) fn holder(&self) -> Option<HolderInfo> {
        let mut buf = vec![0; MAX_HOLDER_BYTES];
        let len = self.file.read_at(&mut buf, 0).ok()?;
        serde_json::from_slice(buf[..len].trim_ascii()).ok()
    }

    /// Replaces the file's content with `me`, as one JSON line. Only ever called on a file that
    /// was checked to be a regular file with one link, and that we hold.
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

    /// The descriptors that keep this lock: the file (flock) and its directory (anchor).
    pub(super) fn raw_fds(&self) -> [RawFd; 2] {
        [self.file.as_raw_fd(), self.anchor.dir.as_raw_fd()]
    }

    /// Whether `path` still names the file this descriptor has open.
    fn is_current(&self) -> Result<bool, String> {
        let open = self
            .file
            .metadata()
            .map_err(|err| format!("cannot inspect lock file {}: {err}", self.path.display()))?;
        match std::fs::symlink_metadata(&self.path) {
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

/// Where an acquisition stands once the flock on some file is held.
enum Settled {
    Ours,
    /// The holder of a file that used to be at this path still holds the anchor.
    Orphan,
    /// The path names another file now.
    Replaced,
}

/// An OFD read lock on one byte of the lock file's directory (see the module docs).
#[derive(Debug)]
struct Anchor {
    dir: File,
    /// The byte, derived from the lock file's name, so lock files sharing a directory each have
    /// their own.
    offset: i64,
    dir_path: PathBuf,
}

impl Anchor {
    fn open(path: &Path) -> Result<Anchor, String> {
        let dir_path = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&dir_path)
            .map_err(|err| match err.kind() {
                ErrorKind::NotFound => format!(
                    "lock directory {} does not exist: create it, or {WAYS_OUT}",
                    dir_path.display()
                ),
                _ => format!(
                    "cannot open lock directory {}: {err}: {WAYS_OUT}",
                    dir_path.display()
                ),
            })?;
        let name = path.file_name().unwrap_or(OsStr::new(""));
        Ok(Anchor {
            dir,
            offset: anchor_offset(name.as_bytes()),
            dir_path,
        })
    }

    /// Places our read lock on the byte; repeating it is harmless.
    fn hold(&self) -> Result<(), String> {
        let mut lock = self.request(libc::F_RDLCK);
        self.fcntl(libc::F_OFD_SETLK, &mut lock)
    }

    /// Whether another open file description holds a lock on the byte.
    fn held_by_another(&self) -> Result<bool, String> {
        // Asking whether an exclusive lock could be placed reports any other description's read
        // lock (our own never conflicts with us).
        let mut lock = self.request(libc::F_WRLCK);
        self.fcntl(libc::F_OFD_GETLK, &mut lock)?;
        Ok(i32::from(lock.l_type) != libc::F_UNLCK)
    }

    fn request(&self, kind: i32) -> libc::flock {
        // SAFETY: `flock` is a plain C struct for which all-zero bytes are a valid value.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = kind as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        lock.l_start = self.offset;
        lock.l_len = 1;
        lock
    }

    fn fcntl(&self, command: i32, lock: &mut libc::flock) -> Result<(), String> {
        // SAFETY: the descriptor is open for the life of `self`, and `lock` is a valid `flock`
        // that the kernel reads (and, for GETLK, writes) only during the call.
        let result = unsafe { libc::fcntl(self.dir.as_raw_fd(), command, lock as *mut _) };
        if result == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        Err(format!(
            "cannot place the lock's anchor on directory {}: {err}: put the lock on a local file \
             system, or {WAYS_OUT}",
            self.dir_path.display()
        ))
    }
}

/// A byte offset in `0..2^62` for the lock file named `name`: xxh64 of the name, so two lock files
/// in one directory collide only by a 1-in-2^62 chance.
fn anchor_offset(name: &[u8]) -> i64 {
    (twox_hash::XxHash64::oneshot(0, name) >> 2) as i64
}

/// Refuses, before opening, what the lock path must never be: a symbolic link (whose target
/// could be any file), or something that is not a regular file. A missing path is fine: it is
/// created.
fn refuse_what_is_not_a_lock_file(path: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(found) => check_is_a_lock_file(path, &found),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
        // Let the open report it with its own words (permission, missing directory).
        Err(_) => Ok(()),
    }
}

/// What the lock path must be when it exists: a regular file with a single link. Shared with the
/// start-up check, so both refuse the same things in the same words.
pub(super) fn check_is_a_lock_file(path: &Path, found: &std::fs::Metadata) -> Result<(), String> {
    let kind = found.file_type();
    let what = if kind.is_symlink() {
        let target = std::fs::read_link(path)
            .map(|t| format!(" (to {})", t.display()))
            .unwrap_or_default();
        format!("a symbolic link{target}")
    } else if kind.is_dir() {
        "a directory".to_string()
    } else if kind.is_fifo() {
        "a named pipe".to_string()
    } else if kind.is_socket() {
        "a socket".to_string()
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device".to_string()
    } else if found.nlink() != 1 {
        format!("a file with {} hard links", found.nlink())
    } else {
        return Ok(());
    };
    Err(format!(
        "lock path {} is {what}, not a lock file: refusing to use it (a lock file is a regular \
         file with one link, and symbolic links are never followed); remove it, or {WAYS_OUT}",
        path.display()
    ))
}

/// Names the cause and the fix for a lock file that cannot be opened.
fn open_error(path: &Path, err: &io::Error) -> String {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let shown = path.display();
    match err.raw_os_error() {
        // O_NOFOLLOW met a symbolic link placed after the first look.
        Some(libc::ELOOP) => {
            return format!(
                "lock path {shown} is a symbolic link, not a lock file: refusing to follow it; \
                 remove it, or {WAYS_OUT}"
            )
        }
        Some(libc::ENXIO) => {
            return format!("lock path {shown} is not a regular file: remove it, or {WAYS_OUT}")
        }
        _ => {}
    }
    match err.kind() {
        ErrorKind::NotFound if !dir.is_dir() => format!(
            "lock directory {} does not exist: create it, or {WAYS_OUT}",
            dir.display()
        ),
        ErrorKind::PermissionDenied => format!(
            "cannot open lock file {shown}: permission denied: let this user write {} (and the \
             file, if it exists), or {WAYS_OUT}",
            dir.display()
        ),
        ErrorKind::ReadOnlyFilesystem => format!(
            "cannot create lock file {shown}: the file system is read-only: put the lock on a \
             writable volume, or {WAYS_OUT}"
        ),
        ErrorKind::IsADirectory => {
            format!("lock path {shown} is a directory: name a file inside it, or {WAYS_OUT}")
        }
        _ => format!("cannot open lock file {shown}: {err}: {WAYS_OUT}"),
    }
}

fn replaced_error(path: &Path) -> String {
    format!(
        "lock file {} keeps being replaced while it is locked: stop whatever deletes it (a lock \
         file must never be deleted), or {WAYS_OUT}",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_offsets_are_stable_positive_and_differ_by_name() {
        let a = anchor_offset(b"engine-shim.lock");
        assert_eq!(a, anchor_offset(b"engine-shim.lock"));
        assert!(a >= 0);
        assert_ne!(a, anchor_offset(b"engine-shim-b.lock"));
    }
}
