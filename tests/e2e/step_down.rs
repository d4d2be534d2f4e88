//! Maintenance without downtime on one host: a primary and a secondary instance share a lock; the
//! operator has the primary step down so the secondary takes the work, does maintenance, and has
//! the secondary step down to hand it back. `engine-shim handoff`, the command's earlier name,
//! still works.

use crate::common;

use crate::common::{bin, Host, Node};
use rustix::process::Signal;

/// Runs `engine-shim step-down ARGS` to completion.
async fn step_down(args: &[&str]) -> (i32, String) {
    engine_shim(&["step-down"], args).await
}

/// Runs `engine-shim COMMAND ARGS` to completion: exit code and everything it printed.
async fn engine_shim(command: &[&str], args: &[&str]) -> (i32, String) {
    let output = tokio::process::Command::new(bin("engine-shim"))
        .args(command)
        .args(args)
        .output()
        .await
        .expect("engine-shim runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_down_moves_the_engine_to_the_waiting_instance_and_back() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let socket = host.dir.path().join("primary.sock");
    let socket_arg = socket.display().to_string();
    // The stand-by counts from the request, so it has to outlast the engine's stop and then the
    // secondary's wake-up on the freed file lock; on a loaded machine each of those took
    // hundreds of milliseconds (the stop 0.8 s), and a stand-by over by the time the lock is
    // given back lets the primary take it straight back.
    let primary = host
        .shim(&node)
        .engine("1.0.0")
        .shim_args(&["--control-socket", &socket_arg, "--standby", "3s"])
        .spawn();
    let first = host.wait_event("start", "1.0.0", 1).await;
    let secondary = host.shim(&node).engine("1.0.0").spawn();
    secondary.wait_message(0, &["waiting for the lock"]).await;

    // The primary steps down: the answer comes once its engine is reaped and the lock is free.
    // The mark comes first: the primary's short stand-by may be over before the answer is read.
    let mark = primary.mark();
    let (code, answer) = step_down(&["--control-socket", &socket_arg]).await;
    assert_eq!(code, 0, "{answer}");
    assert!(answer.contains("handed off"), "{answer}");
    let second = host.wait_event("start", "1.0.0", 2).await;
    assert_ne!(second.pid, first.pid);
    secondary.wait_message(0, &["acquired the lock"]).await;
    let stop = host.wait_event("stop", "1.0.0", 1).await;
    assert_eq!(stop.pid, first.pid);
    assert!(stop.unix_nanos() < second.unix_nanos());

    // After its stand-by the primary waits for the lock again; hand back with SIGUSR1, asked for
    // under the command's earlier name.
    let (over, _) = primary
        .wait_message(mark, &["stand-by after the hand-off is over"])
        .await;
    let pid = secondary.proc.pid().to_string();
    let (code, answer) = engine_shim(&["handoff"], &["--pid", &pid]).await;
    assert_eq!(code, 0, "{answer}");
    let third = host.wait_event("start", "1.0.0", 3).await;
    primary.wait_message(over, &["acquired the lock"]).await;
    assert!(host.wait_event("stop", "1.0.0", 2).await.unix_nanos() < third.unix_nanos());
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&[]);
    drop((primary, secondary));
}

/// A second step-down during the stand-by starts the stand-by afresh: the instance asks for no lock
/// for `--standby` after the *latest* request. The witness is the order in which two instances
/// that stand by at the same time compete again: the one whose stand-by began first wins, with no
/// clock read in the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_step_down_during_the_stand_by_starts_it_afresh() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let socket = |name: &str| host.dir.path().join(name).display().to_string();
    let (primary_socket, secondary_socket) = (socket("primary.sock"), socket("secondary.sock"));
    // Long enough for the steps below to fit in the primary's first stand-by.
    let standby = ["--standby", "5s"];
    let primary = host
        .shim(&node)
        .engine("1.0.0")
        .shim_args(&["--control-socket", &primary_socket])
        .shim_args(&standby)
        .spawn();
    host.wait_event("start", "1.0.0", 1).await;
    let secondary = host
        .shim(&node)
        .engine("1.0.0")
        .shim_args(&["--control-socket", &secondary_socket])
        .shim_args(&standby)
        .spawn();
    secondary.wait_message(0, &["waiting for the lock"]).await;

    // The primary steps down first: the secondary takes over.
    let primary_mark = primary.mark();
    let (code, answer) = step_down(&["--control-socket", &primary_socket]).await;
    assert_eq!(code, 0, "{answer}");
    host.wait_event("start", "1.0.0", 2).await;
    // Then the secondary steps down too: nobody holds the lock, both stand by, the secondary's
    // stand-by began later than the primary's first one.
    let (code, answer) = step_down(&["--control-socket", &secondary_socket]).await;
    assert_eq!(code, 0, "{answer}");
    // The primary is asked again, later still: its stand-by now ends after the secondary's.
    let (code, answer) = step_down(&["--control-socket", &primary_socket]).await;
    assert_eq!(code, 0, "{answer}");
    assert!(answer.contains("handed off"), "{answer}");
    let over = "stand-by after the hand-off is over";
    assert_eq!(
        primary.count_messages(over),
        0,
        "the primary's first stand-by ended before its second request could be sent; \
         the scenario needs a longer --standby on this machine:\n{}",
        primary.proc.output.dump()
    );

    // The secondary competes first and gets the lock; the primary waits behind it.
    let third = host.wait_event("start", "1.0.0", 3).await;
    common::wait_until("a shim to acquire the lock again", || {
        primary.count_messages("acquired the lock") + secondary.count_messages("acquired the lock")
            > 2
    })
    .await;
    assert_eq!(
        secondary.count_messages("acquired the lock"),
        2,
        "the secondary, whose stand-by ended first, did not get the lock:\nprimary:\n{}\nsecondary:\n{}",
        primary.proc.output.dump(),
        secondary.proc.output.dump()
    );
    assert_eq!(primary.count_messages("acquired the lock"), 1);
    let (at, _) = primary.wait_message(primary_mark, &[over]).await;
    primary.wait_message(at, &["waiting for the lock"]).await;
    assert_eq!(host.alive().len(), 1);
    assert_eq!(host.alive()[0].pid, third.pid);
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&[]);
    drop((primary, secondary));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_down_without_a_running_instance_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.sock").display().to_string();
    let (code, answer) = step_down(&["--control-socket", &socket]).await;
    assert_eq!(code, 1);
    assert!(
        answer.contains("is it running with --control-socket"),
        "{answer}"
    );
    let (code, _) = step_down(&[]).await;
    assert_eq!(code, 2, "naming no instance is a usage error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_on_an_idle_instance_just_stands_by() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let idle = host.shim(&node).engine("1.1.0").spawn();
    idle.wait_message(0, &["WAITING for a compatible release version"])
        .await;
    idle.proc.signal(Signal::USR1);
    idle.wait_message(0, &["handed off: no engine runs here"])
        .await;
    assert!(host.events().is_empty());
}
