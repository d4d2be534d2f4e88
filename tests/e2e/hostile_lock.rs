//! The lock holds whatever happens to its file and whatever the engine leaves behind: operator
//! stories on real shims, real fake-engines and a real lock file.
//!
//! - A held lock file deleted (a tmp cleaner) or replaced (`mv`) does not let a second shim start
//!   its engine beside the first: it waits until the first engine is gone.
//! - A symbolic link, a hard link or anything but a plain file at the lock path is refused with a
//!   clear error, and whatever it points at is left untouched.
//! - A helper that the engine started in a session of its own (`setsid`), holding the data
//!   directory, is killed and reaped before the lock is given back: after the shim is SIGKILLed,
//!   and when the engine exits on its own.

use crate::common;

use crate::common::{is_gone, wait_gone, EngineEvent, Host, Node};
use rustix::process::Signal;

/// Kills the helpers an engine left behind when the test ends, whatever happened: a failing test
/// must not leave a `sleep 3600` holding a lock.
struct Helpers(Vec<u32>);

impl Drop for Helpers {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if common::cmdline_contains(pid, "3600") {
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                }
            }
        }
    }
}

/// What the second shim says while the holder of the vanished file still runs its engine.
const ORPHAN_WAIT: &str = "was deleted or replaced while held";

/// A shim whose lock file is deleted (or replaced) while it runs its engine, and a second shim
/// started afterwards: the second waits, naming the cause, and starts only after the first engine
/// has stopped.
async fn second_shim_waits_for_the_first_engine(vanish: impl FnOnce(&Host)) {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let mut first_shim = host.shim(&node).engine("1.0.0").spawn();
    let first = host.wait_event("start", "1.0.0", 1).await;

    vanish(&host);
    let second_shim = host.shim(&node).engine("1.0.0").spawn();
    second_shim.wait_message(0, &[ORPHAN_WAIT]).await;
    // Having said it waits, it has started nothing: one engine has ever started.
    let starts = host.events().iter().filter(|e| e.event == "start").count();
    assert_eq!(starts, 1, "a second engine started beside the first");

    first_shim.proc.signal(Signal::TERM);
    let second = host.wait_event("start", "1.0.0", 2).await;
    let stop = host.wait_event("stop", "1.0.0", 1).await;
    assert_eq!(stop.pid, first.pid);
    assert!(
        stop.unix_nanos() < second.unix_nanos(),
        "the first engine stopped before the second started"
    );
    assert_eq!(common::exit_code(first_shim.proc.wait_exit().await), 0);
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_lock_file_never_lets_a_second_engine_start_beside_the_first() {
    second_shim_waits_for_the_first_engine(|host| std::fs::remove_file(&host.lock).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_lock_file_never_lets_a_second_engine_start_beside_the_first() {
    second_shim_waits_for_the_first_engine(|host| {
        let other = host.dir.path().join("fresh");
        std::fs::write(&other, b"").unwrap();
        std::fs::rename(&other, &host.lock).unwrap();
    })
    .await;
}

/// Starts a shim on `host` whose lock path was prepared by `prepare`, and expects it to refuse the
/// lock at once (exit 1, naming `what`), leaving the file `precious` byte for byte as it was.
async fn lock_path_is_refused(prepare: impl FnOnce(&Host, &std::path::Path), what: &str) {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let precious = host.dir.path().join("precious");
    std::fs::write(&precious, b"operator data\n").unwrap();
    prepare(&host, &precious);
    let mut shim = host.shim(&node).engine("1.0.0").spawn();
    let status = shim.proc.wait_exit().await;
    assert_eq!(common::exit_code(status), 1);
    // Awaited, not read at once: the exit can be seen before the last lines are read.
    let lock = host.lock.display().to_string();
    shim.wait_log(
        0,
        &format!("an ERROR line naming {what:?} and {lock}"),
        |l| l.level() == "ERROR" && l.message().contains(what) && l.message().contains(&lock),
    )
    .await;
    assert_eq!(std::fs::read(&precious).unwrap(), b"operator data\n");
    assert!(host.events().is_empty(), "no engine may start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_at_the_lock_path_is_refused_and_its_target_left_untouched() {
    lock_path_is_refused(
        |host, precious| std::os::unix::fs::symlink(precious, &host.lock).unwrap(),
        "symbolic link",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_link_at_the_lock_path_is_refused_and_its_file_left_untouched() {
    lock_path_is_refused(
        |host, precious| std::fs::hard_link(precious, &host.lock).unwrap(),
        "hard links",
    )
    .await;
}

/// The helper event an engine logged.
async fn helper_of(host: &Host, n: usize) -> EngineEvent {
    host.wait_event("helper", "1.0.0", n).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helper_left_by_the_engine_is_killed_before_the_lock_is_given_back_after_a_shim_sigkill()
{
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let mut first_shim = host
        .shim(&node)
        .engine_with("1.0.0", &["--leave-helper"])
        .spawn();
    let first = host.wait_event("start", "1.0.0", 1).await;
    let helper = helper_of(&host, 1).await;
    let _cleanup = Helpers(vec![helper.pid]);
    assert!(!is_gone(helper.pid));

    // SIGKILL: the shim runs no clean-up; its engine's guardian must do it all.
    first_shim.proc.signal(Signal::KILL);
    first_shim.proc.wait_exit().await;
    wait_gone(first.pid, "the engine of the killed shim").await;
    wait_gone(helper.pid, "the helper its engine left behind").await;

    // The lock is free again (on today's main the helper keeps it forever), and the data
    // directory too: the next engine starts without a lock failure.
    let _second_shim = host.shim(&node).engine("1.0.0").spawn();
    host.wait_event("start", "1.0.0", 2).await;
    host.assert_no_lock_failed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helper_left_by_a_crashed_engine_is_gone_before_the_engine_is_restarted() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let _shim = host
        .shim(&node)
        .engine_with("1.0.0", &["--leave-helper", "--crash-after", "200ms"])
        .spawn();
    let helper = helper_of(&host, 1).await;
    let mut helpers = Helpers(vec![helper.pid]);
    host.wait_event("crash", "1.0.0", 1).await;
    // The restart comes after the back-off; the helper held the data directory, so a restarted
    // engine that found it alive would log `lock_failed` instead of `start`.
    let restarted = host.wait_event("start", "1.0.0", 2).await;
    helpers.0.push(helper_of(&host, 2).await.pid);
    assert!(is_gone(helper.pid), "the first helper outlived its engine");
    assert!(restarted.unix_nanos() > helper.unix_nanos());
    host.assert_no_lock_failed();
}
