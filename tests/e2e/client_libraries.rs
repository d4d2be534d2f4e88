//! The client libraries people build their tools on work against fake-node: polkadot.js,
//! polkadot-api and py substrate-interface each read the release at an old and a new block and
//! follow finalized heads across a runtime upgrade.
//!
//! Each library is driven by a script in `tests/clients/` that prints one JSON object per line; the
//! libraries are installed (pinned) by `scripts/client-libs`, which `scripts/test` runs first. A
//! missing library fails its test with the install command: these tests never skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{Node, Proc};
use serde_json::{json, Value};

/// The release at genesis, and the one the upgrade block brings.
const OLD_RELEASE: &str = "1.3.0";
const NEW_RELEASE: &str = "1.4.0";
/// Block the script is started at (its "old block"), the upgrade block, and the last block followed.
const OLD_BLOCK: u64 = 2;
const UPGRADE_BLOCK: u64 = 4;
const LAST_BLOCK: u64 = 5;

/// A client library and the script that drives it.
#[derive(Clone, Copy, Debug)]
enum Library {
    PolkadotJs,
    PolkadotApi,
    SubstrateInterface,
}

impl Library {
    fn clients_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
    }

    /// The Python venv `scripts/client-libs` installs into (same override variable).
    fn venv() -> PathBuf {
        std::env::var_os("ENGINE_SHIM_CLIENT_VENV")
            .map(PathBuf::from)
            .map(|p| {
                if p.is_relative() {
                    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
                } else {
                    p
                }
            })
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/client-venv"))
    }

    /// A file that exists only once the library is installed.
    fn installed_marker(self) -> PathBuf {
        match self {
            Library::PolkadotJs => {
                Self::clients_dir().join("node_modules/@polkadot/api/package.json")
            }
            Library::PolkadotApi => {
                Self::clients_dir().join("node_modules/polkadot-api/package.json")
            }
            Library::SubstrateInterface => Self::venv().join(".engine-shim-stamp"),
        }
    }

    /// The command that runs this library's script with `args`; panics naming the install command
    /// when the library is not installed.
    fn command(self, args: &[&str]) -> Command {
        let marker = self.installed_marker();
        assert!(
            marker.exists(),
            "{self:?} is not installed ({} is missing): run `scripts/client-libs` \
             (it installs the pinned client libraries from tests/clients/)",
            marker.display()
        );
        let mut command = match self {
            Library::PolkadotJs => node_command("polkadot_js.mjs"),
            Library::PolkadotApi => node_command("papi.mjs"),
            Library::SubstrateInterface => {
                let mut command = Command::new(Self::venv().join("bin/python"));
                command.arg(Self::clients_dir().join("substrate_interface.py"));
                command
            }
        };
        command.args(args);
        command
    }
}

fn node_command(script: &str) -> Command {
    let mut command = Command::new("node");
    command.arg(Library::clients_dir().join(script));
    command
}

/// The parsed JSON line at `index` of the script's output (stderr lines are not JSON).
fn event(proc: &Proc, index: usize) -> Value {
    let line = &proc.output.lines()[index];
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
}

/// Waits for the script's next event named `name` from line `from` on; a script that reports an
/// error instead fails the test with the library's own message.
async fn wait_event(proc: &Proc, from: usize, name: &str, pred: impl Fn(&Value) -> bool) -> usize {
    let (index, found) = proc
        .output
        .wait_for(from, &format!("event `{name}`"), |line| {
            let value: Value = serde_json::from_str(line).ok()?;
            match value["event"].as_str() {
                Some("error") => Some(Err(value["message"].as_str().unwrap_or("").to_string())),
                Some(event) if event == name && pred(&value) => Some(Ok(())),
                _ => None,
            }
        })
        .await;
    if let Err(message) = found {
        panic!(
            "{} reported an error before `{name}`:\n{message}\nall output:\n{}",
            proc.name,
            proc.output.dump()
        );
    }
    index
}

fn release_json(version: &str) -> Value {
    let parts: Vec<u64> = version.split('.').map(|p| p.parse().unwrap()).collect();
    json!({"major": parts[0], "minor": parts[1], "patch": parts[2]})
}

/// What a script saw while fake-node built blocks OLD_BLOCK+1..=LAST_BLOCK with an upgrade at
/// UPGRADE_BLOCK, one block at a time, each built only once the script reported the previous one.
struct Run {
    node: Node,
    old_hash: String,
    events: Vec<Value>,
}

impl Run {
    fn all(&self, name: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["event"] == name).collect()
    }

    fn one(&self, name: &str) -> &Value {
        let found = self.all(name);
        assert_eq!(
            found.len(),
            1,
            "one `{name}` event expected: {:#?}",
            self.events
        );
        found[0]
    }
}

async fn follow_an_upgrade(library: Library) -> Run {
    let node = Node::start(&["--release", OLD_RELEASE]).await;
    let old_hash = node.build_to(OLD_BLOCK).await;
    let last = LAST_BLOCK.to_string();
    let mut proc = Proc::spawn(
        &format!("{library:?}"),
        library.command(&[&node.url, &old_hash, &last]),
    );
    let mut seen = wait_event(&proc, 0, "ready", |_| true).await;
    for number in OLD_BLOCK + 1..=LAST_BLOCK {
        if number == UPGRADE_BLOCK {
            node.set_release(NEW_RELEASE).await;
        }
        node.new_blocks(1).await;
        seen = wait_event(&proc, seen, "finalized", |e| e["number"] == number).await;
    }
    let status = proc.wait_exit().await;
    assert!(
        status.success(),
        "{library:?} script exited with {status}; output:\n{}",
        proc.output.dump()
    );
    let events = (0..proc.output.mark())
        .filter(|&i| !proc.output.lines()[i].starts_with("[stderr] "))
        .map(|i| event(&proc, i))
        .collect();
    Run {
        node,
        old_hash,
        events,
    }
}

/// Every finalized block from the one current at connection time to the last, in order, each with
/// the node's hash for that number and the release of its own state.
async fn assert_followed_across_the_upgrade(run: &Run) {
    let finalized = run.all("finalized");
    let numbers: Vec<u64> = finalized
        .iter()
        .map(|e| e["number"].as_u64().unwrap())
        .collect();
    assert_eq!(
        numbers,
        (OLD_BLOCK..=LAST_BLOCK).collect::<Vec<_>>(),
        "finalized blocks are followed one by one across the upgrade: {finalized:#?}"
    );
    for event in finalized {
        let number = event["number"].as_u64().unwrap();
        assert_eq!(
            event["hash"],
            run.node.block_hash(number).await,
            "#{number}"
        );
        let expected = if number < UPGRADE_BLOCK {
            OLD_RELEASE
        } else {
            NEW_RELEASE
        };
        assert_eq!(
            event["release"],
            release_json(expected),
            "release at #{number}"
        );
    }
}

/// The release at the old block, read after the upgrade: history through the old runtime.
fn assert_old_release(run: &Run) {
    let release = run.one("release");
    assert_eq!(release["at"], run.old_hash.as_str());
    assert_eq!(release["number"], OLD_BLOCK);
    assert_eq!(release["release"], release_json(OLD_RELEASE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polkadot_js_reads_old_and_new_releases_and_follows_finality_across_an_upgrade() {
    let run = follow_an_upgrade(Library::PolkadotJs).await;
    let connected = run.one("connected");
    assert_eq!(connected["library"], "@polkadot/api");
    assert_eq!(connected["chain"], "fake-node");
    assert_followed_across_the_upgrade(&run).await;
    assert_old_release(&run);
    let specs: Vec<&Value> = run
        .all("finalized")
        .iter()
        .map(|e| &e["specVersion"])
        .collect();
    assert_ne!(
        specs.first(),
        specs.last(),
        "polkadot.js saw the runtime change at the upgrade: {specs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polkadot_api_follows_finalized_blocks_and_reads_the_release_across_an_upgrade() {
    let run = follow_an_upgrade(Library::PolkadotApi).await;
    let connected = run.one("connected");
    assert_eq!(connected["library"], "polkadot-api");
    assert_eq!(connected["genesis"], run.node.block_hash(0).await);
    assert_followed_across_the_upgrade(&run).await;
    assert_eq!(
        run.all("finalized")[0]["hash"],
        run.old_hash.as_str(),
        "the first finalized block is the old block"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn substrate_interface_reads_blocks_and_releases_and_follows_finality_across_an_upgrade() {
    let run = follow_an_upgrade(Library::SubstrateInterface).await;
    let connected = run.one("connected");
    assert_eq!(connected["library"], "substrate-interface");
    assert_eq!(connected["chain"], "fake-node");
    let header = run.one("header");
    assert_eq!(header["hash"], run.old_hash.as_str());
    assert_eq!(header["number"], OLD_BLOCK);
    assert_eq!(
        header["parentHash"],
        run.node.block_hash(OLD_BLOCK - 1).await
    );
    let block = run.one("block");
    assert_eq!(block["hash"], run.old_hash.as_str());
    assert_eq!(block["number"], OLD_BLOCK);
    assert_eq!(
        block["extrinsics"], 0,
        "fake-node blocks have no extrinsics"
    );
    assert_followed_across_the_upgrade(&run).await;
    assert_old_release(&run);
}
