//! The default lock follows the engine's config root the way the engine finds it: its own
//! `--config-root` / `-c` argument first, then `CF_CONFIG_ROOT` (which the engine inherits from
//! the shim), then `/etc/chainflip`. So shims wrapping the engines of one host meet at one lock
//! without a `--lock` flag, whichever way the operator set the config root.

use std::path::Path;
use std::process::Command;

use crate::common::{bin, engine_script, lock_is_free, LogLine, Node, Proc};

/// `engine-shim run` without `--lock`, wrapping a 1.0.0 fake-engine given `engine_args`, with
/// `CF_CONFIG_ROOT` set to `env_root` in its environment.
fn shim_without_lock(node: &Node, dir: &Path, env_root: &Path, engine_args: &[&str]) -> Proc {
    let engine = engine_script(dir, "1.0.0");
    let mut command = Command::new(bin("engine-shim"));
    command
        .arg("run")
        .args(["--node", &node.url, "--log-format", "json"])
        .args(["--engine-version", "1.0.0", "--"])
        .arg(&engine)
        .arg("--events")
        .arg(dir.join("events.jsonl"))
        .args(engine_args)
        .env("CF_CONFIG_ROOT", env_root)
        .env_remove("RUST_LOG");
    Proc::spawn("engine-shim", command)
}

async fn wait_acquired(shim: &Proc) -> String {
    let (_, message) = shim
        .output
        .wait_for(0, "the `acquired the lock` line", |line| {
            LogLine::parse(line)
                .map(|l| l.message().to_string())
                .filter(|m| m.starts_with("acquired the lock "))
        })
        .await;
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_lock_lands_in_cf_config_root() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("chainflip");
    std::fs::create_dir(&root).unwrap();
    let shim = shim_without_lock(&node, dir.path(), &root, &[]);

    let lock = root.join("engine-shim.lock");
    assert_eq!(
        wait_acquired(&shim).await,
        format!("acquired the lock file:{}", lock.display())
    );
    assert!(!lock_is_free(&lock), "the shim holds {}", lock.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engines_short_config_root_flag_wins_over_cf_config_root() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (from_env, from_flag) = (dir.path().join("env"), dir.path().join("flag"));
    std::fs::create_dir(&from_env).unwrap();
    std::fs::create_dir(&from_flag).unwrap();
    let flag = format!("-c{}", from_flag.display());
    let shim = shim_without_lock(&node, dir.path(), &from_env, &["--", &flag]);

    let lock = from_flag.join("engine-shim.lock");
    assert_eq!(
        wait_acquired(&shim).await,
        format!("acquired the lock file:{}", lock.display())
    );
    assert!(!lock_is_free(&lock));
    assert!(!from_env.join("engine-shim.lock").exists());
}
