//! Keeps the crate's modules layered: no module may reach, through `crate::…` paths, a module that
//! reaches back to it. A circle makes every module in it depend on all the others (the flags on the
//! config file on the check on the flags), so none of them can be understood, tested or moved
//! alone. Test code is left out: a test may drive a lower layer through a higher one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level module a source file belongs to (`lock/postgres.rs` → `lock`); `None` for the
/// crate root and the binary, which may use anything.
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// Whether a file holds only tests (`config/tests.rs`, `follower/node_tests.rs`).
fn is_test_file(path: &Path) -> bool {
    path.file_stem()
        .and_then(|stem| stem.to_str())
        .is_some_and(|stem| stem == "tests" || stem.ends_with("_tests"))
}

/// The modules `source` names as `crate::NAME`, outside comments and before its test module.
fn uses(source: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for line in source.lines() {
        let line = line.trim_start();
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        if line.starts_with("//") {
            continue;
        }
        let code = line.split("//").next().unwrap_or_default();
        for (at, _) in code.match_indices("crate::") {
            let name: String = code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                used.insert(name);
            }
        }
    }
    used
}

/// Module → the modules it uses, from every non-test source file under `dir`.
fn graph(dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
            continue;
        }
        if path.extension().is_none_or(|ext| ext != "rs") || is_test_file(&path) {
            continue;
        }
        let Some(module) = module_of(path.strip_prefix(dir).unwrap()) else {
            continue;
        };
        let source = std::fs::read_to_string(&path).unwrap();
        let mut used = uses(&source);
        used.remove(&module);
        graph.entry(module).or_default().extend(used);
    }
    graph
}

/// A circle in `graph` as the path that closes it (`[a, b, a]`), if there is one.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|on_path| on_path == node) {
            let mut circle = path[start..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn modules_import_each_other_without_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    assert!(graph.len() > 20, "too few modules found under {src:?}");
    if let Some(circle) = find_circle(&graph) {
        panic!(
            "modules import each other in a circle: {}; move the shared item down a layer",
            circle.join(" → ")
        );
    }
}

#[test]
fn the_check_finds_circles_and_reads_only_code() {
    let edges = |pairs: &[(&str, &str)]| {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in pairs {
            graph
                .entry(from.to_string())
                .or_default()
                .insert(to.to_string());
        }
        graph
    };
    assert_eq!(
        find_circle(&edges(&[("a", "b"), ("b", "c"), ("a", "c")])),
        None
    );
    assert_eq!(
        find_circle(&edges(&[("a", "b"), ("b", "c"), ("c", "a")])),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let source = "use crate::block::BlockRef;\n// crate::gate in a comment\nlet x = crate::version::SemVer::new(1, 0, 0); // crate::run\n#[cfg(test)]\nuse crate::cli;\n";
    assert_eq!(
        uses(source),
        BTreeSet::from(["block".to_string(), "version".to_string()])
    );
    assert_eq!(
        module_of(Path::new("lock/postgres.rs")).as_deref(),
        Some("lock")
    );
    assert_eq!(module_of(Path::new("main.rs")), None);
    assert!(is_test_file(Path::new("follower/node_tests.rs")));
}
