//! What the Debian-package and systemd tests share: the tools they need (a missing one fails the test
//! and names `scripts/packaging-tools`), the package built once per run by `scripts/build-deb`, a
//! clean Debian root made from Debian's own packages (mmdebstrap, imported into podman once and kept
//! by tag), and containers on it that are removed when their guard drops.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The clean root: Debian bookworm `minbase` plus systemd (to verify the unit, and to boot it as
/// PID 1) and man-db (to read the installed pages). Bump the tag when the recipe changes.
pub const IMAGE: &str = "localhost/engine-shim-test/bookworm-systemd:1";
const IMAGE_PACKAGES: &str = "systemd,systemd-sysv,man-db";

/// Safety net for a container to boot or a unit to reach a state: only a real hang trips it.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The repository root (the root package's manifest directory).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Panics unless `tool` is on PATH, naming the script that installs it.
pub fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: run scripts/packaging-tools (scripts/test-packaging does)"
    );
}

/// Runs `command`, panicking with its output unless it exits 0.
pub fn run_ok(what: &str, command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The engine-shim .deb of this checkout, built once per test run by `scripts/build-deb` (which
/// rebuilds nothing that is up to date).
pub fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        require_tool("cargo-deb");
        let output = run_ok(
            "scripts/build-deb",
            Command::new(repo().join("scripts/build-deb")).current_dir(repo()),
        );
        let path = PathBuf::from(text(&output.stdout).trim().lines().last().unwrap_or(""));
        assert!(
            path.extension().is_some_and(|e| e == "deb") && path.is_file(),
            "scripts/build-deb did not name a .deb as its last line: {path:?}"
        );
        path
    })
}

/// The clean-root image, made from Debian's packages the first time (about 30 s to 3 min, with the
/// network) and reused by tag afterwards: no registry is ever pulled from.
pub fn image() -> &'static str {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !*built {
        require_tool("podman");
        require_tool("runc");
        let exists = Command::new("podman")
            .args(["image", "exists", IMAGE])
            .status()
            .expect("podman runs");
        if !exists.success() {
            require_tool("mmdebstrap");
            let script = format!(
                "set -o pipefail; mmdebstrap --quiet --variant=minbase --include={IMAGE_PACKAGES} \
                 bookworm - | podman import - {IMAGE}"
            );
            run_ok(
                "making the Debian root with mmdebstrap",
                Command::new("bash").args(["-c", &script]),
            );
        }
        *built = true;
    }
    IMAGE
}

/// A podman container on [`image`], removed (with everything in it) when dropped.
pub struct Container {
    pub name: String,
}

impl Container {
    /// Starts a container that idles (no init): for dpkg and the offline tools. `mounts` are
    /// `(host path, container path)` pairs, read-only.
    pub fn idle(mounts: &[(&Path, &str)]) -> Container {
        Container::start(mounts, &["--network", "none"], &["sleep", "infinity"])
    }

    /// Starts a container with systemd as PID 1 on the host's network (so it reaches fake-node on
    /// loopback) and waits until it has booted. `mounts` as for [`Container::idle`]; `rw_mounts`
    /// are writable.
    pub fn booted(mounts: &[(&Path, &str)], rw_mounts: &[(&Path, &str)]) -> Container {
        let mut extra: Vec<String> = vec!["--network".into(), "host".into()];
        extra.push("--systemd=always".into());
        // systemd builds each unit's sandbox (ProtectSystem=, PrivateTmp=, …) in a mount namespace
        // of its own; without CAP_SYS_ADMIN it quietly runs the unit unsandboxed, which would hide
        // a hardening setting that breaks the engine.
        extra.push("--cap-add=SYS_ADMIN".into());
        for (host, inside) in rw_mounts {
            extra.push("--volume".into());
            extra.push(format!("{}:{inside}", host.display()));
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let container = Container::start(mounts, &extra, &["/sbin/init"]);
        container.wait_booted();
        container
    }

    fn start(mounts: &[(&Path, &str)], extra: &[&str], command: &[&str]) -> Container {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let image = image();
        let name = format!(
            "engine-shim-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut podman = Command::new("podman");
        // Only runc works here, with these limits (see README "Packaging tests").
        podman.args(["run", "--detach", "--name", &name, "--runtime", "runc"]);
        podman.args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ]);
        for (host, inside) in mounts {
            podman
                .arg("--volume")
                .arg(format!("{}:{inside}:ro", host.display()));
        }
        podman.args(extra).arg(image).args(command);
        run_ok("podman run", &mut podman);
        Container { name }
    }

    /// Waits until systemd in the container says it has booted (`running`, or `degraded` with the
    /// failed units listed in the panic).
    fn wait_booted(&self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            // --wait blocks until boot ends; it fails at once while systemd is not listening yet.
            let out = self.exec(&["systemctl", "is-system-running", "--wait"]);
            let state = text(&out.stdout).trim().to_string();
            if state == "running" {
                return;
            }
            assert!(
                state != "degraded",
                "systemd in the container booted degraded; failed units:\n{}",
                self.sh_ok("systemctl --failed --no-legend")
            );
            assert!(
                Instant::now() < deadline,
                "systemd in the container did not boot within {TIMEOUT:?}: {state} {}",
                text(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `args` in the container; returns its output whatever the exit status.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .args(["exec", &self.name])
            .args(args)
            .output()
            .expect("podman exec runs")
    }

    /// Runs a shell `script` in the container; panics unless it exits 0; returns its stdout.
    pub fn sh_ok(&self, script: &str) -> String {
        let output = run_ok(
            &format!("`{script}` in the container"),
            Command::new("podman").args(["exec", &self.name, "sh", "-c", script]),
        );
        text(&output.stdout)
    }

    /// Polls a shell `script` in the container until `done` holds for its stdout (there is no
    /// notification for a unit's state); returns that stdout. Panics after [`TIMEOUT`].
    pub fn wait_sh(&self, what: &str, script: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let out = self.exec(&["sh", "-c", script]);
            let stdout = text(&out.stdout);
            if done(&stdout) {
                return stdout;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {TIMEOUT:?} waiting for {what}; last `{script}`: {stdout}{}",
                text(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pids and names of the processes in the container whose name is one of `names` (from
    /// /proc: no ps in a minbase root). Zombies do not count: they run nothing.
    pub fn processes_named(&self, names: &[&str]) -> Vec<String> {
        let script = "for d in /proc/[0-9]*; do \
                        s=$(cat $d/stat 2>/dev/null) || continue; \
                        echo \"${d#/proc/} $(cat $d/comm 2>/dev/null) $(echo \"$s\" | sed 's/.*) //' | cut -d' ' -f1)\"; \
                      done";
        self.sh_ok(script)
            .lines()
            .filter(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                words.len() == 3 && names.contains(&words[1]) && words[2] != "Z"
            })
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "0", &self.name])
            .output();
    }
}
