//! The database password: taken from `ENGINE_SHIM_LOCK_PASSWORD` or the file named by
//! `ENGINE_SHIM_LOCK_PASSWORD_FILE`, never from the command line, and never printed. The test
//! cluster's role `shim` needs the password `shim-secret` (scram-sha-256 over TCP).

use crate::common::failover::{
    spawn_with_env, wait_started_by, Mode, PgLock, PASSWORD_ENV, PASSWORD_FILE_ENV,
};
use crate::common::pg::{self, PG_PASSWORD};
use crate::common::{exit_code, Host, Node, Shim};
use rustix::process::Signal;

/// A lease lock on the password role's URL.
fn password_lock(test: &str) -> PgLock {
    PgLock::new(test, Mode::Lease).via(&pg::pg_password_url())
}

/// Runs the shim's life to its end (SIGTERM, exit 0), so every line it will ever print is in.
async fn run_to_the_end(mut shim: Shim) -> Vec<String> {
    shim.proc.signal(Signal::TERM);
    let code = exit_code(shim.proc.wait_exit().await);
    assert_eq!(code, 0, "{}", shim.proc.output.dump());
    shim.wait_message(0, &["released the lock"]).await;
    shim.proc.output.lines()
}

fn assert_password_absent(lines: &[String]) {
    let leaks: Vec<&String> = lines.iter().filter(|l| l.contains(PG_PASSWORD)).collect();
    assert!(leaks.is_empty(), "the password was printed: {leaks:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_from_the_environment_connects_and_is_never_printed() {
    let _pg = pg::pg_shared_guard();
    let lock = password_lock("failover-password-env");
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let builder = lock.instance(&host, &node, "1.0.0");
    let shim = spawn_with_env(builder, &host, &["1.0.0"], &[(PASSWORD_ENV, PG_PASSWORD)]);
    let start = host.wait_event("start", "1.0.0", 1).await;
    wait_started_by(&shim, start.pid).await;
    shim.wait_message(0, &["acquired the lock", "(epoch "])
        .await;
    let lines = run_to_the_end(shim).await;
    assert_password_absent(&lines);
    assert!(
        lines.iter().any(|l| l.contains(&pg::pg_password_url())),
        "the URL (without a password) is named in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_from_a_file_connects_and_is_never_printed() {
    let _pg = pg::pg_shared_guard();
    let lock = password_lock("failover-password-file");
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let file = host.dir.path().join("pg-password");
    std::fs::write(&file, format!("{PG_PASSWORD}\n")).unwrap();
    let file = file.display().to_string();
    let builder = lock.instance(&host, &node, "1.0.0");
    let shim = spawn_with_env(builder, &host, &["1.0.0"], &[(PASSWORD_FILE_ENV, &file)]);
    let start = host.wait_event("start", "1.0.0", 1).await;
    wait_started_by(&shim, start.pid).await;
    let lines = run_to_the_end(shim).await;
    assert_password_absent(&lines);
}

/// The engine has no use for the lock's password: it must not inherit it (an engine that dumps
/// its environment, or a crash reporter that does, would leak it). fake-engine records every
/// `ENGINE_SHIM_*` variable it was given in its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_is_not_given_the_database_password() {
    let _pg = pg::pg_shared_guard();
    let lock = password_lock("failover-password-engine");
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let builder = lock.instance(&host, &node, "1.0.0");
    let shim = spawn_with_env(builder, &host, &["1.0.0"], &[(PASSWORD_ENV, PG_PASSWORD)]);
    let start = host.wait_event("start", "1.0.0", 1).await;
    let env = &start.raw["env"];
    assert!(
        env.get(PASSWORD_ENV).is_none() && !env.to_string().contains(PG_PASSWORD),
        "the engine was given the database password in its environment: {env}"
    );
    drop(shim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_with_a_password_is_refused_with_exit_2_without_echoing_it() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = Host::new();
    let url = pg::pg_password_url().replacen("://shim@", &format!("://shim:{PG_PASSWORD}@"), 1);
    assert!(url.contains(PG_PASSWORD), "{url}");
    let lock = PgLock::new("failover-password-in-url", Mode::Lease).via(&url);
    let mut shim = lock.instance(&host, &node, "1.0.0").spawn();
    let code = exit_code(shim.proc.wait_exit().await);
    let lines = shim.proc.output.lines();
    assert_eq!(code, 2, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("the PostgreSQL URL contains a password")
                && l.contains(PASSWORD_ENV)),
        "the refusal says where the password goes instead: {lines:#?}"
    );
    assert_password_absent(&lines);
    assert!(host.events().is_empty(), "no engine may start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_password_is_an_error_that_names_the_fix() {
    let _pg = pg::pg_shared_guard();
    let node = Node::start(&["--release", "1.0.0"]).await;
    for (password, expected) in [
        (
            None,
            "the database asks for a password: set ENGINE_SHIM_LOCK_PASSWORD",
        ),
        (Some("not-the-password"), "the database refused the login"),
    ] {
        let host = Host::new();
        let lock = password_lock("failover-password-wrong");
        let builder = lock.instance(&host, &node, "1.0.0");
        let env: Vec<(&str, &str)> = password.map(|p| (PASSWORD_ENV, p)).into_iter().collect();
        let mut shim = spawn_with_env(builder, &host, &["1.0.0"], &env);
        let code = exit_code(shim.proc.wait_exit().await);
        assert_eq!(code, 1, "{}", shim.proc.output.dump());
        // Awaited, not read at once: the exit can be seen before the last lines are read.
        shim.wait_log(0, &format!("an ERROR line naming {expected:?}"), |l| {
            l.level() == "ERROR" && l.message().contains(expected)
        })
        .await;
        let lines = shim.proc.output.lines();
        if let Some(password) = password {
            assert!(!lines.iter().any(|l| l.contains(password)), "{lines:#?}");
        }
        assert!(host.events().is_empty(), "no engine may start");
    }
}
