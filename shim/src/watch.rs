//! Notices engine programs replaced in place.
//!
//! Upgrading today's Chainflip engine is `apt install` of the next package, which writes a new
//! runner and new engine libraries at the same paths (a temporary file renamed over each one). A
//! shim that learnt an engine's versions once at start-up would then act on stale facts. This
//! module takes a [`Snapshot`] of the files an engine consists of (the program and the engine
//! libraries it links), and [`changed_files`] says, without I/O, which of them differ between two
//! snapshots. The poll loop that takes snapshots and re-probes lives in [`watch`].

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::covers::Covers;
use crate::gate::EngineId;
use crate::probe::{discover, ProbeError};

/// What identifies one version of a file on disk: a rename over it changes the inode, a rewrite in
/// place changes the mtime or the size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub dev: u64,
    pub ino: u64,
    pub mtime_nanos: i128,
    pub size: u64,
}

/// The files an engine consists of, each with its fingerprint (`None`: missing right now).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot(pub Vec<(PathBuf, Option<Fingerprint>)>);

impl Snapshot {
    /// Stats `program` and the engine libraries it links (found through its rpath).
    #[cfg(test)]
    pub fn take(program: &Path) -> Snapshot {
        Snapshot::take_after(program, None, read_program)
    }

    /// Like [`Snapshot::take`], but while the program's own fingerprint equals the one in
    /// `before`, reuses `before`'s list of libraries and only stats them. Finding the libraries
    /// means reading the whole program (a debug build is over 100 MB); doing that on every poll
    /// cost an idle shim a tenth of a core and held a runtime thread for seconds on a loaded host,
    /// long enough to delay a lock renewal. `read` reads a program (a parameter so a test can
    /// count the reads).
    pub fn take_after(
        program: &Path,
        before: Option<&Snapshot>,
        read: impl Fn(&Path) -> std::io::Result<Vec<u8>>,
    ) -> Snapshot {
        let program_print = fingerprint(program);
        let known_libraries = before.and_then(|before| match before.0.split_first() {
            Some(((path, Some(print)), libraries))
                if path == program && Some(*print) == program_print =>
            {
                Some(libraries.iter().map(|(path, _)| path.clone()).collect())
            }
            _ => None,
        });
        let libraries: Vec<PathBuf> = match known_libraries {
            Some(libraries) => libraries,
            None => match read(program) {
                Ok(image) => crate::elf::engine_library_paths(program, &image),
                Err(_) => Vec::new(),
            },
        };
        let mut files = vec![(program.to_path_buf(), program_print)];
        files.extend(libraries.into_iter().map(|path| {
            let print = fingerprint(&path);
            (path, print)
        }));
        Snapshot(files)
    }
}

/// Takes a snapshot of every program off the runtime's threads (stat calls, and a read of each
/// program that changed), each after its `before` when given.
async fn snapshots_after(programs: Vec<PathBuf>, before: Vec<Snapshot>) -> Vec<Snapshot> {
    tokio::task::spawn_blocking(move || {
        programs
            .iter()
            .enumerate()
            .map(|(i, program)| Snapshot::take_after(program, before.get(i), read_program))
            .collect()
    })
    .await
    .expect("taking a snapshot of engine programs panicked")
}

/// Reads a whole program, to find the libraries it links.
fn read_program(path: &Path) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        dev: meta.dev(),
        ino: meta.ino(),
        mtime_nanos: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        size: meta.size(),
    })
}

/// The files of `now` that are new or differ from `before`, plus those of `before` now gone from
/// the list (a library the new program no longer links). Empty when nothing changed.
pub fn changed_files(before: &Snapshot, now: &Snapshot) -> Vec<PathBuf> {
    let print_in = |snapshot: &Snapshot, path: &Path| {
        snapshot
            .0
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, print)| *print)
    };
    let changed = now
        .0
        .iter()
        .filter(|(path, print)| print_in(before, path) != Some(*print))
        .map(|(path, _)| path.clone());
    let dropped = before
        .0
        .iter()
        .filter(|(path, _)| print_in(now, path).is_none())
        .map(|(path, _)| path.clone());
    changed.chain(dropped).collect()
}

/// One engine as the watcher sees it.
#[derive(Debug, Clone)]
pub struct Watched {
    pub engine: EngineId,
    /// The program's resolved path.
    pub program: PathBuf,
    /// Versions given by the operator: kept as they are when the file changes (nothing to probe).
    pub declared: Option<Covers>,
}

/// A change the watcher found, with what the engine covers now.
#[derive(Debug)]
pub struct Replaced {
    pub engine: EngineId,
    pub program: PathBuf,
    /// Why it was looked at again: the files that changed, or empty after SIGHUP.
    pub files: Vec<PathBuf>,
    /// The versions covered now, or why the new program could not be probed (the old ones stay).
    pub covers: Result<Covers, ProbeError>,
}

/// Polls every engine's files every `every`; on a change re-probes the engine and reports it.
/// `rescan` (SIGHUP) re-probes every engine at once, with a new list of engines when the settings
/// were re-read. Runs until `tx` is closed.
pub async fn watch(
    mut engines: Vec<Watched>,
    every: Duration,
    probe_timeout: Duration,
    mut rescan: mpsc::UnboundedReceiver<Option<Vec<Watched>>>,
    tx: mpsc::UnboundedSender<Replaced>,
) {
    let programs = |engines: &[Watched]| -> Vec<PathBuf> {
        engines.iter().map(|e| e.program.clone()).collect()
    };
    let mut known = snapshots_after(programs(&engines), Vec::new()).await;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(list) = rescan.recv() => {
                if let Some(list) = list {
                    engines = list;
                    known = snapshots_after(programs(&engines), Vec::new()).await;
                }
                true
            }
        };
        let now = snapshots_after(programs(&engines), known.clone()).await;
        for ((engine, before), now) in engines.iter().zip(known.iter_mut()).zip(now) {
            let files = changed_files(before, &now);
            if files.is_empty() && !forced {
                *before = now;
                continue;
            }
            let covers = match &engine.declared {
                Some(declared) => Ok(declared.clone()),
                None => discover(&engine.program, probe_timeout).await,
            };
            // The snapshot after the probe: a file still being written changes again and is
            // looked at once more on the next tick.
            *before = snapshots_after(vec![engine.program.clone()], Vec::new())
                .await
                .pop()
                .unwrap_or_default();
            let report = Replaced {
                engine: engine.engine,
                program: engine.program.clone(),
                files,
                covers,
            };
            if tx.send(report).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn print(ino: u64, size: u64) -> Option<Fingerprint> {
        Some(Fingerprint {
            dev: 1,
            ino,
            mtime_nanos: 5,
            size,
        })
    }

    fn snapshot(files: &[(&str, Option<Fingerprint>)]) -> Snapshot {
        Snapshot(files.iter().map(|(p, f)| (PathBuf::from(p), *f)).collect())
    }

    #[test]
    fn nothing_changed_is_empty() {
        let s = snapshot(&[("/usr/bin/e", print(1, 10)), ("/lib/a.so", print(2, 3))]);
        assert!(changed_files(&s, &s.clone()).is_empty());
    }

    #[test]
    fn a_rename_over_the_program_a_rewrite_and_a_vanished_library_are_changes() {
        let before = snapshot(&[("/usr/bin/e", print(1, 10)), ("/lib/a.so", print(2, 3))]);
        let renamed = snapshot(&[("/usr/bin/e", print(7, 10)), ("/lib/a.so", print(2, 3))]);
        assert_eq!(
            changed_files(&before, &renamed),
            [PathBuf::from("/usr/bin/e")]
        );
        let rewritten = snapshot(&[("/usr/bin/e", print(1, 11)), ("/lib/a.so", print(2, 3))]);
        assert_eq!(
            changed_files(&before, &rewritten),
            [PathBuf::from("/usr/bin/e")]
        );
        let new_libraries = snapshot(&[("/usr/bin/e", print(1, 10)), ("/lib/b.so", print(3, 3))]);
        assert_eq!(
            changed_files(&before, &new_libraries),
            [PathBuf::from("/lib/b.so"), PathBuf::from("/lib/a.so")]
        );
        let missing = snapshot(&[("/usr/bin/e", None)]);
        assert_eq!(
            changed_files(&before, &missing),
            [PathBuf::from("/usr/bin/e"), PathBuf::from("/lib/a.so")]
        );
    }

    #[test]
    fn a_real_rename_over_the_path_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("engine");
        std::fs::write(&program, "one").unwrap();
        let before = Snapshot::take(&program);
        let staged = dir.path().join("engine.dpkg-new");
        std::fs::write(&staged, "two").unwrap();
        std::fs::rename(&staged, &program).unwrap();
        assert_eq!(changed_files(&before, &Snapshot::take(&program)), [program]);
    }

    #[test]
    fn an_unchanged_program_is_not_read_again_and_a_replaced_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("engine");
        std::fs::write(&program, "one").unwrap();
        let reads = std::cell::Cell::new(0);
        let counting = |path: &Path| {
            reads.set(reads.get() + 1);
            std::fs::read(path)
        };
        let first = Snapshot::take_after(&program, None, counting);
        assert_eq!(reads.get(), 1);
        let second = Snapshot::take_after(&program, Some(&first), counting);
        assert_eq!(reads.get(), 1, "an unchanged program was read again");
        assert!(changed_files(&first, &second).is_empty());

        let staged = dir.path().join("engine.dpkg-new");
        std::fs::write(&staged, "two!").unwrap();
        std::fs::rename(&staged, &program).unwrap();
        let third = Snapshot::take_after(&program, Some(&second), counting);
        assert_eq!(
            reads.get(),
            2,
            "a replaced program must be read for its libraries"
        );
        assert_eq!(changed_files(&second, &third), [program]);
    }
}
