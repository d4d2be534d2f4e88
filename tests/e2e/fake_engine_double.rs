//! fake-engine as a faithful double of the engines operators run: following the node itself, a
//! 1.0–1.3 engine waits, starts at its upgrade block and exits 1 at the next; today's runner switches
//! from its old to its new version inside one process and exits 1 when the release leaves its pair;
//! and a real ELF "package" that links versioned engine libraries can be installed in place.
//! Real fake-node and fake-engine processes, no shim.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::package::{self, Prefix};
use crate::common::{
    describe_events, exit_code, lock_is_free, read_events, wait_for_events, EngineEvent, Node, Proc,
};

/// A fake-engine following `node`, with a data directory and an events file in `dir`.
struct Engine {
    proc: Proc,
    events: PathBuf,
    lock: PathBuf,
}

impl Engine {
    fn spawn(node: &Node, dir: &Path, program: &Path, identity: &[&str]) -> Engine {
        Engine::spawn_at(&node.url, dir, program, identity)
    }

    /// As [`Engine::spawn`], following the node at `url` (which may not be up yet).
    fn spawn_at(url: &str, dir: &Path, program: &Path, identity: &[&str]) -> Engine {
        let (events, data_dir) = (dir.join("events.jsonl"), dir.join("data"));
        let mut command = Command::new(program);
        command
            .args(identity)
            .args(["--node", url])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--events")
            .arg(&events);
        Engine {
            proc: Proc::spawn("fake-engine", command),
            events,
            lock: data_dir.join("LOCK"),
        }
    }

    fn fake(node: &Node, dir: &Path, identity: &[&str]) -> Engine {
        Engine::spawn(node, dir, &common::bin("fake-engine"), identity)
    }

    fn events(&self) -> Vec<EngineEvent> {
        read_events(&self.events)
    }

    /// Waits for the `n`th (1-based) event named `name`.
    async fn wait_event(&self, name: &str, n: usize) -> EngineEvent {
        let events = wait_for_events(
            &self.events,
            &format!("event {name} #{n}"),
            |events| events.iter().filter(|e| e.event == name).count() >= n,
            describe_events,
        )
        .await;
        events
            .into_iter()
            .filter(|e| e.event == name)
            .nth(n - 1)
            .unwrap()
    }

    /// Waits for a stdout/stderr line containing `needle`; returns its index.
    async fn wait_line(&self, from: usize, needle: &str) -> usize {
        self.proc
            .output
            .wait_for(from, &format!("a line with `{needle}`"), |line| {
                line.contains(needle).then_some(())
            })
            .await
            .0
    }

    fn count_lines(&self, needle: &str) -> usize {
        self.proc
            .output
            .lines()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

fn block_of(event: &EngineEvent) -> u64 {
    event.raw["block"]
        .as_u64()
        .unwrap_or_else(|| panic!("event without a block: {:?}", event.raw))
}

const WAITING: &str = "WAITING for a compatible release version.";

#[tokio::test]
async fn one_version_waits_once_per_block_holding_nothing_starts_at_the_upgrade_and_exits_at_the_next(
) {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = Engine::fake(&node, dir.path(), &["--as-version", "1.1.0"]);

    // Blocks #0..#2 on release 1.0.0: one WAITING line each, naming that block, and nothing held.
    engine.wait_line(0, WAITING).await;
    node.new_blocks(2).await;
    let waiting_2 = format!(
        "This version '1.1.0' is incompatible with the current release '1.0.0' at block: {}. {WAITING}",
        node.block_hash(2).await
    );
    engine.wait_line(0, &waiting_2).await;
    assert_eq!(
        engine.count_lines(WAITING),
        3,
        "{}",
        engine.proc.output.dump()
    );
    for number in 0..=2 {
        let hash = node.block_hash(number).await;
        assert_eq!(
            engine.count_lines(&format!("at block: {hash}. {WAITING}")),
            1
        );
    }
    assert!(engine.events().is_empty(), "a waiting engine wrote events");
    assert!(
        lock_is_free(&engine.lock),
        "a waiting engine took the data directory lock"
    );

    // The upgrade block: it starts there, holding the lock.
    node.set_release("1.1.0").await;
    node.new_blocks(1).await;
    let start = engine.wait_event("start", 1).await;
    assert_eq!((start.version.as_str(), block_of(&start)), ("1.1.0", 3));
    assert_eq!(start.pid, engine.proc.pid());
    assert!(!lock_is_free(&engine.lock));

    // A patch release changes nothing; the next minor release ends it with exit 1.
    node.set_release("1.1.5").await;
    node.new_blocks(1).await;
    node.set_release("1.2.0").await;
    let upgrade = node.new_blocks(1).await;
    assert_eq!(exit_code(engine.proc.wait_exit().await), 1);
    engine
        .wait_line(
            0,
            &format!("This version '1.1.0' is no longer compatible with the release version '1.2.0' at block: {upgrade}"),
        )
        .await;
    let events = engine.events();
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        ["start", "exit_incompatible"],
        "{}",
        describe_events(&events)
    );
    assert_eq!(block_of(&events[1]), 5);
    assert_eq!(events[1].raw["release"], "1.2.0");
    assert_eq!(engine.count_lines(WAITING), 3, "WAITING after the start");
    assert!(lock_is_free(&engine.lock));
}

#[tokio::test]
async fn an_unknown_release_is_waited_out_without_taking_anything() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    node.set_release_value(Some("0x000000")).await;
    node.new_blocks(1).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::fake(&node, dir.path(), &["--as-version", "1.0.0"]);

    engine.wait_line(0, "WAITING for a known release").await;
    assert!(engine.events().is_empty());
    assert!(lock_is_free(&engine.lock));

    node.set_release("1.0.0").await;
    node.new_blocks(1).await;
    let start = engine.wait_event("start", 1).await;
    assert_eq!(block_of(&start), 2);
}

#[tokio::test]
async fn sigterm_stops_a_waiting_double_at_once_and_a_running_one_with_a_stop_event() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (waiting_dir, running_dir) = (dir.path().join("waiting"), dir.path().join("running"));
    let mut waiting = Engine::fake(&node, &waiting_dir, &["--as-version", "1.1.0"]);
    let mut running = Engine::fake(&node, &running_dir, &["--as-version", "1.0.0"]);
    waiting.wait_line(0, WAITING).await;
    running.wait_event("start", 1).await;

    for engine in [&waiting, &running] {
        engine.proc.signal(rustix::process::Signal::TERM);
    }
    assert_eq!(exit_code(waiting.proc.wait_exit().await), 0);
    assert_eq!(exit_code(running.proc.wait_exit().await), 0);
    assert!(waiting.events().is_empty());
    let names: Vec<String> = running.events().into_iter().map(|e| e.event).collect();
    assert_eq!(names, ["start", "stop"]);
    assert!(lock_is_free(&running.lock));
}

#[tokio::test]
async fn runner_runs_old_switches_to_new_in_the_same_process_and_exits_when_the_release_leaves_its_pair(
) {
    let node = Node::start(&["--release", "2.2.0"]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = Engine::fake(&node, dir.path(), &["--as-versions", "2.2.8,2.3.0"]);

    let start = engine.wait_event("start", 1).await;
    assert_eq!((start.version.as_str(), block_of(&start)), ("2.2.8", 0));
    assert_eq!(start.raw["covers"], serde_json::json!(["2.2.8", "2.3.0"]));
    engine
        .wait_line(
            0,
            "The latest version 2.3.0 is not yet compatible. Running the old version 2.2.8...",
        )
        .await;

    // The upgrade block: the same process and lock carry on as 2.3.0 from that block.
    node.set_release("2.3.0").await;
    node.new_blocks(1).await;
    let switch = engine.wait_event("switch", 1).await;
    assert_eq!(switch.pid, engine.proc.pid());
    assert_eq!((switch.version.as_str(), block_of(&switch)), ("2.3.0", 1));
    assert_eq!(switch.raw["from"], "2.2.8");
    assert!(
        engine.proc.try_exit().is_none(),
        "the runner exited at the switch"
    );
    assert!(
        !lock_is_free(&engine.lock),
        "the lock was let go at the switch"
    );
    engine
        .wait_line(
            0,
            "Old version has exited with exit status: ExitStatus { status_code: 1, at_block: 1 }",
        )
        .await;
    engine
        .wait_line(0, "Switching to the new version 2.3.0 after the old version 2.2.8 is no longer compatible.")
        .await;

    // Past the pair: exit 1 with the runner's message for a new version run after a switch.
    node.new_blocks(1).await;
    node.set_release("2.4.0").await;
    node.new_blocks(1).await;
    assert_eq!(exit_code(engine.proc.wait_exit().await), 1);
    engine
        .wait_line(0, "[stderr] Error: New version has exited with exit status: ExitStatus { status_code: 1, at_block: 3 }")
        .await;
    let events = engine.events();
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        ["start", "switch", "exit_incompatible"],
        "{}",
        describe_events(&events)
    );
    assert!(events.iter().all(|e| e.pid == engine.proc.pid()));
    assert_eq!(
        (events[2].version.as_str(), block_of(&events[2])),
        ("2.3.0", 3)
    );
    assert!(lock_is_free(&engine.lock));
}

#[tokio::test]
async fn runner_started_on_its_new_release_asks_for_an_update_at_the_next() {
    let node = Node::start(&["--release", "2.3.0"]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = Engine::fake(&node, dir.path(), &["--as-versions", "2.2.8,2.3.0"]);
    let start = engine.wait_event("start", 1).await;
    assert_eq!(start.version, "2.3.0");

    node.set_release("2.4.0").await;
    node.new_blocks(1).await;
    assert_eq!(exit_code(engine.proc.wait_exit().await), 1);
    engine
        .wait_line(0, "[stderr] Error: You need to update your CFE. The current version of the CFE you are running is not compatible with the latest runtime update.")
        .await;
    assert!(lock_is_free(&engine.lock));
}

#[tokio::test]
async fn runner_outside_its_pair_exits_1_at_once_without_starting() {
    for (release, message) in [
        ("2.4.0", "[stderr] Error: You need to update your CFE."),
        (
            "2.1.0",
            "[stderr] Error: An error has occurred running the old version with exit status: ExitStatus { status_code: 2, at_block: 0 }",
        ),
    ] {
        let node = Node::start(&["--release", release]).await;
        let dir = tempfile::tempdir().unwrap();
        let mut engine = Engine::fake(&node, dir.path(), &["--as-versions", "2.2.8,2.3.0"]);
        assert_eq!(exit_code(engine.proc.wait_exit().await), 1, "release {release}");
        engine.wait_line(0, message).await;
        let names: Vec<String> = engine.events().into_iter().map(|e| e.event).collect();
        assert_eq!(names, ["exit_incompatible"], "release {release}");
        assert!(lock_is_free(&engine.lock));
    }
}

/// `PROGRAM --version`'s whole stdout.
fn version_output(program: &Path, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .arg("--version")
        .env_remove("FAKE_ENGINE_AS_VERSION")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_runner_double_names_only_its_new_version() {
    let fake_engine = common::bin("fake-engine");
    assert_eq!(
        version_output(&fake_engine, &["--as-versions", "2.2.8,2.3.0"]),
        "fake-engine 2.3.0\n"
    );
}

#[tokio::test]
async fn the_elf_package_links_versioned_engine_libraries_and_execs_the_runner_double() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = Prefix::new(&dir.path().join("usr"));
    prefix.install(&["2.2.8", "2.3.0"]);

    let needed = package::needed_libraries(&prefix.program());
    for library in [
        "libchainflip_engine_v2_2_8.so",
        "libchainflip_engine_v2_3_0.so",
    ] {
        assert!(
            needed.iter().any(|n| n == library),
            "no DT_NEEDED {library} in {needed:?}"
        );
    }
    assert_eq!(
        version_output(&prefix.program(), &[]),
        "fake-engine 2.3.0\n"
    );

    // Started through the package, the double runs in the pid that was started (exec, no child).
    let node = Node::start(&["--release", "2.2.0"]).await;
    let engine = Engine::spawn(&node, &dir.path().join("run"), &prefix.program(), &[]);
    let start = engine.wait_event("start", 1).await;
    assert_eq!(start.pid, engine.proc.pid());
    assert_eq!(start.version, "2.2.8");
    assert_eq!(start.raw["covers"], serde_json::json!(["2.2.8", "2.3.0"]));
}

#[tokio::test]
async fn installing_in_place_leaves_a_running_engine_on_its_old_inode() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = Prefix::new(&dir.path().join("usr"));
    prefix.install(&["2.2.8", "2.3.0"]);
    let old_inode = package::inode(&prefix.program());

    let node = Node::start(&["--release", "2.3.0"]).await;
    let engine = Engine::spawn(&node, &dir.path().join("run"), &prefix.program(), &[]);
    engine.wait_event("start", 1).await;
    let holds = |inode: u64| {
        package::open_inodes(engine.proc.pid())
            .iter()
            .any(|(_, held)| *held == inode)
    };
    assert!(
        holds(old_inode),
        "the running engine does not hold its program"
    );

    prefix.install(&["2.3.0", "2.4.0"]);
    let new_inode = package::inode(&prefix.program());
    assert_ne!(
        new_inode, old_inode,
        "the program was not replaced by a new file"
    );
    assert_eq!(
        prefix.libraries(),
        [
            "libchainflip_engine_v2_3_0.so",
            "libchainflip_engine_v2_4_0.so"
        ]
    );
    assert_eq!(
        version_output(&prefix.program(), &[]),
        "fake-engine 2.4.0\n"
    );
    let held: Vec<String> = package::open_inodes(engine.proc.pid())
        .into_iter()
        .filter(|(_, inode)| *inode == old_inode)
        .map(|(path, _)| path)
        .collect();
    assert!(
        held.iter().any(|path| path.ends_with(" (deleted)")),
        "the running engine should still hold the replaced program: {held:?}"
    );
    assert!(!holds(new_inode));
    assert!(
        common::is_fake_engine(engine.proc.pid()),
        "the running engine is gone"
    );

    prefix.remove();
    assert!(!prefix.program().exists());
    assert!(prefix.libraries().is_empty());
    assert!(
        !common::is_gone(engine.proc.pid()),
        "removing the package stopped the engine"
    );
}

#[tokio::test]
async fn a_double_started_while_the_node_is_down_waits_holding_nothing_and_starts_once_it_is_up() {
    // A port nothing listens on (yet).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::spawn_at(
        &format!("ws://127.0.0.1:{port}"),
        dir.path(),
        &common::bin("fake-engine"),
        &["--as-version", "1.0.0"],
    );
    engine.wait_line(0, "fake-engine: node: Disconnected").await;
    assert!(engine.events().is_empty());
    assert!(lock_is_free(&engine.lock));

    let _node = Node::start_on(port, &["--release", "1.0.0"]).await;
    let start = engine.wait_event("start", 1).await;
    assert_eq!(block_of(&start), 0);
}
