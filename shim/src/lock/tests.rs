//! The lock's stories on real files, real threads and real processes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use super::*;

/// A guard against a hung test, not a synchronisation: every wait below ends on an event.
const PATIENCE: Duration = Duration::from_secs(20);

fn holder(pid: u32, version: &str) -> HolderInfo {
    HolderInfo {
        pid,
        host: "host-a".into(),
        engine_version: version.into(),
        since_unix_ms: 1_795_341_600_000,
        epoch: None,
        expires_at: None,
    }
}

fn channel() -> (UnboundedSender<LockEvent>, UnboundedReceiver<LockEvent>) {
    mpsc::unbounded_channel()
}

/// The next event; `None` once the `Lock` has dropped its sender (nothing more can come).
async fn next(events: &mut UnboundedReceiver<LockEvent>) -> Option<LockEvent> {
    tokio::time::timeout(PATIENCE, events.recv())
        .await
        .expect("no lock event in time")
}

/// Acquires and waits for the outcome, passing over one `Waiting`.
async fn granted(lock: &mut Lock, me: HolderInfo) {
    let (tx, mut rx) = channel();
    lock.acquire(me, tx);
    let mut event = next(&mut rx).await;
    if let Some(LockEvent::Waiting { .. }) = event {
        event = next(&mut rx).await;
    }
    assert_eq!(event, Some(LockEvent::Granted { epoch: None }));
    assert!(lock.is_held());
}

fn lock_at(path: &Path) -> Lock {
    Lock::new(LockSpec::File(path.to_path_buf()))
}

fn holder_in_file(path: &Path) -> Option<HolderInfo> {
    serde_json::from_slice(std::fs::read(path).unwrap().trim_ascii()).ok()
}

fn lock_path() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOCK_FILE_NAME);
    (dir, path)
}

#[tokio::test]
async fn second_shim_waits_naming_the_holder_and_is_granted_when_it_releases() {
    let (_dir, path) = lock_path();
    let (old, new) = (holder(100, "1.0.0"), holder(200, "1.1.0"));

    let mut first = lock_at(&path);
    let (tx, mut first_events) = channel();
    first.acquire(old.clone(), tx);
    assert_eq!(
        next(&mut first_events).await,
        Some(LockEvent::Granted { epoch: None })
    );
    // One acquisition, one grant: the sender is gone afterwards.
    assert_eq!(next(&mut first_events).await, None);
    assert!(first.is_held());
    assert_eq!(holder_in_file(&path), Some(old.clone()));

    let mut second = lock_at(&path);
    let (tx, mut second_events) = channel();
    second.acquire(new.clone(), tx);
    assert_eq!(
        next(&mut second_events).await,
        Some(LockEvent::Waiting { holder: Some(old) })
    );
    assert!(!second.is_held());

    first.release();
    assert!(!first.is_held());
    assert_eq!(
        next(&mut second_events).await,
        Some(LockEvent::Granted { epoch: None })
    );
    assert_eq!(next(&mut second_events).await, None);
    assert!(second.is_held());
    assert_eq!(holder_in_file(&path), Some(new.clone()));

    // And the other way round: the first now waits for the second.
    let (tx, mut first_events) = channel();
    first.acquire(holder(100, "1.0.0"), tx);
    assert_eq!(
        next(&mut first_events).await,
        Some(LockEvent::Waiting { holder: Some(new) })
    );
    second.release();
    assert_eq!(
        next(&mut first_events).await,
        Some(LockEvent::Granted { epoch: None })
    );
}

#[tokio::test]
async fn the_lock_file_is_created_readable_by_all_writable_by_its_owner() {
    let (_dir, path) = lock_path();
    let mut lock = lock_at(&path);
    granted(&mut lock, holder(1, "1.0.0")).await;
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & !0o644 & 0o7777, 0, "mode {mode:o}");
}

#[tokio::test]
async fn release_clears_the_holder_then_unlocks() {
    let (_dir, path) = lock_path();
    let mut lock = lock_at(&path);
    granted(&mut lock, holder(1, "1.0.0")).await;
    lock.release();
    assert!(!lock.is_held());
    assert_eq!(std::fs::read(&path).unwrap(), b"");
    // Released twice, or never held: nothing happens.
    lock.release();
    let mut other = lock_at(&path);
    granted(&mut other, holder(2, "1.1.0")).await;
}

#[tokio::test]
async fn cancel_while_waiting_sends_nothing_and_leaves_the_lock_free() {
    let (_dir, path) = lock_path();
    let mut holder_lock = lock_at(&path);
    granted(&mut holder_lock, holder(1, "1.0.0")).await;

    let mut waiter = lock_at(&path);
    let (tx, mut events) = channel();
    waiter.acquire(holder(2, "1.1.0"), tx);
    assert!(matches!(
        next(&mut events).await,
        Some(LockEvent::Waiting { .. })
    ));
    waiter.cancel();
    // The cancelled acquisition's sender is dropped: no Granted can ever arrive for it.
    assert_eq!(next(&mut events).await, None);

    // The waiting thread gets the lock once the holder lets go, and gives it straight back.
    holder_lock.release();
    let mut third = lock_at(&path);
    granted(&mut third, holder(3, "1.2.0")).await;
    assert!(!waiter.is_held());
    assert_eq!(holder_in_file(&path), Some(holder(3, "1.2.0")));
}

#[tokio::test]
async fn acquiring_again_after_a_cancel_gets_exactly_one_grant() {
    let (_dir, path) = lock_path();
    let mut holder_lock = lock_at(&path);
    granted(&mut holder_lock, holder(1, "1.0.0")).await;

    let mut waiter = lock_at(&path);
    let (tx, mut cancelled) = channel();
    waiter.acquire(holder(2, "1.1.0"), tx);
    assert!(matches!(
        next(&mut cancelled).await,
        Some(LockEvent::Waiting { .. })
    ));
    waiter.cancel();

    let (tx, mut events) = channel();
    waiter.acquire(holder(2, "1.1.1"), tx);
    assert_eq!(
        next(&mut events).await,
        Some(LockEvent::Waiting {
            holder: Some(holder(1, "1.0.0"))
        })
    );
    holder_lock.release();
    assert_eq!(
        next(&mut events).await,
        Some(LockEvent::Granted { epoch: None })
    );
    assert_eq!(next(&mut events).await, None);
    assert_eq!(next(&mut cancelled).await, None);
    assert!(waiter.is_held());
    // The holder written is the current acquisition's, not the cancelled one's.
    assert_eq!(holder_in_file(&path), Some(holder(2, "1.1.1")));
}

#[tokio::test]
async fn a_cancel_after_the_grant_was_sent_keeps_the_lock_so_the_grant_stays_true() {
    let (_dir, path) = lock_path();
    let mut lock = lock_at(&path);
    let (tx, mut events) = channel();
    lock.acquire(holder(1, "1.0.0"), tx);
    // The lock was free, so Granted is already in the channel, not yet received.
    lock.cancel();
    assert!(lock.is_held());
    assert_eq!(
        next(&mut events).await,
        Some(LockEvent::Granted { epoch: None })
    );

    let mut other = lock_at(&path);
    let (tx, mut other_events) = channel();
    other.acquire(holder(2, "1.1.0"), tx);
    assert!(matches!(
        next(&mut other_events).await,
        Some(LockEvent::Waiting { .. })
    ));
    // The receiver no longer wanted it: it gives it back, and the other side goes on.
    lock.release();
    assert_eq!(
        next(&mut other_events).await,
        Some(LockEvent::Granted { epoch: None })
    );
}

#[tokio::test]
async fn acquire_while_held_or_acquiring_is_a_no_op() {
    let (_dir, path) = lock_path();
    let mut first = lock_at(&path);
    granted(&mut first, holder(1, "1.0.0")).await;
    let (tx, mut events) = channel();
    first.acquire(holder(1, "1.0.0"), tx);
    assert_eq!(next(&mut events).await, None);
    assert!(first.is_held());

    let mut second = lock_at(&path);
    let (tx, mut waiting) = channel();
    second.acquire(holder(2, "1.1.0"), tx);
    assert!(matches!(
        next(&mut waiting).await,
        Some(LockEvent::Waiting { .. })
    ));
    let (tx, mut again) = channel();
    second.acquire(holder(2, "1.1.0"), tx);
    assert_eq!(next(&mut again).await, None);

    first.release();
    assert_eq!(
        next(&mut waiting).await,
        Some(LockEvent::Granted { epoch: None })
    );
}

#[tokio::test]
async fn dropping_a_lock_releases_it() {
    let (_dir, path) = lock_path();
    let mut first = lock_at(&path);
    granted(&mut first, holder(1, "1.0.0")).await;
    let mut second = lock_at(&path);
    let (tx, mut events) = channel();
    second.acquire(holder(2, "1.1.0"), tx);
    assert!(matches!(
        next(&mut events).await,
        Some(LockEvent::Waiting { .. })
    ));
    drop(first);
    assert_eq!(
        next(&mut events).await,
        Some(LockEvent::Granted { epoch: None })
    );
}

#[tokio::test]
async fn no_lock_is_granted_at_once() {
    let mut lock = Lock::new(LockSpec::None);
    assert_eq!(lock.spec(), &LockSpec::None);
    let (tx, mut events) = channel();
    lock.acquire(HolderInfo::me("1.0.0"), tx);
    assert_eq!(events.try_recv(), Ok(LockEvent::Granted { epoch: None }));
    assert!(lock.is_held());
    lock.release();
    assert!(!lock.is_held());
}

#[tokio::test]
async fn a_missing_lock_directory_fails_naming_the_fix_and_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let mut lock = lock_at(&missing.join(LOCK_FILE_NAME));
    let (tx, mut events) = channel();
    lock.acquire(HolderInfo::me("1.0.0"), tx);
    assert_eq!(
        next(&mut events).await,
        Some(LockEvent::Failed {
            error: format!(
                "lock directory {} does not exist: create it, or pass --lock-dir DIR / --lock \
                 file:PATH / --lock none",
                missing.display()
            )
        })
    );
    assert_eq!(next(&mut events).await, None);
    assert!(!lock.is_held());
    assert!(!missing.exists());
}

#[tokio::test]
async fn a_lock_path_that_is_a_directory_fails_naming_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mut lock = lock_at(dir.path());
    let (tx, mut events) = channel();
    lock.acquire(HolderInfo::me("1.0.0"), tx);
    match next(&mut events).await {
        Some(LockEvent::Failed { error }) => {
            assert!(error.contains("is a directory"), "{error}");
            assert!(error.contains("--lock file:PATH"), "{error}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn a_lock_file_deleted_while_held_still_excludes_a_newcomer() {
    let (_dir, path) = lock_path();
    let mut old_file_holder = lock_at(&path);
    granted(&mut old_file_holder, holder(1, "1.0.0")).await;
    let mut waiter = lock_at(&path);
    let (tx, mut events) = channel();
    waiter.acquire(holder(2, "1.1.0"), tx);
    assert!(matches!(
        next(&mut events).await,
        Some(LockEvent::Waiting { .. })
    ));

    // Someone deletes the lock file; a new shim opens the path and finds a fresh, unlocked file.
    std::fs::remove_file(&path).unwrap();
    let mut newcomer = lock_at(&path);
    let (tx, mut newcomer_events) = channel();
    newcomer.acquire(holder(3, "1.2.0"), tx);
    // It must wait: the holder of the deleted file still holds the directory's anchor.
    assert!(matches!(
        next(&mut newcomer_events).await,
        Some(LockEvent::Waiting { .. })
    ));
    assert!(!newcomer.is_held());

    // The old holder lets go: exactly one of the two waiters gets the lock now at the path, and
    // the other only once that one lets go.
    old_file_holder.release();
    let first = tokio::select! {
        event = next(&mut events) => (event, 2),
        event = next(&mut newcomer_events) => (event, 3),
    };
    assert_eq!(first.0, Some(LockEvent::Granted { epoch: None }));
    let (winner, loser, loser_events) = if first.1 == 2 {
        (&mut waiter, &mut newcomer, &mut newcomer_events)
    } else {
        (&mut newcomer, &mut waiter, &mut events)
    };
    assert!(winner.is_held() && !loser.is_held());
    winner.release();
    assert_eq!(
        next(loser_events).await,
        Some(LockEvent::Granted { epoch: None })
    );
}

#[tokio::test]
async fn a_lock_file_replaced_while_held_still_excludes_a_newcomer() {
    let (dir, path) = lock_path();
    let mut holder_lock = lock_at(&path);
    granted(&mut holder_lock, holder(1, "1.0.0")).await;
    // `mv other engine-shim.lock`: the path now names another, unlocked file.
    let other = dir.path().join("other");
    std::fs::write(&other, b"").unwrap();
    std::fs::rename(&other, &path).unwrap();
    let mut newcomer = lock_at(&path);
    let (tx, mut events) = channel();
    newcomer.acquire(holder(2, "1.1.0"), tx);
    assert!(matches!(
        next(&mut events).await,
        Some(LockEvent::Waiting { .. })
    ));
    holder_lock.release();
    assert_eq!(
        next(&mut events).await,
        Some(LockEvent::Granted { epoch: None })
    );
}

#[tokio::test]
async fn lock_files_sharing_a_directory_do_not_exclude_each_other() {
    let (dir, path) = lock_path();
    let mut a = lock_at(&path);
    granted(&mut a, holder(1, "1.0.0")).await;
    std::fs::remove_file(&path).unwrap();
    // Another lock file in the same directory is another lock, deleted neighbour or not.
    let mut b = lock_at(&dir.path().join("engine-shim-b.lock"));
    let (tx, mut events) = channel();
    b.acquire(holder(2, "1.1.0"), tx);
    assert_eq!(
        next(&mut events).await,
        Some(LockEvent::Granted { epoch: None })
    );
}

#[tokio::test]
async fn a_symlink_at_the_lock_path_is_refused_and_its_target_untouched() {
    let (dir, path) = lock_path();
    let target = dir.path().join("precious");
    std::fs::write(&target, b"keep me").unwrap();
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let mut lock = lock_at(&path);
    let (tx, mut events) = channel();
    lock.acquire(holder(1, "1.0.0"), tx);
    match next(&mut events).await {
        Some(LockEvent::Failed { error }) => {
            assert!(error.contains("is a symbolic link"), "{error}");
            assert!(error.contains("precious"), "{error}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_symlink());
}

#[tokio::test]
async fn a_hard_link_or_a_fifo_at_the_lock_path_is_refused() {
    let (dir, path) = lock_path();
    let target = dir.path().join("precious");
    std::fs::write(&target, b"keep me").unwrap();
    std::fs::hard_link(&target, &path).unwrap();
    let mut lock = lock_at(&path);
    let (tx, mut events) = channel();
    lock.acquire(holder(1, "1.0.0"), tx);
    match next(&mut events).await {
        Some(LockEvent::Failed { error }) => assert!(error.contains("2 hard links"), "{error}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");

    std::fs::remove_file(&path).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let mut lock = lock_at(&path);
    let (tx, mut events) = channel();
    lock.acquire(holder(1, "1.0.0"), tx);
    match next(&mut events).await {
        Some(LockEvent::Failed { error }) => assert!(error.contains("a named pipe"), "{error}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// A separate process holding an flock on `path`, ready once it has said so.
async fn spawn_holder_process(path: &Path) -> Option<Child> {
    let mut command = if Path::new("/usr/bin/flock").exists() {
        // The shell opens the file without truncating it, locks that descriptor, then becomes
        // `sleep` keeping the descriptor: the lock lives exactly as long as this one pid.
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg("exec 9>>\"$1\" && /usr/bin/flock 9 && echo locked && exec sleep 1000");
        command.arg("sh").arg(path);
        command
    } else if which("python3") {
        let mut command = Command::new("python3");
        command.arg("-c").arg(
            "import fcntl, sys, time\n\
             f = open(sys.argv[1], 'a')\n\
             fcntl.flock(f, fcntl.LOCK_EX)\n\
             print('locked', flush=True)\n\
             time.sleep(1000)",
        );
        command.arg(path);
        command
    } else {
        return None;
    };
    let mut child = command
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    tokio::time::timeout(PATIENCE, stdout.read_line(&mut line))
        .await
        .expect("the holder process never said it was locked")
        .unwrap();
    assert_eq!(line.trim(), "locked");
    Some(child)
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

#[tokio::test]
async fn a_lock_held_by_a_killed_process_is_granted_at_once() {
    let (_dir, path) = lock_path();
    let Some(mut other_shim) = spawn_holder_process(&path).await else {
        eprintln!("skipped: neither /usr/bin/flock nor python3 is available");
        return;
    };
    // What a shim in that process would have written.
    let other = holder(other_shim.id().unwrap(), "1.0.0");
    std::fs::write(&path, serde_json::to_vec(&other).unwrap()).unwrap();

    let mut lock = lock_at(&path);
    let (tx, mut events) = channel();
    lock.acquire(holder(std::process::id(), "1.1.0"), tx);
    assert_eq!(
        next(&mut events).await,
        Some(LockEvent::Waiting {
            holder: Some(other)
        })
    );

    // SIGKILL: no clean-up runs in the holder; the kernel drops its flock as the process dies.
    other_shim.start_kill().unwrap();
    assert_eq!(
        next(&mut events).await,
        Some(LockEvent::Granted { epoch: None })
    );
    assert!(lock.is_held());
    assert_eq!(
        holder_in_file(&path),
        Some(holder(std::process::id(), "1.1.0"))
    );
    other_shim.wait().await.unwrap();
}

/// A child standing in for an engine, sharing the held lock if `inherited` is given.
fn spawn_engine(inherited: Option<InheritedLock>) -> Child {
    let mut command = Command::new("sleep");
    command.arg("1000").kill_on_drop(true);
    if let Some(inherited) = inherited {
        // SAFETY: keep_across_exec makes one fcntl call: async-signal-safe.
        unsafe {
            command.pre_exec(move || inherited.keep_across_exec());
        }
    }
    command.spawn().unwrap()
}

#[tokio::test]
async fn an_engine_sharing_the_lock_keeps_it_until_it_is_dead_too() {
    let (_dir, path) = lock_path();
    let mut shim = lock_at(&path);
    granted(&mut shim, holder(1, "1.0.0")).await;
    let mut engine = spawn_engine(Some(shim.inheritable().unwrap()));

    // The shim lets go (as a killed shim would); its engine is still alive.
    shim.release();
    let mut next_shim = lock_at(&path);
    let (tx, mut events) = channel();
    next_shim.acquire(holder(2, "1.1.0"), tx);
    assert!(matches!(
        next(&mut events).await,
        Some(LockEvent::Waiting { .. })
    ));

    engine.start_kill().unwrap();
    assert_eq!(
        next(&mut events).await,
        Some(LockEvent::Granted { epoch: None })
    );
    engine.wait().await.unwrap();
}

#[tokio::test]
async fn other_children_never_inherit_the_lock() {
    let (_dir, path) = lock_path();
    let mut shim = lock_at(&path);
    granted(&mut shim, holder(1, "1.0.0")).await;
    let mut child = spawn_engine(None);

    shim.release();
    // Granted while the child lives on. (Passing over one Waiting: a concurrent test's fork may
    // hold a copy of the descriptor for the instant between its fork and exec.)
    let mut next_shim = lock_at(&path);
    granted(&mut next_shim, holder(2, "1.1.0")).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

#[test]
fn only_a_held_file_lock_can_be_inherited() {
    let mut none = Lock::new(LockSpec::None);
    let (tx, _events) = channel();
    none.acquire(HolderInfo::me("1.0.0"), tx);
    assert!(none.is_held());
    assert_eq!(none.inheritable(), None);

    let (_dir, path) = lock_path();
    assert_eq!(lock_at(&path).inheritable(), None);
}

/// A file lock cannot be lost while held: it arms no kill deadline for its engine.
#[tokio::test]
async fn a_file_lock_arms_no_kill_deadline() {
    use crate::deadline_kill::{testing::watched_sleep, LeaseLink};
    let (_dir, path) = lock_path();
    let mut lock = lock_at(&path);
    granted(&mut lock, holder(1, "1.0.0")).await;
    let (_sleeper, watch) = watched_sleep();
    lock.attach(LeaseLink::new(std::sync::Arc::clone(&watch)));
    assert!(!watch.is_armed());
}
