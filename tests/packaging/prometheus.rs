//! The Prometheus alerting rules and the Grafana dashboard (`deploy/prometheus/`, `deploy/grafana/`):
//! promtool accepts the rules and their unit tests pass, and every metric they name is served by a
//! real engine-shim following a real fake-node — so renaming a metric breaks this test, not an
//! operator's alerting months later.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::scrape::{metrics_addr, scrape};
use crate::harness::{Node, Shim};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rules() -> PathBuf {
    repo().join("deploy/prometheus/engine-shim.rules.yml")
}

fn dashboard() -> PathBuf {
    repo().join("deploy/grafana/engine-shim.json")
}

/// Runs `promtool ARGS` in `dir`; fails loudly, naming the installer, when promtool is missing.
fn promtool(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install it with scripts/packaging-tools \
                 (Debian's `prometheus` package)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {args:?} failed ({}):\n{text}",
        output.status
    );
    text
}

/// Every `engine_shim_*` metric name in a PromQL expression (labels, functions and the `up`
/// series are not the shim's).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("engine_shim_") {
        let starts_a_word = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let len = rest[at..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len() - at);
        if starts_a_word {
            names.insert(rest[at..at + len].to_string());
        }
        rest = &rest[at + len..];
    }
    names
}

/// Every query of a Grafana dashboard: the panels' targets and the template variables.
fn dashboard_exprs(json: &str) -> Vec<String> {
    let doc: serde_json::Value = serde_json::from_str(json).expect("the dashboard is not JSON");
    let mut exprs = Vec::new();
    for panel in doc["panels"].as_array().expect("no panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(
                target["expr"]
                    .as_str()
                    .expect("a target without expr")
                    .to_string(),
            );
        }
    }
    for var in doc["templating"]["list"].as_array().expect("no templating") {
        if let Some(query) = var["query"]["query"].as_str() {
            exprs.push(query.to_string());
        }
    }
    exprs
}

/// Metric names a scrape serves (each sample's name, labels cut off).
fn served_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|line| line.starts_with("engine_shim_"))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = metric_names(
        "(min by (lock_group) (engine_shim_no_compatible_engine) == 1) * on (lock_group) \
         group_left (version) max(engine_shim_release_info{x=\"engine_shim_not_a_metric_label\"}) \
         and up{job=\"engine-shim\"} and xengine_shim_prefixed",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "engine_shim_no_compatible_engine",
            "engine_shim_not_a_metric_label",
            "engine_shim_release_info"
        ]
    );
}

#[test]
fn promtool_accepts_the_rules() {
    let out = promtool(&repo(), &["check", "rules", rules().to_str().unwrap()]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_rules_pass_their_promtool_unit_tests() {
    let out = promtool(
        &repo().join("deploy/prometheus"),
        &["test", "rules", "engine-shim.rules.test.yml"],
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_and_the_dashboard_use_is_served() {
    let rules = std::fs::read_to_string(rules()).unwrap();
    let dashboard = std::fs::read_to_string(dashboard()).unwrap();
    // The whole rules file is searched (no YAML parser needed): a metric named in a comment or an
    // annotation must exist as well.
    let in_rules = metric_names(&rules);
    let in_dashboard: BTreeSet<String> = dashboard_exprs(&dashboard)
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    assert!(
        in_rules.len() >= 5,
        "too few metrics found in the rules: {in_rules:?}"
    );
    assert!(
        in_dashboard.len() >= 10,
        "too few metrics found in the dashboard: {in_dashboard:?}"
    );

    // A shim running its engine serves every metric, the labelled info ones included.
    let node = Node::start(&["--release", "1.0.0"]).await;
    let shim = Shim::builder(&node, "1.0.0")
        .shim_args(&["--metrics-listen", "127.0.0.1:0"])
        .spawn();
    let addr = metrics_addr(&shim).await;
    shim.wait_message(0, &["started (pid"]).await;
    let text = scrape(&addr).await;
    let served = served_names(&text);

    for (file, used) in [("rules", &in_rules), ("dashboard", &in_dashboard)] {
        let missing: Vec<_> = used.difference(&served).collect();
        assert!(
            missing.is_empty(),
            "the {file} use metrics a running shim does not serve: {missing:?}\nscrape:\n{text}"
        );
    }
}
