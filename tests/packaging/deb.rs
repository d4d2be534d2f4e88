//! The Debian package: lintian finds no errors; in a clean Debian root it installs, runs, carries
//! its man pages, its unit (installed, verified, not enabled) and its example config as a conffile,
//! and `dpkg -P` takes it all away again, leaving only what Debian policy keeps (the system user).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use engine_shim::config::Overrides;

use crate::debian_root::{deb, repo, require_tool, text, Container};

/// Where the package lands in the container.
const DEB_IN_ROOT: &str = "/srv/engine-shim.deb";

#[test]
fn lintian_finds_no_errors() {
    require_tool("lintian");
    let output = Command::new("lintian")
        .args(["--fail-on", "error", "--no-tag-display-limit"])
        .arg(deb())
        .output()
        .expect("lintian runs");
    let report = text(&output.stdout);
    // Every tag left is printed, so the run's log shows what remains (warnings, infos).
    println!("lintian:\n{report}");
    assert!(
        output.status.success() && !report.lines().any(|l| l.starts_with("E: ")),
        "lintian reports errors:\n{report}{}",
        text(&output.stderr)
    );
}

#[test]
fn example_config_is_a_valid_run_config() {
    let path = repo().join("deploy/engine-shim.toml");
    let config = Overrides {
        config: Some(path.clone()),
        ..Overrides::default()
    }
    .resolve()
    .unwrap_or_else(|e| panic!("{} is not a valid `run --config` file: {e}", path.display()));
    assert_eq!(config.engines.len(), 1, "today's runner, one [[engine]]");
    assert_eq!(
        config.lock_dir.as_deref(),
        Some(Path::new("/var/lib/engine-shim"))
    );
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/engine-shim.service")).unwrap();
    let stop_timeout = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| humantime_secs(v.trim()))
        .expect("the unit sets TimeoutStopSec=Ns");
    assert!(
        stop_timeout > config.grace.as_secs(),
        "TimeoutStopSec={stop_timeout}s must stay above the example config's grace ({:?})",
        config.grace
    );
}

/// `45s` → 45 (the only form the unit uses).
fn humantime_secs(value: &str) -> Option<u64> {
    value.strip_suffix('s')?.parse().ok()
}

#[test]
fn installs_runs_verifies_and_purges_cleanly_in_a_clean_debian_root() {
    let root = Container::idle(&[(deb(), DEB_IN_ROOT)]);
    let before = files(&root);

    root.sh_ok(&format!("dpkg -i {DEB_IN_ROOT}"));
    let version = root.sh_ok("engine-shim --version");
    assert_eq!(
        version.trim(),
        format!("engine-shim {}", env!("CARGO_PKG_VERSION"))
    );

    // The pages are rendered from the CLI: the run page lists run's flags.
    let page = root.sh_ok("MANPAGER=cat MANWIDTH=100 man engine-shim 2>&1");
    assert!(
        page.contains("engine-shim") && page.contains("step-down"),
        "{page}"
    );
    let run_page = root.sh_ok("MANPAGER=cat MANWIDTH=100 man engine-shim-run 2>&1");
    for flag in ["--grace", "--lock-dir", "--config", "ENGINE_SHIM_NODE"] {
        assert!(
            run_page.contains(flag),
            "man engine-shim-run lacks {flag}:\n{run_page}"
        );
    }

    let verify = root.exec(&["systemd-analyze", "verify", "engine-shim.service"]);
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify in the Debian root: {}\nstderr:\n{}",
        verify.status,
        text(&verify.stderr)
    );
    let enabled = root.exec(&["systemctl", "is-enabled", "engine-shim.service"]);
    assert_eq!(
        text(&enabled.stdout).trim(),
        "disabled",
        "installed, not enabled"
    );

    let conffiles = root.sh_ok("dpkg-query --showformat='${Conffiles}' --show engine-shim");
    assert!(
        conffiles.contains("/etc/engine-shim/engine-shim.toml"),
        "the example config is a conffile: {conffiles}"
    );
    root.sh_ok("getent passwd engine-shim");
    assert!(root.processes_named(&["engine-shim"]).is_empty());

    root.sh_ok("dpkg -P engine-shim");
    assert!(
        root.processes_named(&["engine-shim", "fake-engine"])
            .is_empty(),
        "dpkg -P left a process running"
    );
    let after = files(&root);
    let left: Vec<&String> = after.difference(&before).collect();
    // Debian keeps a system user on purge (its files may outlive the package); shadow's tools keep
    // a backup of each file they edit.
    let policy = [
        "/etc/group-",
        "/etc/gshadow-",
        "/etc/passwd-",
        "/etc/shadow-",
        "/etc/subgid-",
        "/etc/subuid-",
    ];
    let unexpected: Vec<&&String> = left
        .iter()
        .filter(|path| !policy.contains(&path.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "dpkg -P left files behind: {unexpected:#?}"
    );
    let removed: Vec<&String> = before.difference(&after).collect();
    assert!(
        removed.is_empty(),
        "installing and purging removed files: {removed:#?}"
    );
}

/// Every path in the root's own file system, except those that change without the package (dpkg's
/// and apt's own records, logs, caches, the temporary and virtual file systems).
fn files(root: &Container) -> BTreeSet<String> {
    root.sh_ok(
        "find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \
         -o -path /var/lib/dpkg -o -path /var/log -o -path /var/cache \\) -prune -o -print",
    )
    .lines()
    .map(str::to_string)
    .collect()
}
