//! The operator's story with today's Chainflip package: one `chainflip-engine` runner covering two
//! versions, through two upgrades, with the next package installed in place between them.
//!
//! - 2.2: the shim learns from the program itself (its `--version` and the engine libraries it
//!   links) that it covers 2.2.8 and 2.3.0, and starts it; the runner runs its old version.
//! - 2.3: nothing for the shim to do: the runner switches to its new version inside the same
//!   process.
//! - 2.4: the runner leaves on its own (exit 1, the runner's message). Here it sees the block
//!   before the shim does (the worst order for the shim); the shim reads the release at the
//!   finalized head, takes the exit for the upgrade it is, and idles calmly, saying to install a
//!   2.4.x engine, with the metric operators alert on at 1. No ERROR, no restart loop.
//! - `apt install` of the next package (2.3.0 + 2.4.0) in place: the same shim starts it, and the
//!   metric goes back to 0.
//!
//! Throughout: never two engines on the data directory, no ERROR line at all.

use crate::common;

use crate::common::package::Prefix;
use crate::common::scrape::{metrics_addr, wait_sample};
use crate::common::{shell_words, wait_gone, Host, LogLine, Node, Proc, Shim};
use rustix::process::Signal;

const NO_ENGINE: &str = "engine_shim_no_compatible_engine";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_through_two_upgrades_with_the_next_package_installed_in_place() {
    let node = Node::start(&["--release", "2.2.8"]).await;
    let host = Host::new();
    let prefix = Prefix::new(&host.dir.path().join("usr"));
    prefix.install(&["2.2.8", "2.3.0"]);
    let program = prefix.program().display().to_string();

    // `--engine PROGRAM ARGS`, no versions declared: the shim must find them.
    let engine = shell_words(&[
        program.clone(),
        "--node".into(),
        node.url.clone(),
        "--data-dir".into(),
        host.data_dir.display().to_string(),
        "--events".into(),
        host.events.display().to_string(),
    ]);
    let command = host
        .shim(&node)
        .shim_args(&["--engine", &engine, "--metrics-listen", "127.0.0.1:0"])
        .command();
    let mut shim = Shim {
        proc: Proc::spawn("engine-shim", command),
        events: host.events.clone(),
        _dir: host.dir.clone(),
        versions: vec!["2.2.8".into(), "2.3.0".into(), "2.4.0".into()],
    };
    let metrics = metrics_addr(&shim).await;
    let shim_pid = shim.proc.pid();

    // 2.2: discovered, started, running its old version inside.
    shim.wait_message(0, &[&format!("engine {program} covers 2.2.8, 2.3.0")])
        .await;
    let runner = host.wait_event("start", "2.2.8", 1).await;
    assert_eq!(runner.raw["covers"], serde_json::json!(["2.2.8", "2.3.0"]));
    assert_eq!(runner.start_block(), Some(0), "a fresh start: the present");
    wait_sample(&metrics, NO_ENGINE, "0").await;

    // 2.3: the runner switches inside its own process; the shim leaves it alone.
    node.set_release("2.3.0").await;
    node.new_blocks(1).await; // #1 carries 2.3.0
    let switch = host.wait_event("switch", "2.3.0", 1).await;
    assert_eq!(switch.pid, runner.pid, "the same process switched");
    assert_eq!(switch.raw["from"], "2.2.8");
    assert_eq!(switch.raw["block"], 1);
    wait_sample(&metrics, "engine_shim_last_block", "1").await;
    assert_eq!(shim.count_messages("starting engine"), 1, "not restarted");
    assert_eq!(shim.count_messages("stopping"), 0);
    assert!(!common::is_gone(runner.pid), "the runner still runs");

    // 2.4: the runner meets the upgrade block before the shim does. The shim is paused while
    // the block lands and the runner leaves; when it resumes, the node cannot tell its follower
    // the block's hash yet, so the exit reaches the shim first.
    shim.proc.signal(Signal::STOP);
    node.set_release("2.4.0").await;
    let upgrade = node.new_blocks(1).await; // #2 carries 2.4.0
    let left = host.wait_event("exit_incompatible", "2.3.0", 1).await;
    assert_eq!(left.pid, runner.pid);
    assert_eq!(left.raw["block"], 2);
    wait_gone(runner.pid, "the runner leaving at 2.4").await;
    node.set_fault("chain_getBlockHash", "error").await;
    shim.proc.signal(Signal::CONT);

    let (exited, line) = shim
        .wait_message(0, &["exited at the upgrade to 2.4.0"])
        .await;
    assert_eq!(line.level(), "INFO");
    assert_eq!(line.field("block_number"), 2);
    assert_eq!(line.field("block_hash"), upgrade.as_str());
    assert!(
        line.message().contains("exit status: 1"),
        "{}",
        line.message()
    );
    shim.proc
        .output
        .wait_for(0, "the runner's own message, forwarded", |line| {
            LogLine::parse(line).filter(|l| {
                l.target() == "engine"
                    && l.message()
                        .starts_with("Error: New version has exited with exit status")
            })
        })
        .await;

    node.set_fault("chain_getBlockHash", "none").await;
    let (idle, line) = shim
        .wait_message(
            exited,
            &[
                "no installed engine is compatible with release 2.4.0",
                "install a 2.4.x engine",
            ],
        )
        .await;
    assert_eq!(line.level(), "WARN");
    wait_sample(&metrics, NO_ENGINE, "1").await;
    wait_sample(&metrics, "engine_shim_engine_running", "0").await;
    assert_eq!(
        host.events().iter().filter(|e| e.event == "start").count(),
        1,
        "no restart loop: one start so far"
    );
    assert_eq!(shim.count_messages("restarting engine"), 0);
    assert_eq!(shim.count_messages("exited unexpectedly"), 0);

    // `apt install` of the next package while idling: the same shim picks it up.
    prefix.install(&["2.3.0", "2.4.0"]);
    let installed_at = std::time::Instant::now();
    shim.wait_message(
        idle,
        &[&format!(
            "engine {program} was replaced on disk; it now covers 2.3.0, 2.4.0"
        )],
    )
    .await;
    let next = host.wait_event("start", "2.4.0", 1).await;
    eprintln!(
        "measured: the next package started {:?} after its install",
        installed_at.elapsed()
    );
    assert_ne!(next.pid, runner.pid);
    assert_eq!(next.raw["covers"], serde_json::json!(["2.3.0", "2.4.0"]));
    assert_eq!(
        next.start_block(),
        Some(2),
        "{{block}}: the upgrade block the package was missing at"
    );
    assert_eq!(next.start_hash(), Some(upgrade.as_str()));
    shim.wait_message(idle, &["started (pid", &next.pid.to_string()])
        .await;
    wait_sample(&metrics, NO_ENGINE, "0").await;
    assert!(shim.proc.try_exit().is_none(), "the shim was not restarted");
    assert_eq!(shim.proc.pid(), shim_pid);

    // Never two engines, and not one ERROR line in the shim's whole log (engine output included).
    host.assert_no_lock_failed();
    host.assert_lives_never_overlap(&[]);
    let errors: Vec<String> = shim
        .log()
        .iter()
        .filter(|l| l.level() == "ERROR")
        .map(|l| l.message().to_string())
        .collect();
    assert_eq!(errors, Vec::<String>::new(), "no ERROR line");
}
