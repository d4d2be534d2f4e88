//! The systemd unit: its hardening score is held, and under a real systemd (a container with systemd
//! as PID 1, the package installed) it runs an upgrade with an exact hand-over, survives a SIGKILL
//! of the shim (systemd restarts it; KillMode=mixed leaves no orphan engine), hands over exactly
//! again, answers `systemctl reload` and `systemctl stop` (exit 0), and `dpkg -P` stops it all.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::debian_root::{deb, repo, require_tool, text, Container};
use crate::harness::{self, EngineEvent, Node};

/// The unit's exposure as `systemd-analyze security --offline=yes` rates it today (0 = locked
/// down, 10 = unprotected). Lower it when hardening improves; never raise it.
const MAX_EXPOSURE: f64 = 1.4;

/// The engines' data directory, under Chainflip's config root as the real engine keeps `data.db`:
/// the unit's hardening must leave it writable (`ReadWritePaths=-/etc/chainflip`).
const ENGINE_DATA: &str = "/etc/chainflip/data";

#[test]
fn hardening_exposure_stays_at_most_the_current_score() {
    require_tool("systemd-analyze");
    let unit = repo().join("deploy/systemd/engine-shim.service");
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs");
    let report = text(&output.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for engine-shim.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in:\n{report}{}", text(&output.stderr)));
    println!("systemd-analyze security --offline=yes: exposure {exposure}");
    assert!(
        exposure <= MAX_EXPOSURE,
        "the unit's exposure rose to {exposure} (held at {MAX_EXPOSURE}):\n{report}"
    );
}

/// The settings the shim's behaviour depends on, read from the unit as shipped (their reasons are
/// in deploy/systemd/README.md). The boot test below shows them at work; this names the one that
/// changed.
#[test]
fn unit_keeps_the_settings_the_shim_relies_on() {
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/engine-shim.service")).unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the unit sets no {key}="))
            .trim()
            .to_string()
    };
    // SIGTERM to the shim alone (it stops its engine itself); SIGKILL to what is left.
    assert_eq!(value("KillMode"), "mixed");
    assert_eq!(value("Restart"), "always");
    assert_eq!(value("RestartSec"), "5s");
    assert_eq!(
        value("StartLimitIntervalSec"),
        "0",
        "restarts are never given up"
    );
    assert_eq!(value("User"), "engine-shim");
    assert_eq!(
        value("StateDirectory"),
        "engine-shim",
        "the example config's lock_dir"
    );
    assert_eq!(
        value("RuntimeDirectory"),
        "engine-shim",
        "the example config's control socket"
    );
    assert_eq!(value("NoNewPrivileges"), "yes");
    assert_eq!(value("ProtectSystem"), "strict");
    assert_eq!(
        value("ExecStart"),
        "/usr/bin/engine-shim run --config /etc/engine-shim/engine-shim.toml"
    );
}

/// The operator's story on one host: the package installed, the unit started with a drop-in that
/// points it at the node and names three fake-engine versions on one data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_under_systemd_survives_a_sigkill_of_the_shim() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let host = SharedDir::new();
    let fake_engine = harness::bin("fake-engine");
    let dir = host.dir.path().to_path_buf();
    let root = Container::booted(
        &[
            (deb(), "/srv/engine-shim.deb"),
            (&fake_engine, &fake_engine.display().to_string()),
        ],
        &[(&dir, &dir.display().to_string())],
    );
    root.sh_ok("dpkg -i /srv/engine-shim.deb");
    // The operator's step from the README: the engine's config root belongs to the unit's user.
    root.sh_ok(&format!(
        "mkdir -p {ENGINE_DATA} && chown -R engine-shim: /etc/chainflip"
    ));
    install_drop_in(&root, &node, &host, &fake_engine);
    root.sh_ok("systemctl daemon-reload && systemctl start engine-shim");

    // Release 1.0.0: engine 1.0.0 runs under the unit, as the unit's user.
    let first = host.wait_event("start", "1.0.0", 1).await;
    let user = root.sh_ok(&format!("stat -c %U /proc/{}", first.pid));
    assert_eq!(
        user.trim(),
        "engine-shim",
        "the engine runs as the unit's user"
    );

    // The upgrade to 1.1.0: an exact hand-over at the upgrade block.
    let second = upgrade(&node, &host, &first, "1.1.0").await;

    // SIGKILL of the shim's main process: systemd kills the rest of the cgroup and restarts it.
    let shim_pid = main_pid(&root);
    root.sh_ok("systemctl kill --signal=SIGKILL --kill-whom=main engine-shim");
    root.wait_sh(
        "systemd to restart the killed shim",
        "systemctl show --property NRestarts --value engine-shim",
        |n| n.trim() == "1",
    );
    let restarted = host.wait_event("start", "1.1.0", 2).await;
    assert_ne!(main_pid(&root), shim_pid, "a new shim runs");
    assert_eq!(
        engine_state(&root, second.pid),
        None,
        "the engine of the killed shim is gone (no orphan)"
    );
    assert!(
        host.events().iter().all(|e| e.event != "start"
            || e.pid == restarted.pid
            || engine_state(&root, e.pid).is_none()),
        "only the restarted shim's engine runs:\n{}",
        harness::describe_events(&host.events())
    );
    host.assert_no_lock_failed();

    // The next upgrade, through the restarted shim: exact again.
    let third = upgrade(&node, &host, &restarted, "1.2.0").await;
    host.assert_no_lock_failed();

    // `systemctl reload`: SIGHUP re-reads the packaged config file; the running engine stays.
    root.sh_ok("systemctl reload engine-shim");
    root.wait_sh(
        "the shim to answer the reload",
        "journalctl --unit engine-shim --output cat --no-pager",
        |log| log.contains("SIGHUP: re-read /etc/engine-shim/engine-shim.toml"),
    );
    assert!(
        engine_state(&root, third.pid).is_some(),
        "a reload leaves the engine running"
    );

    // `systemctl stop`: SIGTERM to the shim alone, which stops its engine and exits 0.
    root.sh_ok("systemctl stop engine-shim");
    let stop = host.wait_event("stop", "1.2.0", 1).await;
    assert_eq!(stop.pid, third.pid);
    let result = root.sh_ok(
        "systemctl show --property Result --property ExecMainCode --property ExecMainStatus engine-shim",
    );
    assert!(
        result.contains("Result=success") && result.contains("ExecMainStatus=0"),
        "the shim stopped cleanly, exit 0:\n{result}"
    );

    // Purging the package stops the running service, and with it the engine.
    root.sh_ok("systemctl start engine-shim");
    let last = host.wait_event("start", "1.2.0", 2).await;
    root.sh_ok("dpkg -P engine-shim");
    let stop = host.wait_event("stop", "1.2.0", 2).await;
    assert_eq!(stop.pid, last.pid);
    let left = root.processes_named(&["engine-shim", "fake-engine"]);
    assert!(left.is_empty(), "dpkg -P left processes running: {left:?}");
    assert_eq!(engine_state(&root, last.pid), None);
    let unit = root.exec(&["systemctl", "cat", "engine-shim.service"]);
    assert!(!unit.status.success(), "the unit is gone after dpkg -P");
    // What the service made is gone with it; the engines' data (the operator's) stays.
    root.sh_ok("! test -e /var/lib/engine-shim && ! test -e /run/engine-shim && ! test -e /etc/engine-shim");
    root.sh_ok(&format!("test -e {ENGINE_DATA}/LOCK"));
    let journal = root.sh_ok("journalctl --unit engine-shim --output cat --no-pager");
    assert!(
        journal.contains("is no longer compatible with the release version '1.1.0'"),
        "the shim's log reaches the journal:\n{journal}"
    );
}

/// The engines' shared event file, in a host directory the container sees at
/// the same path, so the harness reads the events where the engines write them. Not under /tmp:
/// the unit's PrivateTmp hides that from the engine. Unlike the harness's `Host` it kills nothing
/// on drop: the pids in its events are the container's, not this host's (the container's removal
/// ends them).
struct SharedDir {
    dir: tempfile::TempDir,
    events: PathBuf,
}

impl SharedDir {
    fn new() -> SharedDir {
        let parent = repo().join("target/packaging-tests");
        std::fs::create_dir_all(&parent).unwrap();
        let dir = tempfile::tempdir_in(&parent).expect("tempdir");
        // The engines run as the unit's user, whose uid exists only in the container.
        chmod_777(dir.path());
        SharedDir {
            events: dir.path().join("events.jsonl"),
            dir,
        }
    }

    fn events(&self) -> Vec<EngineEvent> {
        harness::read_events(&self.events)
    }

    /// Waits for the `n`th (1-based) `event` of engine `version`.
    async fn wait_event(&self, event: &str, version: &str, n: usize) -> EngineEvent {
        let what = format!("event #{n} `{event}` of engine {version}");
        let matches = |e: &&EngineEvent| e.event == event && e.version == version;
        let events = harness::wait_for_events(
            &self.events,
            &what,
            |events| events.iter().filter(matches).count() >= n,
            |events| format!("engine events:\n{}", harness::describe_events(events)),
        )
        .await;
        events.iter().filter(matches).nth(n - 1).unwrap().clone()
    }

    /// The hand-over from `old` to `new_version` is exact: `old` wrote its stop before the new
    /// engine started, and the new one was told the upgrade block (number and hash).
    async fn assert_hand_over(
        &self,
        old: &EngineEvent,
        new_version: &str,
        block: u64,
        block_hash: &str,
    ) -> EngineEvent {
        let new = self.wait_event("start", new_version, 1).await;
        let stop = self.wait_event("stop", &old.version, 1).await;
        assert_eq!(stop.pid, old.pid, "the running {} stopped", old.version);
        assert!(
            stop.unix_nanos() < new.unix_nanos(),
            "stop({}) before start({new_version}):\n{}",
            old.version,
            harness::describe_events(&self.events())
        );
        assert_eq!(
            new.start_block(),
            Some(block),
            "{{block}} = the upgrade block"
        );
        assert_eq!(new.start_hash(), Some(block_hash));
        new
    }

    /// No engine ever found the data directory locked by another: no two ran at once.
    fn assert_no_lock_failed(&self) {
        let events = self.events();
        assert!(
            !events.iter().any(|e| e.event == "lock_failed"),
            "an engine found the data directory locked by another one:\n{}",
            harness::describe_events(&events)
        );
    }
}

fn chmod_777(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
}

/// Points the installed unit at `node` and at three fake-engines, through a drop-in as an operator
/// would; everything else comes from the packaged unit and the packaged example config.
fn install_drop_in(root: &Container, node: &Node, host: &SharedDir, fake_engine: &Path) {
    let engines: Vec<String> = ["1.0.0", "1.1.0", "1.2.0"]
        .iter()
        .map(|version| {
            let words: Vec<String> = [
                fake_engine.display().to_string(),
                "--as-version".into(),
                version.to_string(),
                "--data-dir".into(),
                ENGINE_DATA.to_string(),
                "--events".into(),
                host.events.display().to_string(),
                "start-block={block}".into(),
                "start-hash={block_hash}".into(),
            ]
            .to_vec();
            format!("{version}={}", harness::shell_words(&words))
        })
        .collect();
    let drop_in = format!(
        "[Service]\n\
         Environment=ENGINE_SHIM_NODE={node}\n\
         Environment=ENGINE_SHIM_METRICS_LISTEN=127.0.0.1:0\n\
         Environment=ENGINE_SHIM_LOG_FORMAT=json\n\
         Environment=\"ENGINE_SHIM_ENGINES={engines}\"\n\
         ReadWritePaths={dir}\n",
        node = node.url,
        engines = engines.join(";"),
        dir = host.dir.path().display(),
    );
    let path = host.dir.path().join("test.conf");
    std::fs::write(&path, drop_in).unwrap();
    root.sh_ok(&format!(
        "mkdir -p /etc/systemd/system/engine-shim.service.d && \
         cp {} /etc/systemd/system/engine-shim.service.d/test.conf",
        path.display()
    ));
}

/// Sets the release to `version` and builds its first block; asserts the hand-over from `old` is
/// exact (old stopped before the new one started, told the upgrade block) and returns the new
/// engine's start event.
async fn upgrade(node: &Node, host: &SharedDir, old: &EngineEvent, version: &str) -> EngineEvent {
    node.set_release(version).await;
    let hash = node.new_blocks(1).await;
    let number = node.block_number(&hash).await;
    host.assert_hand_over(old, version, number, &hash).await
}

/// The unit's main pid (the shim), as systemd reports it.
fn main_pid(root: &Container) -> u32 {
    let pid = root.sh_ok("systemctl show --property MainPID --value engine-shim");
    pid.trim().parse().expect("MainPID is a number")
}

/// The state letter of the fake-engine `pid` in the container (`None`: no such engine; a pid since
/// given to another program does not count). systemd as PID 1 reaps orphans, so a killed engine
/// does not linger as a zombie.
fn engine_state(root: &Container, pid: u32) -> Option<String> {
    let out = root.exec(&["cat", &format!("/proc/{pid}/stat")]);
    if !out.status.success() {
        return None;
    }
    let stat = text(&out.stdout);
    let (head, rest) = stat.rsplit_once(") ")?;
    if !head.ends_with("(fake-engine") {
        return None;
    }
    let state = rest.split_whitespace().next()?;
    (state != "Z").then(|| state.to_string())
}
