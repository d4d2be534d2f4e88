//! `engine-shim check`: a script or CI job asks "does this engine fit the chain?" and branches on
//! the exit code: 0 compatible, 10 not yet, 11 no longer, 1 error, 2 usage.

use crate::common::{check, engine_script, Node};

/// A chain whose release was 1.0.0 up to block #2 and is 1.1.0 from block #3 (the finalized head).
async fn upgraded_chain() -> Node {
    let node = Node::start(&["--release", "1.0.0"]).await;
    node.new_blocks(2).await;
    node.set_release("1.1.0").await;
    node.new_blocks(1).await;
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_answers_each_compatibility_with_its_exit_code() {
    let node = upgraded_chain().await;
    let head = node.block_hash(3).await;
    let url = node.url.as_str();

    let ok = check(&["--node", url, "--engine-version", "1.1.4"]).await;
    assert_eq!(ok.code, 0, "{ok:?}");
    assert_eq!(
        ok.stdout.trim(),
        format!("engine 1.1.4 is compatible with release 1.1.0 at block #3 ({head})")
    );

    let not_yet = check(&["--node", url, "--engine-version", "1.2.0"]).await;
    assert_eq!(not_yet.code, 10, "{not_yet:?}");
    assert!(not_yet.stdout.contains("not yet compatible"), "{not_yet:?}");

    let no_longer = check(&["--node", url, "--engine-version", "1.0.9"]).await;
    assert_eq!(no_longer.code, 11, "{no_longer:?}");
    assert!(
        no_longer.stdout.contains("no longer compatible"),
        "{no_longer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_json_names_engine_release_and_block() {
    let node = upgraded_chain().await;
    let head = node.block_hash(3).await;

    let answer = check(&["--node", &node.url, "--engine-version", "1.0.0", "--json"]).await;
    assert_eq!(answer.code, 11, "{answer:?}");
    assert_eq!(
        answer.json(),
        serde_json::json!({
            "engine_version": "1.0.0",
            "release": "1.1.0",
            "block_number": 3,
            "block_hash": head,
            "compatibility": "no_longer_compatible",
        })
    );
    for (version, code, compatibility) in [
        ("1.1.0", 0, "compatible"),
        ("2.0.0", 10, "not_yet_compatible"),
    ] {
        let answer = check(&["--node", &node.url, "--engine-version", version, "--json"]).await;
        assert_eq!(answer.code, code, "{answer:?}");
        assert_eq!(answer.json()["compatibility"], compatibility);
    }
}

/// `--at NUMBER` and `--at HASH` look back in history: before the upgrade the old engine fitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_at_an_older_block_by_number_or_hash() {
    let node = upgraded_chain().await;
    let before = node.block_hash(2).await;

    let by_number = check(&[
        "--node",
        &node.url,
        "--engine-version",
        "1.0.0",
        "--at",
        "2",
        "--json",
    ])
    .await;
    assert_eq!(by_number.code, 0, "{by_number:?}");
    let json = by_number.json();
    assert_eq!(json["release"], "1.0.0");
    assert_eq!(json["block_number"], 2);
    assert_eq!(json["block_hash"], before.as_str());

    let by_hash = check(&[
        "--node",
        &node.url,
        "--engine-version",
        "1.1.0",
        "--at",
        &before,
        "--json",
    ])
    .await;
    assert_eq!(by_hash.code, 10, "{by_hash:?}");
    let json = by_hash.json();
    assert_eq!(json["release"], "1.0.0");
    assert_eq!(json["block_number"], 2);

    let unknown = check(&[
        "--node",
        &node.url,
        "--engine-version",
        "1.0.0",
        "--at",
        "99",
    ])
    .await;
    assert_eq!(
        unknown.code, 1,
        "a block the node does not have is an error: {unknown:?}"
    );
    assert!(unknown.stderr.contains("99"), "{unknown:?}");
}

/// `--engine PATH` asks the binary itself (`PATH --version`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_probes_the_engine_binary_for_its_version() {
    let node = upgraded_chain().await;
    let dir = tempfile::tempdir().unwrap();

    let new = engine_script(dir.path(), "1.1.0");
    let answer = check(&[
        "--node",
        &node.url,
        "--engine",
        new.to_str().unwrap(),
        "--json",
    ])
    .await;
    assert_eq!(answer.code, 0, "{answer:?}");
    assert_eq!(answer.json()["engine_version"], "1.1.0");

    let old = engine_script(dir.path(), "1.0.0");
    let answer = check(&["--node", &node.url, "--engine", old.to_str().unwrap()]).await;
    assert_eq!(answer.code, 11, "{answer:?}");

    let missing = dir.path().join("no-such-engine");
    let answer = check(&["--node", &node.url, "--engine", missing.to_str().unwrap()]).await;
    assert_eq!(
        answer.code, 1,
        "a missing engine binary is an error: {answer:?}"
    );
}

/// Values the check cannot trust are errors (exit 1) that say what is wrong, never a verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_on_unusable_release_values() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    for (value, problem) in [
        (None, "absent"),
        (Some("0x000000"), "0.0.0"),
        (Some("0x0102"), "2 bytes, expected 3"),
        (Some("0x01000000"), "4 bytes, expected 3"),
    ] {
        node.set_release_value(value).await;
        let hash = node.new_blocks(1).await;
        let answer = check(&["--node", &node.url, "--engine-version", "1.0.0"]).await;
        assert_eq!(answer.code, 1, "{value:?}: {answer:?}");
        assert!(answer.stderr.contains(problem), "{value:?}: {answer:?}");
        assert!(
            answer.stderr.contains(&hash),
            "the error names the block: {answer:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_when_the_node_is_unreachable_or_syncing() {
    // Port 1 is privileged and unused: connections are refused at once.
    let url = "ws://127.0.0.1:1".to_string();
    let answer = check(&[
        "--node",
        &url,
        "--engine-version",
        "1.0.0",
        "--timeout",
        "5s",
    ])
    .await;
    assert_eq!(answer.code, 1, "{answer:?}");
    assert!(
        answer.stderr.contains(&url),
        "the error names the node: {answer:?}"
    );

    let node = Node::start(&["--release", "1.0.0"]).await;
    node.set_syncing(true).await;
    let answer = check(&["--node", &node.url, "--engine-version", "1.0.0"]).await;
    assert_eq!(
        answer.code, 1,
        "a syncing node's head is not current: {answer:?}"
    );
    assert!(answer.stderr.contains("syncing"), "{answer:?}");
    let answer = check(&[
        "--node",
        &node.url,
        "--engine-version",
        "1.0.0",
        "--at",
        "0",
    ])
    .await;
    assert_eq!(
        answer.code, 0,
        "--at names the block, so syncing does not matter: {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_usage_errors_exit_2() {
    let url = "ws://127.0.0.1:1";
    for args in [
        &["--node", url][..],
        &["--node", url, "--engine-version", "1.2"],
        &[
            "--node",
            url,
            "--engine-version",
            "1.0.0",
            "--engine",
            "/bin/true",
        ],
        &["--node", url, "--engine-version", "1.0.0", "--at", "0x12"],
        &[
            "--node",
            url,
            "--engine-version",
            "1.0.0",
            "--rule",
            "minor",
        ],
        &[
            "--node",
            url,
            "--engine-version",
            "1.0.0",
            "--storage-key",
            "0xZZ",
        ],
    ] {
        let answer = check(args).await;
        assert_eq!(answer.code, 2, "{args:?}: {answer:?}");
    }
}
