//! Operator stories about release values the shim cannot trust (absent, 0.0.0, wrong length): it
//! says clearly what is wrong at which block and keeps its state — a running engine keeps
//! running, an idle shim starts nothing.

use crate::common::{shim_with_running_engine, Node, Shim};

/// A bad value (raw storage, `None` = removed) and what the error line must say about it.
const BAD_VALUES: [(Option<&str>, &str); 4] = [
    (None, "release storage value is absent at this block"),
    (Some("0x000000"), "release storage value is 0.0.0 (unset)"),
    (
        Some("0x0102"),
        "storage value 0x0102 is 2 bytes, expected 3 (SCALE SemVer)",
    ),
    (
        Some("0x01000000"),
        "storage value 0x01000000 is 4 bytes, expected 3 (SCALE SemVer)",
    ),
];

/// Puts each bad value in its own block and waits for the shim's error line naming that block,
/// the problem, and `state` (what the shim keeps doing).
async fn feed_bad_values(node: &Node, shim: &Shim, state: &str) {
    for (value, problem) in BAD_VALUES {
        node.set_release_value(value).await;
        let hash = node.new_blocks(1).await;
        let number = node.block_number(&hash).await;
        let (_, line) = shim
            .wait_message(
                0,
                &[
                    &format!("cannot use the release at block #{number} ({hash})"),
                    problem,
                    state,
                ],
            )
            .await;
        assert_eq!(line.level(), "ERROR", "{}", line.message());
    }
}

/// The running engine 1.0.0 meets absent, 0.0.0, 2-byte and 4-byte values: each gets a clear
/// error line, the engine keeps running, and the next real upgrade still stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_release_values_keep_the_running_engine_running() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    let (shim, start) = shim_with_running_engine(Shim::builder(&node, "1.0.0")).await;

    feed_bad_values(&node, &shim, "keeping engine 1.0.0 running").await;
    assert_eq!(shim.engine_events().len(), 1, "the engine was not touched");

    node.set_release("1.1.0").await;
    let upgrade = node.new_blocks(1).await;
    shim.wait_message(0, &["no longer compatible", &upgrade])
        .await;
    let stop = shim.wait_event("stop", 1).await;
    assert_eq!(stop.pid, start.pid, "the same engine ran throughout");
}

/// The shim starts while the release is unreadable: even an engine that would fit 1.0.0 is not
/// started on a guess; it starts only at the first block with a real release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_release_values_start_nothing_on_an_idle_shim() {
    let node = Node::start(&["--release", "1.0.0"]).await;
    // A 5-byte value first, so each of the bad values after it is a new problem worth a line.
    node.set_release_value(Some("0x0102030405")).await;
    let unreadable = node.new_blocks(1).await;
    let shim = Shim::spawn(&node, "1.0.0");
    shim.wait_message(
        0,
        &[
            "cannot use the release at block #1",
            &unreadable,
            "is 5 bytes",
            "starting nothing",
        ],
    )
    .await;

    feed_bad_values(&node, &shim, "starting nothing").await;
    assert!(shim.engine_events().is_empty(), "nothing was started");
    assert_eq!(shim.count_messages("starting engine"), 0);

    node.set_release("1.0.0").await;
    let good = node.new_blocks(1).await;
    let number = node.block_number(&good).await;
    let start = shim.wait_event("start", 1).await;
    assert_eq!(
        start.start_block(),
        Some(number),
        "started at the first readable block"
    );
    assert_eq!(start.start_hash(), Some(good.as_str()));
}
