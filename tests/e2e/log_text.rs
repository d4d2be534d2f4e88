//! Text logs are for people: across an upgrade, every line of `--log-format text` says each fact
//! once (no field after the message repeating a value the message names), without module paths,
//! and Chainflip's line keeps its exact wording; `--log-format json` keeps every field.

use std::process::Command;

use crate::common::{bin, engine_script, Node, Proc};

/// `engine-shim run --log-format FORMAT` around fake-engine 1.0.0, its files in `dir`.
fn shim(node: &Node, dir: &std::path::Path, format: &str) -> Proc {
    let mut command = Command::new(bin("engine-shim"));
    command
        .arg("run")
        .args(["--node", &node.url, "--log-format", format])
        .args(["--engine-version", "1.0.0"])
        .arg("--lock")
        .arg(format!("file:{}", dir.join("engine-shim.lock").display()))
        .arg("--")
        .arg(engine_script(dir, "1.0.0"))
        .arg("--events")
        .arg(dir.join("events.jsonl"))
        .env_remove("RUST_LOG");
    Proc::spawn("engine-shim", command)
}

/// Runs the shim through a start and an upgrade that stops its engine; returns its lines.
async fn lines_across_an_upgrade(format: &str) -> Vec<String> {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let dir = tempfile::tempdir().unwrap();
    let shim = shim(&node, dir.path(), format);
    let contains = |needle: &'static str| move |l: &str| l.contains(needle).then_some(());
    shim.output
        .wait_for(0, "the engine started", contains("started (pid"))
        .await;
    node.set_release("1.1.0").await;
    node.new_blocks(1).await;
    shim.output
        .wait_for(0, "the lock released", contains("released the lock"))
        .await;
    shim.output.lines()
}

/// The `name=value` fields after a text line's message (quoted values are left aside).
fn trailing_fields(line: &str) -> Vec<(&str, &str)> {
    line.split(' ')
        .filter_map(|word| word.split_once('='))
        .filter(|(name, value)| {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                && !value.starts_with('"')
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_lines_say_each_fact_once() {
    let lines = lines_across_an_upgrade("text").await;
    let text = lines.join("\n");
    let no_longer = lines
        .iter()
        .find(|l| l.contains("This version '1.0.0' is no longer compatible"))
        .unwrap_or_else(|| panic!("no Chainflip line in:\n{text}"));
    let hash = no_longer
        .split("at block: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap();
    assert!(
        no_longer.contains(&format!(
            "WARN This version '1.0.0' is no longer compatible with the release version '1.1.0' at block: {hash}"
        )),
        "{no_longer}"
    );
    assert_eq!(hash.len(), 66, "the hash is printed in full: {no_longer}");
    let starting = lines
        .iter()
        .find(|l| l.contains("starting engine 1.0.0: compatible with release 1.0.0"))
        .unwrap_or_else(|| panic!("no starting line in:\n{text}"));
    assert!(
        trailing_fields(starting).is_empty(),
        "every field of the starting line is in its message: {starting}"
    );
    for line in &lines {
        assert!(!line.contains("engine_shim::"), "a module path: {line}");
        for (name, value) in trailing_fields(line) {
            // Short values (`5s`, `0`) may occur by chance; longer ones are the facts.
            if value.len() >= 3 {
                assert_eq!(
                    line.matches(value).count(),
                    1,
                    "field {name}={value} repeats what the line says: {line}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_keep_every_field() {
    let lines = lines_across_an_upgrade("json").await;
    let no_longer: serde_json::Value = lines
        .iter()
        .find(|l| l.contains("is no longer compatible"))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON Chainflip line in {lines:#?}"));
    let fields = &no_longer["fields"];
    assert_eq!(fields["engine_version"], "1.0.0", "{no_longer}");
    assert_eq!(fields["release"], "1.1.0", "{no_longer}");
    assert_eq!(fields["block_number"], 1, "{no_longer}");
    assert!(
        fields["block_hash"].as_str().is_some_and(|h| h.len() == 66),
        "{no_longer}"
    );
    assert_eq!(no_longer["target"], "engine_shim::telemetry", "{no_longer}");
}
