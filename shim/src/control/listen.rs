//! Taking the control socket's path without harming what is there, and giving it back on exit.
//!
//! `--control-socket PATH` is a path an operator types, so it may name the wrong file. The shim
//! only ever replaces a *stale socket* (one nobody answers on); anything else at PATH is refused
//! before the shim does anything else, and on exit it removes PATH only while PATH still names the
//! socket it bound (same device and inode), never what someone put there since.

use std::fs::{self, DirBuilder, Metadata};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use rustix::fs::{renameat_with, RenameFlags, CWD};
use tracing::warn;

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// What is at PATH (or PATH itself) is wrong; the operator must choose another path or clear
    /// it. Nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// The system would not let us listen (permissions, missing directory…).
    #[error("cannot listen on the control socket {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// What [`inspect`] found at a path, from its own metadata (a symlink is not followed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Occupant {
    Nothing,
    Socket,
    /// Anything else, described for the error line ("a regular file of 12 bytes").
    Other(String),
}

/// Classifies `metadata` (from `symlink_metadata`, so a symlink is itself, not its target).
pub fn occupant(metadata: Option<&Metadata>) -> Occupant {
    let Some(metadata) = metadata else {
        return Occupant::Nothing;
    };
    let kind = metadata.file_type();
    let what = if kind.is_socket() {
        return Occupant::Socket;
    } else if kind.is_symlink() {
        "a symbolic link".to_string()
    } else if kind.is_file() {
        format!("a regular file of {} bytes", metadata.len())
    } else if kind.is_dir() {
        "a directory".to_string()
    } else if kind.is_fifo() {
        "a named pipe (fifo)".to_string()
    } else if kind.is_char_device() {
        "a character device".to_string()
    } else if kind.is_block_device() {
        "a block device".to_string()
    } else {
        "a file of unknown type".to_string()
    };
    Occupant::Other(what)
}

/// What is at `path`, without following a symlink.
fn inspect(path: &Path) -> Result<Occupant, ListenError> {
    match fs::symlink_metadata(path) {
        Ok(metadata) => Ok(occupant(Some(&metadata))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Occupant::Nothing),
        Err(source) => Err(io_error(path, source)),
    }
}

fn io_error(path: &Path, source: io::Error) -> ListenError {
    ListenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes `path` free for our socket: nothing there, or a stale socket (removed). Anything else is
/// refused and left exactly as it is.
fn clear_stale(path: &Path) -> Result<(), ListenError> {
    let shown = path.display();
    match inspect(path)? {
        Occupant::Nothing => Ok(()),
        Occupant::Other(what) => Err(ListenError::Refused(format!(
            "--control-socket {shown}: {shown} is {what}, not a socket; it was left untouched: \
             give --control-socket a path of its own (e.g. /run/engine-shim.sock)"
        ))),
        Occupant::Socket => match UnixStream::connect(path) {
            Ok(_) => Err(ListenError::Refused(format!(
                "--control-socket {shown}: another instance already listens on {shown}; \
                 give each instance its own control socket"
            ))),
            // Nobody listens: a socket left behind by an instance that died.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => match fs::remove_file(path)
            {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(io_error(path, source)),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ListenError::Refused(format!(
                "--control-socket {shown}: {shown} is a socket this user cannot connect to ({e}); \
                 it may belong to another user's instance and was left untouched: choose another path"
            ))),
        },
    }
}

/// The control socket's path while this instance owns it; removes it on drop if it is still ours.
#[derive(Debug)]
pub struct SocketPath {
    path: PathBuf,
    /// Device and inode of the socket we bound: what "still ours" means.
    id: (u64, u64),
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_socket() && (m.dev(), m.ino()) == self.id => {
                if let Err(e) = fs::remove_file(&self.path) {
                    warn!(
                        "cannot remove the control socket {}: {e}",
                        self.path.display()
                    );
                }
            }
            Ok(_) => warn!(
                "left {} alone on exit: it is no longer the control socket this instance created",
                self.path.display()
            ),
            Err(_) => {}
        }
    }
}

/// Binds a listening socket at `path` with mode 0600, whatever the umask.
///
/// A socket file's mode comes from the umask at `bind`, and `bind` also starts listening in std's
/// API, so chmod after bind would leave a window in which anyone the umask allows can connect. We
/// therefore bind inside a fresh directory of mode 0700 next to `path` (nobody else can reach a
/// socket in it, nor swap the file before our chmod), set 0600, and only then rename it to `path`
/// with `RENAME_NOREPLACE`, so it appears connectable only by its owner (and root) and never
/// replaces a file that appeared at `path` meanwhile. The detour costs about 12 bytes of the 107 a
/// socket path may have.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketPath), ListenError> {
    if path.file_name().is_none() {
        return Err(ListenError::Refused(format!(
            "--control-socket {}: name a socket file, e.g. /run/engine-shim.sock",
            path.display()
        )));
    }
    clear_stale(path)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let private = PrivateDir::create(parent).map_err(|e| io_error(path, e))?;
    let staged = private.path.join("s");
    let listener = UnixListener::bind(&staged).map_err(|e| io_error(path, e))?;
    fs::set_permissions(&staged, fs::Permissions::from_mode(0o600))
        .map_err(|e| io_error(path, e))?;
    let staged_meta = fs::symlink_metadata(&staged).map_err(|e| io_error(path, e))?;
    match renameat_with(CWD, &staged, CWD, path, RenameFlags::NOREPLACE) {
        Ok(()) => {}
        Err(rustix::io::Errno::EXIST) => {
            let what = match inspect(path)? {
                Occupant::Other(what) => what,
                _ => "a socket".to_string(),
            };
            return Err(ListenError::Refused(format!(
                "--control-socket {}: {what} appeared there while the shim started; it was left \
                 untouched: give --control-socket a path of its own",
                path.display()
            )));
        }
        Err(e) => return Err(io_error(path, e.into())),
    }
    let owned = SocketPath {
        path: path.to_path_buf(),
        id: (staged_meta.dev(), staged_meta.ino()),
    };
    Ok((listener, owned))
}

/// A directory of mode 0700 that only we can enter, removed (with what is left in it) on drop.
struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    fn create(parent: &Path) -> io::Result<PrivateDir> {
        let mut attempts = 0;
        loop {
            let mut random = [0u8; 4];
            rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
            let path = parent.join(format!(".es{:08x}", u32::from_ne_bytes(random)));
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    let dir = PrivateDir { path };
                    // The umask may have taken bits we need (e.g. 0700 → 0000 for a non-root user).
                    fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o700))?;
                    return Ok(dir);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 8 => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.path.join("s"));
        let _ = fs::remove_dir(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(result: Result<(UnixListener, SocketPath), ListenError>) -> String {
        match result {
            Err(ListenError::Refused(message)) => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn binds_with_mode_0600_and_removes_only_its_own_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shim.sock");
        let (_listener, owned) = bind(&path).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "the private directory is gone"
        );
        drop(owned);
        assert!(!path.exists());

        // Someone replaced the socket after we bound it: theirs stays.
        let (_listener, owned) = bind(&path).unwrap();
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"theirs").unwrap();
        drop(owned);
        assert_eq!(fs::read(&path).unwrap(), b"theirs");
    }

    #[test]
    fn refuses_what_is_not_a_socket_and_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("Settings.toml");
        fs::write(&file, b"[node]\n").unwrap();
        let message = refused(bind(&file));
        assert!(
            message.contains("is a regular file of 7 bytes, not a socket"),
            "{message}"
        );
        assert_eq!(fs::read(&file).unwrap(), b"[node]\n");

        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(refused(bind(&link)).contains("is a symbolic link"));
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());

        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        assert!(refused(bind(&sub)).contains("is a directory"));
        assert!(sub.is_dir());
    }

    #[test]
    fn replaces_a_stale_socket_and_refuses_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shim.sock");
        drop(UnixListener::bind(&path).unwrap());
        let (_listener, _owned) = bind(&path).unwrap();
        assert!(refused(bind(&path)).contains("another instance already listens"));
    }
}
