//! The container image (deploy/container/Containerfile), built with podman on a Debian base and
//! run against fake-node on loopback: an operator's container through an upgrade, its health
//! check, and `podman stop`.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::base_image::{free_port, podman, repo, run_ok, Container, Context, ULIMITS};
use crate::harness::{read_events, wait_for_events, EngineEvent, LogLine, Node, Proc, TIMEOUT};

/// The image's user (deploy/container/Containerfile).
const ENGINE_UID: u32 = 10001;

/// The multi-version image as the test builds it: two engine programs (fake-engine as 1.0.0 and
/// as 1.1.0, each named like a Chainflip 1.0–1.3 package's program) and a config naming both.
fn multi_version_context() -> Context {
    let context = Context::new();
    context.add_binary("fake-engine", "bin/fake-engine");
    for (program, version) in [
        ("chainflip-engine1.0", "1.0.0"),
        ("chainflip-engine1.1", "1.1.0"),
    ] {
        context.add_script(
            &format!("bin/{program}"),
            &format!("#!/bin/sh\nexec /usr/local/bin/fake-engine --as-version {version} \"$@\"\n"),
        );
    }
    fs::write(
        context.path("engine-shim.toml"),
        r#"# The multi-version image of the packaging test: fake-engine stands in for each engine.
log_format = "json"
shared_args = ["--data-dir", "/etc/chainflip/data", "--events", "/etc/chainflip/events.jsonl",
  "start-block={block}", "start-hash={block_hash}"]

[[engine]]
command = ["/usr/local/bin/chainflip-engine1.0"]

[[engine]]
command = ["/usr/local/bin/chainflip-engine1.1"]
"#,
    )
    .unwrap();
    context
}

/// A directory for the container's /etc/chainflip volume, owned by the image's user as an
/// operator's volume must be.
fn volume() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::chown(dir.path(), Some(ENGINE_UID), Some(ENGINE_UID))
        .expect("chown the volume (the packaging tests run as root)");
    dir
}

/// `podman run` of `image` in the foreground (its exit status is the container's), on the host's
/// network so it reaches fake-node on loopback.
fn run_container(
    container: &Container,
    image: &str,
    node: &Node,
    volume: &Path,
    extra: &[&str],
) -> Proc {
    let mut command = podman();
    command
        .arg("run")
        .args(ULIMITS)
        .args(["--name", &container.name, "--network", "host"])
        // No systemd here to run the health check's timer: the test runs it (`podman
        // healthcheck run`), as the timer would.
        .arg("--health-interval=disable")
        .args(["-e", &format!("ENGINE_SHIM_NODE={}", node.url)])
        .args([
            "-e",
            &format!("ENGINE_SHIM_METRICS_LISTEN=127.0.0.1:{}", free_port()),
        ])
        .args(["-e", "ENGINE_SHIM_GRACE=5s"])
        .args(["-v", &format!("{}:/etc/chainflip", volume.display())])
        .args(extra)
        .arg(image);
    Proc::spawn("container", command)
}

/// Waits for the container's shim to log a message containing `needle` (JSON lines).
async fn wait_log(proc: &Proc, from: usize, needle: &str) -> (usize, LogLine) {
    proc.output
        .wait_for(from, &format!("a log line with {needle:?}"), |line| {
            LogLine::parse(line).filter(|l| l.message().contains(needle))
        })
        .await
}

/// Waits until the image's HEALTHCHECK passes (`podman healthcheck run`), as the container engine
/// would see it at its next interval.
async fn wait_healthy(container: &Container, proc: &Proc) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !container.healthy() {
        assert!(
            std::time::Instant::now() < deadline,
            "the container never became healthy; output:\n{}",
            proc.output.dump()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn wait_event(events: &Path, event: &str, version: &str) -> EngineEvent {
    let found = wait_for_events(
        events,
        &format!("`{event}` of engine {version}"),
        |all| all.iter().any(|e| e.event == event && e.version == version),
        |all| format!("events: {all:?}"),
    )
    .await;
    found
        .into_iter()
        .find(|e| e.event == event && e.version == version)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_multi_version_image_waits_hands_over_and_stops_cleanly() {
    let image = "localhost/engine-shim-test:multi-version";
    multi_version_context().build(image);
    // Before any engine's release: both engines in the image wait.
    let node = Node::start(&["--release", "0.9.0"]).await;
    let volume = volume();
    let events = volume.path().join("events.jsonl");
    let container = Container::named("multi-version");
    let mut proc = run_container(&container, image, &node, volume.path(), &[]);

    // Runs as its own user, under an init.
    wait_log(&proc, 0, "WAITING for a compatible release version").await;
    assert_eq!(container.exec(&["id", "-u"]).trim(), ENGINE_UID.to_string());
    let init = container.exec(&["cat", "/proc/1/cmdline"]);
    assert!(init.starts_with("/usr/bin/catatonit"), "PID 1: {init:?}");

    // Healthy while the engine waits: the waiting engine has no endpoint, the shim answers.
    wait_healthy(&container, &proc).await;
    assert!(read_events(&events).is_empty(), "no engine runs yet");

    // Release 1.0.0 at block 1: engine 1.0.0 starts there.
    node.set_release("1.0.0").await;
    let first_upgrade = node.new_blocks(1).await;
    let old = wait_event(&events, "start", "1.0.0").await;
    assert_eq!(old.start_block(), Some(1));
    assert_eq!(old.start_hash(), Some(first_upgrade.as_str()));
    // The lock the shim took before starting it lies in the volume, the shim's own file.
    let lock = volume.path().join("engine-shim.lock");
    let owner = std::os::unix::fs::MetadataExt::uid(&fs::metadata(&lock).unwrap_or_else(|e| {
        panic!(
            "no lock file in the volume ({e}); output:\n{}",
            proc.output.dump()
        )
    }));
    assert_eq!(owner, ENGINE_UID);

    // Release 1.1.0 at block 2: 1.0.0 stops, then 1.1.0 starts from that very block.
    node.set_release("1.1.0").await;
    let upgrade = node.new_blocks(1).await;
    let new = wait_event(&events, "start", "1.1.0").await;
    let stop = wait_event(&events, "stop", "1.0.0").await;
    assert_eq!(stop.pid, old.pid);
    assert!(
        stop.unix_nanos() < new.unix_nanos(),
        "1.0.0 stopped before 1.1.0 started"
    );
    assert_eq!(new.start_block(), Some(2), "{{block}} = the upgrade block");
    assert_eq!(new.start_hash(), Some(upgrade.as_str()));
    wait_healthy(&container, &proc).await;

    // `podman stop`: SIGTERM to PID 1 reaches the shim, which stops its engine within its grace
    // and exits 0; nothing is killed after the timeout.
    let stop = podman()
        .args(["stop", "--time", "30", &container.name])
        .output()
        .unwrap();
    assert!(stop.status.success(), "podman stop: {stop:?}");
    let status = proc.wait_exit().await;
    assert_eq!(status.code(), Some(0), "output:\n{}", proc.output.dump());
    assert_eq!(container.inspect("{{.State.ExitCode}}"), "0");
    let all = read_events(&events);
    assert!(
        all.iter()
            .any(|e| e.event == "stop" && e.version == "1.1.0" && e.pid == new.pid),
        "engine 1.1.0 stopped on SIGTERM: {all:?}"
    );
    assert!(!all.iter().any(|e| e.event == "lock_failed"), "{all:?}");
    let lines = proc.output.lines();
    assert!(
        !lines.iter().any(|l| l.contains("was killed")),
        "{}",
        proc.output.dump()
    );
}

/// The runner-package image as the test builds it: a `chainflip-engine` Debian package whose
/// `/usr/bin/chainflip-engine` is fake-engine as today's runner covering 1.0.0 and 1.1.0
/// (switching inside its process), installed by the Containerfile, and the shipped
/// `engine-shim.runner.toml`.
fn runner_context() -> Context {
    let context = Context::new();
    context.add_binary("fake-engine", "bin/fake-engine");
    let root = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(root.path().join("DEBIAN")).unwrap();
    fs::create_dir_all(root.path().join("usr/bin")).unwrap();
    fs::write(
        root.path().join("DEBIAN/control"),
        "Package: chainflip-engine\nVersion: 1.1.0\nArchitecture: all\n\
         Maintainer: engine-shim tests <tests@engine-shim.invalid>\n\
         Description: stand-in for the Chainflip engine runner covering 1.0.0 and 1.1.0\n",
    )
    .unwrap();
    let program = root.path().join("usr/bin/chainflip-engine");
    fs::write(
        &program,
        "#!/bin/sh\nexec /usr/local/bin/fake-engine --as-versions 1.0.0,1.1.0 \"$@\"\n",
    )
    .unwrap();
    fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    run_ok(
        Command::new("dpkg-deb").args([
            "--build",
            "--root-owner-group",
            root.path().to_str().unwrap(),
            context
                .path("packages/chainflip-engine_1.1.0_all.deb")
                .to_str()
                .unwrap(),
        ]),
    );
    fs::copy(
        repo().join("deploy/container/engine-shim.runner.toml"),
        context.path("engine-shim.toml"),
    )
    .unwrap();
    context
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_package_image_runs_the_runner_through_its_own_upgrade() {
    crate::base_image::require("dpkg-deb");
    let image = "localhost/engine-shim-test:runner";
    runner_context().build(image);
    let node = Node::start(&["--release", "1.0.0"]).await;
    let volume = volume();
    let events = volume.path().join("events.jsonl");
    // The config an operator mounts over the image's (a ConfigMap in Kubernetes): the stand-in
    // runner follows the node itself, as the real one does.
    let config = tempfile::NamedTempFile::new().expect("tempfile");
    fs::write(
        config.path(),
        format!(
            r#"log_format = "json"
[[engine]]
versions = ["1.0.0", "1.1.0"]
command = ["/usr/bin/chainflip-engine", "--node", "{}", "--data-dir", "/etc/chainflip/data",
  "--events", "/etc/chainflip/events.jsonl"]
"#,
            node.url
        ),
    )
    .unwrap();
    fs::set_permissions(
        config.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let container = Container::named("runner");
    let mount = format!("{}:/etc/engine-shim.toml:ro", config.path().display());
    let mut proc = run_container(
        &container,
        image,
        &node,
        volume.path(),
        &["-v", &mount, "-e", "ENGINE_SHIM_STALE_AFTER=1s"],
    );

    wait_log(&proc, 0, "starting engine 1.1.0 (covers 1.0.0, 1.1.0)").await;
    let runner = wait_event(&events, "start", "1.0.0").await;
    wait_healthy(&container, &proc).await;

    // The upgrade inside the pair: the runner switches in its own process; the shim lets it be.
    node.set_release("1.1.0").await;
    node.new_blocks(1).await;
    let switch = wait_event(&events, "switch", "1.1.0").await;
    assert_eq!(switch.pid, runner.pid, "same process");
    wait_healthy(&container, &proc).await;

    // Finality stalls: past --stale-after the health check fails (the shim cannot vouch for the
    // engine), and passes again once blocks are finalized.
    node.stall_finality(true).await;
    node.new_blocks(2).await;
    let deadline = std::time::Instant::now() + TIMEOUT;
    while container.healthy() {
        assert!(
            std::time::Instant::now() < deadline,
            "the health check never failed while the node stalled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    node.stall_finality(false).await;
    node.new_blocks(1).await;
    wait_healthy(&container, &proc).await;

    let stop = podman()
        .args(["stop", "--time", "30", &container.name])
        .output()
        .unwrap();
    assert!(stop.status.success(), "podman stop: {stop:?}");
    let status = proc.wait_exit().await;
    assert_eq!(status.code(), Some(0), "output:\n{}", proc.output.dump());
    let all = read_events(&events);
    let lives: Vec<_> = all.iter().filter(|e| e.event == "start").collect();
    assert_eq!(lives.len(), 1, "one runner process all along: {all:?}");
    assert!(
        all.iter().any(|e| e.event == "stop" && e.pid == runner.pid),
        "the runner stopped on SIGTERM: {all:?}"
    );
}

#[test]
fn the_shipped_image_configs_are_accepted_by_the_shim() {
    for (config, first_program) in [
        (
            "engine-shim.multi-version.toml",
            "/usr/local/bin/chainflip-engine1.0",
        ),
        ("engine-shim.runner.toml", "/usr/bin/chainflip-engine"),
    ] {
        let path = repo().join("deploy/container").join(config);
        let lock_dir = tempfile::tempdir().unwrap();
        let args = vec!["--config".to_string(), path.display().to_string()];
        let (code, output) = crate::base_image::shim_start_up(&args, lock_dir.path());
        if std::path::Path::new(first_program).exists() {
            // An engine really installed here: the file parsed, whatever happens next.
            assert_ne!(code, Some(2), "{config}: {output}");
            continue;
        }
        assert_eq!(code, Some(1), "{config}: {output}");
        assert!(
            output.contains(&format!("engine program {first_program} does not exist")),
            "{config}: {output}"
        );
    }
}
