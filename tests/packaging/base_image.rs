//! Container images for the packaging tests, made on this machine from Debian's packages (no
//! registry is reachable): a base image from `mmdebstrap --variant=minbase bookworm` imported into
//! podman once and cached by tag, and podman invocations with the flags podman needs here (`runc`,
//! explicit rlimits, host or no network; FACTS.md "Building and testing packages here").
//! `scripts/packaging-tools` installs podman, runc, catatonit and mmdebstrap.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::harness;

/// The base every test image is built `FROM`: Debian bookworm minbase plus catatonit (the init
/// the Containerfile would otherwise install with apt-get, which needs a network).
pub const BASE: &str = "localhost/engine-shim-test-base:bookworm";

/// The rlimits `podman run` and `podman build` must be given here (the defaults fail under runc).
pub const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// Panics unless `tool` is on PATH, naming the script that installs it.
pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()));
    assert!(
        found,
        "{tool} is not installed: run scripts/packaging-tools (or scripts/test-packaging)"
    );
}

/// Runs `command` to completion; panics with its output unless it succeeds.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `podman --runtime runc` (crun fails on rlimits and cgroups here), once both are known to be
/// installed.
pub fn podman() -> Command {
    require("podman");
    require("runc");
    let mut command = Command::new("podman");
    command.args(["--runtime", "runc"]);
    command
}

/// The base image, imported once: later runs find it by its tag.
pub fn base_image() -> &'static str {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let exists = podman()
            .args(["image", "exists", BASE])
            .status()
            .expect("cannot run podman");
        if exists.success() {
            return;
        }
        require("mmdebstrap");
        eprintln!("building {BASE} with mmdebstrap (about a minute, once)");
        let rootfs = tempfile::tempdir().expect("tempdir");
        let tarball = rootfs.path().join("rootfs.tar");
        run_ok(Command::new("mmdebstrap").args([
            "--quiet",
            "--variant=minbase",
            "--include=catatonit",
            "bookworm",
            tarball.to_str().unwrap(),
        ]));
        run_ok(podman().args(["import", tarball.to_str().unwrap(), BASE]));
    });
    BASE
}

/// A build context for deploy/container/Containerfile, laid out as its header says.
pub struct Context {
    pub dir: tempfile::TempDir,
}

impl Default for Context {
    fn default() -> Self {
        Context::new()
    }
}

impl Context {
    /// An empty context with the shim, its health check and empty `bin/` and `packages/`.
    pub fn new() -> Context {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("bin")).unwrap();
        fs::create_dir(dir.path().join("packages")).unwrap();
        let context = Context { dir };
        context.add_binary("engine-shim", "engine-shim");
        fs::copy(
            repo().join("deploy/container/engine-shim-healthcheck"),
            context.path("engine-shim-healthcheck"),
        )
        .unwrap();
        context
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Copies the workspace binary `name` to `to` in the context, without its debug symbols (a
    /// debug build is 100 MB; stripped it copies into the image in a blink).
    pub fn add_binary(&self, name: &str, to: &str) {
        run_ok(Command::new("strip").args([
            "--strip-debug",
            "-o",
            self.path(to).to_str().unwrap(),
            harness::bin(name).to_str().unwrap(),
        ]));
    }

    /// Writes an executable file `to` in the context.
    pub fn add_script(&self, to: &str, text: &str) {
        let path = self.path(to);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Builds deploy/container/Containerfile on [`BASE`] from this context as `tag`, offline, in
    /// Docker's format (OCI images have no HEALTHCHECK).
    pub fn build(&self, tag: &str) {
        let base = base_image();
        run_ok(
            podman().arg("build").args(ULIMITS).args([
                "--quiet",
                "--pull=never",
                "--network",
                "none",
                "--format",
                "docker",
                "--build-arg",
                &format!("BASE={base}"),
                "-f",
                repo()
                    .join("deploy/container/Containerfile")
                    .to_str()
                    .unwrap(),
                "-t",
                tag,
                self.dir.path().to_str().unwrap(),
            ]),
        );
    }
}

/// The workspace root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A container this test started, by its unique name: removed (killed if still running) on drop.
pub struct Container {
    pub name: String,
}

impl Container {
    pub fn named(test: &str) -> Container {
        let name = format!("engine-shim-test-{test}-{}", std::process::id());
        // A container left by a killed earlier run of this very test (same name and pid) is ours.
        let _ = podman()
            .args(["rm", "--force", "--time", "0", &name])
            .output();
        Container { name }
    }

    /// `podman exec` in the container; the command's stdout.
    pub fn exec(&self, args: &[&str]) -> String {
        let output = run_ok(podman().arg("exec").arg(&self.name).args(args));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `podman healthcheck run`: true if the image's HEALTHCHECK passes now.
    pub fn healthy(&self) -> bool {
        podman()
            .args(["healthcheck", "run", &self.name])
            .output()
            .expect("cannot run podman healthcheck")
            .status
            .success()
    }

    /// `podman inspect --format FORMAT`.
    pub fn inspect(&self, format: &str) -> String {
        let output = run_ok(podman().args(["inspect", "--format", format, &self.name]));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "--force", "--time", "0", &self.name])
            .output();
    }
}

/// A free TCP port on loopback (the kernel's pick, released at once for the container to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// Runs the real `engine-shim run ARGS` on this machine, outside any image, with none of the
/// caller's `ENGINE_SHIM_*` settings and the lock directory in `lock_dir` (as the image's ENV
/// sets it): `(exit code, stdout and stderr)`. For checking that a shipped config and its flags
/// parse: start-up then stops at the first file only the image has (an engine program), exit 1,
/// where a bad flag or key would be a usage error, exit 2.
pub fn shim_start_up(args: &[String], lock_dir: &Path) -> (Option<i32>, String) {
    let mut command = Command::new(harness::bin("engine-shim"));
    command.arg("run").args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("ENGINE_SHIM_") {
            command.env_remove(name);
        }
    }
    command.env("ENGINE_SHIM_LOCK_DIR", lock_dir);
    let output = command.output().expect("cannot run engine-shim");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}
