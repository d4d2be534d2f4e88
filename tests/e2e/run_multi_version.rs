//! Operator stories for today's Chainflip engine: one program covering two versions (a runner
//! linked against the old and the new engine library). The shim runs it for any release either
//! version fits, leaves it alone across the upgrade it handles inside itself, and stops it only
//! once the release leaves its pair.

use std::path::Path;

use crate::common::package::Prefix;
use crate::common::{bin, shell_words, Host, Node, Proc, Shim};

/// `engine-shim run` on `host` with each of `engines` as one `--engine` value; `versions` are the
/// versions fake-engine reports in its events (what the harness kills on drop).
fn spawn_shim(host: &Host, node: &Node, engines: &[String], versions: &[&str]) -> Shim {
    let mut builder = host.shim(node);
    for engine in engines {
        builder = builder.shim_args(&["--engine", engine]);
    }
    let proc = Proc::spawn("engine-shim", builder.command());
    Shim {
        proc,
        events: host.events.clone(),
        _dir: host.dir.clone(),
        versions: versions.iter().map(|v| v.to_string()).collect(),
    }
}

/// The program's words plus the host's data directory and events file, as one `--engine` CMD.
fn on_host(host: &Host, program: &[&str]) -> String {
    let mut words: Vec<String> = program.iter().map(|w| w.to_string()).collect();
    words.extend([
        "--data-dir".to_string(),
        host.data_dir.display().to_string(),
        "--events".to_string(),
        host.events.display().to_string(),
    ]);
    shell_words(&words)
}

/// Declared `--engine 2.2.8,2.3.0=CMD` for a runner that reports 2.3.0: it starts on release 2.2
/// (a shim that believed it 2.3 only would idle it), is the same process after the upgrade to 2.3,
/// and is stopped at 2.4, where the shim asks for a 2.4.x engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_runner_starts_before_its_upgrade_and_runs_through_it() {
    let node = Node::start(&["--release", "2.2.0"]).await;
    let host = Host::new();
    let fake = bin("fake-engine").display().to_string();
    let runner = on_host(&host, &[&fake, "--as-version", "2.3.0"]);
    let shim = spawn_shim(&host, &node, &[format!("2.2.8,2.3.0={runner}")], &["2.3.0"]);

    let start = host.wait_event("start", "2.3.0", 1).await;
    assert_eq!(start.start_block(), Some(0), "started on release 2.2");
    shim.wait_message(0, &["starting engine 2.3.0 (covers 2.2.8, 2.3.0)"])
        .await;
    assert_eq!(
        shim.count_messages("WAITING"),
        0,
        "the runner never waits on 2.2"
    );

    node.new_blocks(1).await;
    node.set_release("2.3.0").await;
    node.new_blocks(2).await; // #2 carries 2.3.0
    node.set_release("2.4.0").await;
    node.new_blocks(1).await; // #4 carries 2.4.0
    let upgrade = node.block_hash(4).await;

    let stop = host.wait_event("stop", "2.3.0", 1).await;
    assert_eq!(
        stop.pid, start.pid,
        "the runner stopped is the one started on 2.2"
    );
    let no_longer = format!(
        "This version '2.3.0' is no longer compatible with the release version '2.4.0' at block: {upgrade}"
    );
    shim.wait_log(0, "the no-longer-compatible line", |l| {
        l.message() == no_longer
    })
    .await;
    shim.wait_message(
        0,
        &[
            "no installed engine is compatible with release 2.4.0",
            "install a 2.4.x engine",
        ],
    )
    .await;
    let starts = host.events().iter().filter(|e| e.event == "start").count();
    assert_eq!(
        starts, 1,
        "one life across 2.2 → 2.3: no restart at the upgrade it handles itself"
    );
    host.assert_no_lock_failed();
}

/// Undeclared: the shim reads the engine libraries the program links (its `DT_NEEDED` entries)
/// besides `--version`, says what it found, and starts the runner on release 2.2 although its
/// `--version` names only 2.3.0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_is_found_to_cover_the_versions_of_the_libraries_it_links() {
    let node = Node::start(&["--release", "2.2.0"]).await;
    let host = Host::new();
    let package = Prefix::new(&host.dir.path().join("usr"));
    package.install_passive(&["2.2.8", "2.3.0"]);
    let program = package.program();
    let runner = on_host(&host, &[program.to_str().unwrap()]);
    let shim = spawn_shim(&host, &node, &[runner], &["2.3.0"]);

    shim.wait_message(0, &[&covers_line(&program, "2.2.8, 2.3.0")])
        .await;
    let start = host.wait_event("start", "2.3.0", 1).await;
    assert_eq!(start.start_block(), Some(0), "started on release 2.2");
    assert_eq!(
        shim.count_messages("WAITING"),
        0,
        "the runner never waits on 2.2"
    );
}

fn covers_line(program: &Path, list: &str) -> String {
    format!("engine {} covers {list}", program.display())
}
