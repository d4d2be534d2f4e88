//! Operator stories for an engine package upgraded in place (`apt install` of the next runner
//! writes a new program at the same path): the shim notices without a restart and runs the new
//! program from its next start, never restarting a running engine just because its file changed.

use crate::common;

use std::path::Path;
use std::time::Instant;

use crate::common::package::Prefix;
use crate::common::{shell_words, Host, Node, Proc, Shim};

/// The package prefix of `host`: the runner is installed at `<host>/bin/chainflip-engine`, its
/// libraries in `<host>/lib/chainflip-engine`. Its runners are passive (they run their newest
/// version until stopped), so every stop and start seen here is the shim's decision.
fn prefix(host: &Host) -> Prefix {
    Prefix::new(host.dir.path())
}

/// `engine-shim run --engine PROGRAM --data-dir … --events …` on `host`, versions undeclared.
fn spawn_shim(host: &Host, node: &Node, program: &Path) -> Shim {
    let engine = shell_words(&[
        program.display().to_string(),
        "--data-dir".into(),
        host.data_dir.display().to_string(),
        "--events".into(),
        host.events.display().to_string(),
    ]);
    let command = host.shim(node).shim_args(&["--engine", &engine]).command();
    Shim {
        proc: Proc::spawn("engine-shim", command),
        events: host.events.clone(),
        _dir: host.dir.clone(),
        versions: vec!["2.3.0".into(), "2.4.0".into()],
    }
}

/// The release is 2.4 and the installed runner covers 2.2.8 and 2.3.0: the shim idles asking for
/// a 2.4.x engine. The next package is installed in place; the same shim process notices, says
/// what the program covers now, and starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_shim_starts_the_program_installed_in_place() {
    let node = Node::start(&["--release", "2.4.0"]).await;
    let host = Host::new();
    let installed = prefix(&host);
    installed.install_passive(&["2.2.8", "2.3.0"]);
    let mut shim = spawn_shim(&host, &node, &installed.program());
    let program = installed.program().display().to_string();

    shim.wait_message(0, &[&format!("engine {program} covers 2.2.8, 2.3.0")])
        .await;
    let (idle, _) = shim.wait_message(0, &["install a 2.4.x engine"]).await;
    assert!(host.events().is_empty(), "nothing runs on 2.4 yet");

    installed.install_passive(&["2.3.0", "2.4.0"]);
    let installed_at = Instant::now();
    shim.wait_message(
        idle,
        &[&format!(
            "engine {program} was replaced on disk; it now covers 2.3.0, 2.4.0"
        )],
    )
    .await;
    let start = host.wait_event("start", "2.4.0", 1).await;
    eprintln!(
        "measured: the new program started {:?} after its install",
        installed_at.elapsed()
    );
    assert_eq!(
        start.start_block(),
        Some(0),
        "told the block it is compatible since"
    );
    assert!(
        shim.proc.try_exit().is_none(),
        "the same shim, not restarted"
    );
}

/// A running runner's file is replaced by the next package: the running process is left alone
/// (same pid) while it stays compatible; at the upgrade it cannot serve it stops, and the new
/// program starts, told the upgrade block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_engine_is_not_restarted_because_its_file_changed() {
    let node = Node::start(&["--release", "2.3.0"]).await;
    let host = Host::new();
    let installed = prefix(&host);
    installed.install_passive(&["2.2.8", "2.3.0"]);
    let shim = spawn_shim(&host, &node, &installed.program());
    let program = installed.program().display().to_string();
    let old = host.wait_event("start", "2.3.0", 1).await;

    installed.install_passive(&["2.3.0", "2.4.0"]);
    shim.wait_message(
        0,
        &[
            &format!("engine {program} was replaced on disk; it now covers 2.3.0, 2.4.0"),
            "the running engine keeps running",
        ],
    )
    .await;
    node.new_blocks(1).await; // #1, still 2.3
    node.set_release("2.4.0").await;
    node.new_blocks(1).await; // #2 carries 2.4.0
    let upgrade = node.block_hash(2).await;

    let new = host.assert_hand_over(&old, "2.4.0", 2, &upgrade).await;
    let events = host.events();
    let starts: Vec<_> = events.iter().filter(|e| e.event == "start").collect();
    assert_eq!(starts.len(), 2, "one life per program: {events:#?}");
    assert_eq!(starts[0].pid, old.pid);
    assert_eq!(starts[1].pid, new.pid);
    assert!(
        events
            .iter()
            .filter(|e| e.event == "stop")
            .all(|e| e.pid == old.pid),
        "only the old process stopped, once, at the upgrade"
    );
    host.assert_no_lock_failed();
}

/// The operator edits the config file for the next package and sends SIGHUP: the shim re-reads
/// it and starts the engine it now describes, without a restart. A broken edit is an ERROR that
/// changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_re_reads_the_config_file_and_a_broken_one_changes_nothing() {
    let node = Node::start(&["--release", "2.4.0"]).await;
    let host = Host::new();
    let config = host.dir.path().join("engine-shim.toml");
    let engine_table = |versions: &str, as_version: &str| {
        let command = [
            common::bin("fake-engine").display().to_string(),
            "--as-version".into(),
            as_version.into(),
            "--data-dir".into(),
            host.data_dir.display().to_string(),
            "--events".into(),
            host.events.display().to_string(),
        ];
        format!("[[engine]]\nversions = {versions}\ncommand = {command:?}\n")
    };
    std::fs::write(&config, engine_table(r#"["2.2.8", "2.3.0"]"#, "2.3.0")).unwrap();
    let path = config.display().to_string();
    let command = host.shim(&node).shim_args(&["--config", &path]).command();
    let shim = Shim {
        proc: Proc::spawn("engine-shim", command),
        events: host.events.clone(),
        _dir: host.dir.clone(),
        versions: vec!["2.3.0".into(), "2.4.0".into()],
    };
    let (idle, _) = shim.wait_message(0, &["install a 2.4.x engine"]).await;

    std::fs::write(&config, engine_table(r#"["2.4"]"#, "2.4.0")).unwrap();
    shim.proc.signal(rustix::process::Signal::HUP);
    let (broken, line) = shim
        .wait_message(
            idle,
            &[
                &format!("SIGHUP: cannot use {path}"),
                "keeping the settings in use",
            ],
        )
        .await;
    assert_eq!(line.level(), "ERROR");
    assert!(line.message().contains("'2.4'"), "{}", line.message());

    std::fs::write(&config, engine_table(r#"["2.3.0", "2.4.0"]"#, "2.4.0")).unwrap();
    shim.proc.signal(rustix::process::Signal::HUP);
    shim.wait_message(broken, &[&format!("SIGHUP: re-read {path}")])
        .await;
    shim.wait_message(broken, &["was probed again; it now covers 2.3.0, 2.4.0"])
        .await;
    let start = host.wait_event("start", "2.4.0", 1).await;
    assert!(
        host.events().iter().all(|e| e.version == "2.4.0"),
        "the broken edit started nothing"
    );
    assert_eq!(start.start_block(), Some(0));
}
