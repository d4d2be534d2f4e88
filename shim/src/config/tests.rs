use std::path::Path;
use std::time::Duration;

use clap::Parser;

use super::*;
use crate::cli::RunArgs;

/// `engine-shim run ARGS…` parsed by clap, as the top layer. The one test that sets a variable (in
/// `cli`) sets only `ENGINE_SHIM_RECONNECT_MAX`, so tests that check a value from the file or a
/// default without passing its flag build [`Overrides`] directly.
fn flags(args: &[&str]) -> Overrides {
    try_flags(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn try_flags(args: &[&str]) -> Result<Overrides, clap::Error> {
    #[derive(Parser)]
    struct Run {
        #[command(flatten)]
        flags: RunArgs,
    }
    Run::try_parse_from(std::iter::once("run").chain(args.iter().copied()))
        .map(|run| run.flags.into())
}

fn file(text: &str) -> FileConfig {
    FileConfig::parse(text, Path::new("/etc/engine-shim.toml")).unwrap()
}

fn file_error(text: &str) -> String {
    FileConfig::parse(text, Path::new("/etc/engine-shim.toml"))
        .unwrap_err()
        .to_string()
}

fn resolve(args: &[&str], text: &str) -> Result<RunConfig, ConfigError> {
    flags(args).merge(file(text), Some(Path::new("/etc/engine-shim.toml")))
}

fn v(text: &str) -> SemVer {
    text.parse().unwrap()
}

fn engine(version: Option<&str>, command: &[&str]) -> EngineCommand {
    EngineCommand {
        versions: version.into_iter().map(v).collect(),
        command: command.iter().map(|s| s.to_string()).collect(),
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn engine_value_with_version_and_args() {
    assert_eq!(
        parse_engines("1.1.0=/usr/bin/engine-1.1 --config-root /etc/cf").unwrap(),
        EngineList(vec![engine(
            Some("1.1.0"),
            &["/usr/bin/engine-1.1", "--config-root", "/etc/cf"]
        )])
    );
    assert_eq!(
        parse_engines(r#""1.2.3=/opt/my engines/e" --root='/etc/my cf'"#).unwrap(),
        EngineList(vec![engine(
            Some("1.2.3"),
            &["/opt/my engines/e", "--root=/etc/my cf"]
        )])
    );
}

#[test]
fn engine_value_without_version() {
    for (text, command) in [
        ("/usr/bin/engine", &["/usr/bin/engine"][..]),
        // '=' in a path, or only in the args, does not make a version.
        ("/opt/a=b/engine --x", &["/opt/a=b/engine", "--x"]),
        (
            "chainflip-engine --config-root=/etc/cf",
            &["chainflip-engine", "--config-root=/etc/cf"],
        ),
        ("./1.1=engine", &["./1.1=engine"]),
    ] {
        assert_eq!(
            parse_engines(text).unwrap(),
            EngineList(vec![engine(None, command)]),
            "{text}"
        );
    }
}

#[test]
fn semicolons_give_several_engines() {
    assert_eq!(
        parse_engines("1.0.0=/bin/e0 --a; /bin/e1 'x;y'").unwrap(),
        EngineList(vec![
            engine(Some("1.0.0"), &["/bin/e0", "--a"]),
            engine(None, &["/bin/e1", "x;y"]),
        ])
    );
}

#[test]
fn bad_engine_values_say_what_to_write() {
    let err = parse_engines("1.1=/usr/bin/engine").unwrap_err();
    assert!(
        err.contains("'1.1' in '1.1=/usr/bin/engine' is not a version"),
        "{err}"
    );
    assert!(err.contains("./1.1=/usr/bin/engine"), "{err}");
    assert!(parse_engines("v1.1.0=/usr/bin/engine").is_err());
    assert!(parse_engines("=/usr/bin/engine").is_err());
    let err = parse_engines("1.1.0= /usr/bin/engine").unwrap_err();
    assert!(err.contains("names a version but no program"), "{err}");
    assert!(parse_engines("").unwrap_err().contains("no command"));
    assert!(parse_engines(" ; ").is_err());
    assert!(parse_engines("'/usr/bin/engine")
        .unwrap_err()
        .contains("never closed"));
}

#[test]
fn bad_engine_flags_are_usage_errors() {
    for args in [
        &["--engine", "1.1=/usr/bin/engine"][..],
        &["--engine", "'unclosed"],
        &["--engine", ""],
        &["--engine-version", "1.0.0", "--engine", "/usr/bin/engine"],
    ] {
        let err = try_flags(args).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{args:?}");
    }
}

#[test]
fn nothing_given_means_documented_defaults() {
    // Built without clap, so no environment variable can leak in.
    let args = Overrides {
        command: vec!["/usr/bin/engine".into()],
        ..Overrides::default()
    };
    let config = args.merge(FileConfig::default(), None).unwrap();
    assert_eq!(
        config,
        RunConfig {
            node: "ws://127.0.0.1:9944".into(),
            storage_key: crate::storage_key::release_key(),
            rule: Rule::MajorMinor,
            log_format: LogFormat::Text,
            grace: secs(10),
            start_secs: secs(10),
            stale_after: secs(60),
            wait_log_every: secs(60),
            reconnect_max: secs(30),
            lock: None,
            lock_dir: None,
            standby: defaults::STANDBY,
            control_socket: None,
            metrics_listen: None,
            lock_mode: crate::lock::LockMode::Lease,
            lock_name: defaults::LOCK_NAME.to_string(),
            lease: defaults::LEASE,
            renew: defaults::RENEW,
            lock_password_file: None,
            engines: vec![engine(None, &["/usr/bin/engine"])],
            guardian: defaults::GUARDIAN.into(),
            reload: None,
        }
    );
}

const FULL_FILE: &str = r#"
node = "ws://node.internal:9944"
storage_key = "0x0a0b"
rule = "exact"
log_format = "json"
grace = "20s"
start_secs = "1m"
stale_after = "2m"
wait_log_every = "5m"
reconnect_max = "45s"
lock = "file:/run/engine.lock"
lock_dir = "/run/engine-shim"
shared_args = ["--config-root", "/etc/chainflip"]

[[engine]]
version = "1.0.0"
command = ["/usr/bin/engine-1.0"]

[[engine]]
command = ["/usr/bin/engine-1.1", "--extra"]
"#;

#[test]
fn the_file_fills_every_setting() {
    let config = Overrides::default().merge(file(FULL_FILE), None).unwrap();
    assert_eq!(
        config,
        RunConfig {
            node: "ws://node.internal:9944".into(),
            storage_key: vec![10, 11],
            rule: Rule::Exact,
            log_format: LogFormat::Json,
            grace: secs(20),
            start_secs: secs(60),
            stale_after: secs(120),
            wait_log_every: secs(300),
            reconnect_max: secs(45),
            lock: Some("file:/run/engine.lock".into()),
            lock_dir: Some("/run/engine-shim".into()),
            standby: defaults::STANDBY,
            control_socket: None,
            metrics_listen: None,
            lock_mode: crate::lock::LockMode::Lease,
            lock_name: defaults::LOCK_NAME.to_string(),
            lease: defaults::LEASE,
            renew: defaults::RENEW,
            lock_password_file: None,
            engines: vec![
                engine(
                    Some("1.0.0"),
                    &["/usr/bin/engine-1.0", "--config-root", "/etc/chainflip"]
                ),
                engine(
                    None,
                    &[
                        "/usr/bin/engine-1.1",
                        "--extra",
                        "--config-root",
                        "/etc/chainflip"
                    ]
                ),
            ],
            guardian: defaults::GUARDIAN.into(),
            reload: None,
        }
    );
}

#[test]
fn flags_override_the_file_key_by_key() {
    let config = resolve(
        &[
            "--node",
            "ws://other:9944",
            "--storage-key",
            "0x0c",
            "--rule",
            "major",
            "--log-format",
            "text",
            "--grace",
            "3s",
            "--start-secs",
            "4s",
            "--stale-after",
            "5s",
            "--wait-log-every",
            "6s",
            "--reconnect-max",
            "7s",
            "--lock",
            "none",
            "--lock-dir",
            "/tmp/locks",
        ],
        FULL_FILE,
    )
    .unwrap();
    assert_eq!(config.node, "ws://other:9944");
    assert_eq!(config.storage_key, vec![12]);
    assert_eq!(config.rule, Rule::Major);
    assert_eq!(config.log_format, LogFormat::Text);
    assert_eq!(
        [
            config.grace,
            config.start_secs,
            config.stale_after,
            config.wait_log_every,
            config.reconnect_max
        ],
        [secs(3), secs(4), secs(5), secs(6), secs(7)]
    );
    assert_eq!(config.lock.as_deref(), Some("none"));
    assert_eq!(config.lock_dir, Some("/tmp/locks".into()));
    // The file's engines stay; under the flag's rule 1.0.0 and an unknown version cannot clash yet.
    assert_eq!(config.engines.len(), 2);
}

#[test]
fn a_partial_file_leaves_the_rest_at_defaults() {
    let config = resolve(&["--", "/usr/bin/engine"], "grace = \"1s\"").unwrap();
    assert_eq!(config.grace, secs(1));
    assert_eq!(config.start_secs, defaults::START_SECS);
    assert_eq!(config.node, defaults::NODE);
}

#[test]
fn single_engine_form_is_unchanged() {
    let config = resolve(
        &[
            "--engine-version",
            "1.1.0",
            "--",
            "/usr/bin/engine",
            "--start-from",
            "{block}",
        ],
        "",
    )
    .unwrap();
    assert_eq!(
        config.engines,
        [engine(
            Some("1.1.0"),
            &["/usr/bin/engine", "--start-from", "{block}"]
        )]
    );
    // The version and shared args may come from the file.
    let config = resolve(
        &["--", "/usr/bin/engine"],
        "engine_version = \"1.2.0\"\nshared_args = [\"--x\"]",
    )
    .unwrap();
    assert_eq!(
        config.engines,
        [engine(Some("1.2.0"), &["/usr/bin/engine", "--x"])]
    );
}

#[test]
fn args_after_dashes_are_shared_by_every_engine() {
    let config = resolve(
        &[
            "--engine",
            "1.0.0=/usr/bin/engine-1.0 --own",
            "--engine",
            "/usr/bin/engine-1.1",
            "--",
            "--config-root",
            "/etc/cf",
        ],
        "",
    )
    .unwrap();
    assert_eq!(
        config.engines,
        [
            engine(
                Some("1.0.0"),
                &["/usr/bin/engine-1.0", "--own", "--config-root", "/etc/cf"]
            ),
            engine(None, &["/usr/bin/engine-1.1", "--config-root", "/etc/cf"]),
        ]
    );
    let config = resolve(&["--engine", "1.0.0=/usr/bin/engine-1.0"], "").unwrap();
    assert_eq!(
        config.engines,
        [engine(Some("1.0.0"), &["/usr/bin/engine-1.0"])]
    );
}

#[test]
fn engine_flags_replace_the_files_engines_and_dashes_replace_its_shared_args() {
    let config = resolve(&["--engine", "2.0.0=/usr/bin/engine-2"], FULL_FILE).unwrap();
    assert_eq!(
        config.engines,
        [engine(
            Some("2.0.0"),
            &["/usr/bin/engine-2", "--config-root", "/etc/chainflip"]
        )]
    );
    let config = resolve(&["--", "--other"], FULL_FILE).unwrap();
    assert_eq!(
        config.engines,
        [
            engine(Some("1.0.0"), &["/usr/bin/engine-1.0", "--other"]),
            engine(None, &["/usr/bin/engine-1.1", "--extra", "--other"]),
        ]
    );
}

#[test]
fn engine_version_with_several_engines_is_refused() {
    let err = resolve(
        &["--engine", "/usr/bin/engine"],
        "engine_version = \"1.0.0\"",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("engine_version in /etc/engine-shim.toml cannot be combined with --engine"),
        "{err}"
    );
    let err = resolve(
        &[],
        "engine_version = \"1.0.0\"\n[[engine]]\ncommand = [\"e\"]",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cannot be combined with [[engine]] in /etc/engine-shim.toml"),
        "{err}"
    );
    let err = resolve(&["--engine-version", "1.0.0"], FULL_FILE)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("--engine-version"), "{err}");
    assert!(err.contains("version = \"X.Y.Z\""), "{err}");
}

#[test]
fn no_engine_at_all_is_refused() {
    let err = resolve(&[], "grace = \"1s\"").unwrap_err();
    assert!(matches!(err, ConfigError::Usage(_)));
    assert!(err.to_string().starts_with("no engine to run"), "{err}");
}

#[test]
fn overlapping_given_versions_are_refused_at_once() {
    let err = resolve(
        &[
            "--engine",
            "1.1.0=/usr/bin/a",
            "--engine",
            "1.1.3=/usr/bin/b",
        ],
        "",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "engines 1.1.0 and 1.1.3 are both compatible with release 1.1.x: keep one"
    );
    // Under the exact rule they can coexist.
    assert!(resolve(
        &[
            "--rule",
            "exact",
            "--engine",
            "1.1.0=/usr/bin/a",
            "--engine",
            "1.1.3=/usr/bin/b",
        ],
        "",
    )
    .is_ok());
}

#[test]
fn unknown_keys_are_named() {
    let err = file_error("nodes = \"ws://x\"");
    assert!(
        err.starts_with("config file /etc/engine-shim.toml is invalid"),
        "{err}"
    );
    assert!(err.contains("unknown field `nodes`"), "{err}");
    assert!(err.contains("`node`"), "{err}");
    let err = file_error("[[engine]]\ncommand = [\"e\"]\nargs = [\"x\"]");
    assert!(err.contains("unknown field `args`"), "{err}");
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn bad_values_name_the_line_and_the_fix() {
    let err = file_error("grace = \"10s\"\nstale_after = \"soon\"");
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("'soon' is not a duration"), "{err}");
    assert!(err.contains("\"10s\""), "{err}");
    let err = file_error("grace = 10");
    assert!(err.contains("expected a duration string"), "{err}");
    let err = file_error("[[engine]]\nversion = \"1.1\"\ncommand = [\"e\"]");
    assert!(
        err.contains("'1.1' is not a version of the form X.Y.Z"),
        "{err}"
    );
    let err = file_error("engine_version = \"x\"");
    assert!(err.contains("'x' is not a version"), "{err}");
    let err = file_error("rule = \"minor\"");
    assert!(
        err.contains("'minor' is not one of \"major-minor\", \"exact\", \"major\""),
        "{err}"
    );
    let err = file_error("log_format = \"xml\"");
    assert!(err.contains("\"text\", \"json\""), "{err}");
    let err = file_error("storage_key = \"0xzz\"");
    assert!(err.contains("is not hex"), "{err}");
    let err = file_error("[[engine]]\ncommand = []");
    assert!(err.contains("command is empty"), "{err}");
    let err = file_error("[[engine]]\nversion = \"1.0.0\"");
    assert!(err.contains("missing field `command`"), "{err}");
    let err = file_error("[[engine]]\ncommand = \"/usr/bin/engine --x\"");
    assert!(err.contains("expected a sequence"), "{err}");
    let err = file_error("node = ");
    assert!(err.contains("line 1"), "{err}");
}

#[test]
fn resolve_reads_the_file_given() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shim.toml");
    std::fs::write(
        &path,
        "[[engine]]\nversion = \"1.0.0\"\ncommand = [\"/usr/bin/e\"]",
    )
    .unwrap();
    let config = flags(&["--config", path.to_str().unwrap()])
        .resolve()
        .unwrap();
    assert_eq!(config.engines, [engine(Some("1.0.0"), &["/usr/bin/e"])]);

    let missing = dir.path().join("missing.toml");
    let err = flags(&["--config", missing.to_str().unwrap(), "--", "e"])
        .resolve()
        .unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    let err = err.to_string();
    assert!(err.starts_with("cannot read config file"), "{err}");
    assert!(err.contains("missing.toml"), "{err}");

    std::fs::write(&path, "grace = \"forever\"").unwrap();
    let err = flags(&["--config", path.to_str().unwrap(), "--", "e"])
        .resolve()
        .unwrap_err();
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
}

#[test]
fn duplicate_and_overlapping_versions() {
    let vs = |list: &[&str]| list.iter().map(|s| Covers::one(v(s))).collect::<Vec<_>>();
    assert_eq!(validate_engines(&[], Rule::MajorMinor), Ok(()));
    assert_eq!(
        validate_engines(&vs(&["1.0.0", "1.1.0", "2.1.0"]), Rule::MajorMinor),
        Ok(())
    );
    assert_eq!(
        validate_engines(&vs(&["1.0.0", "1.1.0", "1.0.0"]), Rule::MajorMinor),
        Err("engine 1.0.0 is given twice: keep one".into())
    );
    assert_eq!(
        validate_engines(&vs(&["1.0.0", "1.1.0", "1.1.3"]), Rule::MajorMinor),
        Err("engines 1.1.0 and 1.1.3 are both compatible with release 1.1.x: keep one".into())
    );
    assert_eq!(
        validate_engines(&vs(&["1.1.0", "1.1.3"]), Rule::Exact),
        Ok(())
    );
    assert_eq!(
        validate_engines(&vs(&["1.1.3", "1.1.3"]), Rule::Exact),
        Err("engine 1.1.3 is given twice: keep one".into())
    );
    assert_eq!(
        validate_engines(&vs(&["1.0.0", "1.2.0"]), Rule::Major),
        Err("engines 1.0.0 and 1.2.0 are both compatible with release 1.x.x: keep one".into())
    );
    assert_eq!(
        validate_engines(&vs(&["1.9.0", "2.0.0"]), Rule::Major),
        Ok(())
    );
}

#[test]
fn engines_covering_several_versions_may_share_a_release() {
    let covers = |list: &[&str]| Covers::new(list.iter().map(|s| v(s)).collect()).unwrap();
    // The runner of 2.3 and the 2.2 engine of the old layout both serve 2.2: allowed.
    assert_eq!(
        validate_engines(
            &[covers(&["2.2.8", "2.3.0"]), covers(&["2.2.0"])],
            Rule::MajorMinor
        ),
        Ok(())
    );
    // Two runners of consecutive packages overlap on 2.3: allowed.
    assert_eq!(
        validate_engines(
            &[covers(&["2.2.8", "2.3.0"]), covers(&["2.3.0", "2.4.0"])],
            Rule::MajorMinor
        ),
        Ok(())
    );
    // Single-version engines are judged exactly as before, whatever runners sit beside them.
    assert_eq!(
        validate_engines(
            &[
                covers(&["2.1.0"]),
                covers(&["2.2.8", "2.3.0"]),
                covers(&["2.1.4"])
            ],
            Rule::MajorMinor
        ),
        Err("engines 2.1.0 and 2.1.4 are both compatible with release 2.1.x: keep one".into())
    );
}

#[test]
fn engine_value_with_several_versions() {
    assert_eq!(
        parse_engines("2.2.8,2.3.0=/usr/bin/chainflip-engine -c /etc/cf").unwrap(),
        EngineList(vec![EngineCommand {
            versions: vec![v("2.2.8"), v("2.3.0")],
            command: ["/usr/bin/chainflip-engine", "-c", "/etc/cf"]
                .map(String::from)
                .to_vec(),
        }])
    );
    let err = parse_engines("2.2.8,2.3=/usr/bin/engine").unwrap_err();
    assert!(
        err.contains("'2.3'") && err.contains("X.Y.Z,X.Y.Z=CMD"),
        "{err}"
    );
    let err = parse_engines("2.3.0,2.3.0=/usr/bin/engine").unwrap_err();
    assert!(err.contains("2.3.0 is listed twice"), "{err}");
    let err = parse_engines("2.2.8,=/usr/bin/engine").unwrap_err();
    assert!(err.contains("''"), "{err}");
    let err = parse_engines("2.2.8,2.3.0=").unwrap_err();
    assert!(err.contains("no program"), "{err}");
}

#[test]
fn engine_table_with_versions() {
    let config = resolve(
        &[],
        "[[engine]]\nversions = [\"2.2.8\", \"2.3.0\"]\ncommand = [\"/usr/bin/chainflip-engine\"]\n\
         [[engine]]\nversion = \"2.1.0\"\ncommand = [\"/usr/bin/engine-2.1\"]\n",
    )
    .unwrap();
    assert_eq!(
        config.engines,
        vec![
            engine(None, &["/usr/bin/chainflip-engine"]),
            engine(Some("2.1.0"), &["/usr/bin/engine-2.1"]),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            if i == 0 {
                e.versions = vec![v("2.2.8"), v("2.3.0")];
            }
            e
        })
        .collect::<Vec<_>>()
    );
    let both = resolve(
        &[],
        "[[engine]]\nversion = \"2.3.0\"\nversions = [\"2.2.8\", \"2.3.0\"]\ncommand = [\"/e\"]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        both.contains("not both") && both.contains("/etc/engine-shim.toml"),
        "{both}"
    );
    for (text, expected) in [
        ("versions = []", "versions is empty"),
        ("versions = [\"2.3\"]", "'2.3' is not a version"),
        ("versions = [\"2.3.0\", \"2.3.0\"]", "2.3.0 is listed twice"),
    ] {
        let err = file_error(&format!("[[engine]]\n{text}\ncommand = [\"/e\"]\n"));
        assert!(err.contains(expected), "{text}: {err}");
    }
}

#[test]
fn the_readme_example_is_a_valid_config() {
    let readme = include_str!("../../../README.md");
    let example = readme
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README has a ```toml example");
    let config = Overrides::default().merge(file(example), None).unwrap();
    assert_eq!(config.engines.len(), 3);
    assert_eq!(config.engines[1].versions, [v("2.2.8"), v("2.3.0")]);
    assert_eq!(config.grace, secs(30));
}

#[test]
fn every_default_is_inside_its_accepted_range() {
    for range in RUN_DURATIONS.iter().chain([&CHECK_TIMEOUT]) {
        assert!(
            range.min <= range.default && range.default <= range.max,
            "{range:?}"
        );
        assert!(
            !range.min.is_zero(),
            "{range:?}: zero crashes or spins the shim"
        );
    }
}

#[test]
fn out_of_range_durations_name_the_range_and_where_they_came_from() {
    let err = resolve(&["--grace", "0s", "--", "e"], "").unwrap_err();
    assert_eq!(err.to_string(), "--grace 0s: must be between 100ms and 1h");
    let err = resolve(&["--", "e"], "stale_after = \"2h\"").unwrap_err();
    assert_eq!(
        err.to_string(),
        "stale_after in /etc/engine-shim.toml 2h: must be between 1s and 1h"
    );
    // The flag wins over the file, so a bad file value under a good flag is never used.
    let config = resolve(&["--stale-after", "5s", "--", "e"], "stale_after = \"0s\"").unwrap();
    assert_eq!(config.stale_after, secs(5));
    for (flag, min, max) in [
        ("--start-secs", "100ms", "1h"),
        ("--wait-log-every", "1s", "1day"),
        ("--reconnect-max", "250ms", "1h"),
        ("--standby", "100ms", "1day"),
        ("--lease", "1s", "1h"),
        ("--renew", "100ms", "30m"),
    ] {
        let err = resolve(&[flag, "0s", "--", "e"], "").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{flag} 0s: must be between {min} and {max}")
        );
        assert!(resolve(&[flag, min, "--", "e"], "").is_ok(), "{flag} {min}");
        assert!(resolve(&[flag, max, "--", "e"], "").is_ok(), "{flag} {max}");
    }
}

#[test]
fn only_plain_websocket_node_urls_are_taken() {
    assert_eq!(
        parse_node_url(" ws://10.0.0.5:9944 "),
        Ok("ws://10.0.0.5:9944".into())
    );
    let wss = parse_node_url("wss://rpc.example.com").unwrap_err();
    assert!(wss.starts_with("'wss://rpc.example.com' is not a ws:// URL: this build speaks plain ws:// only (no TLS)"), "{wss}");
    assert!(parse_node_url("http://127.0.0.1:9933")
        .unwrap_err()
        .contains("WebSocket endpoint"));
    for bad in ["127.0.0.1:9944", "ws://", "ws:///x", ""] {
        assert!(parse_node_url(bad).is_err(), "{bad}");
    }
    let err = resolve(&["--", "e"], "node = \"wss://x\"").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("node in /etc/engine-shim.toml: 'wss://x' is not a ws:// URL"),
        "{err}"
    );
    assert!(try_flags(&["--node", "wss://x", "--", "e"]).is_err());
}

#[test]
fn a_config_file_can_be_read_again_under_the_same_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("engine-shim.toml");
    let table = |versions: &str| {
        format!("grace = \"20s\"\n[[engine]]\nversions = {versions}\ncommand = [\"/e\"]\n")
    };
    std::fs::write(&path, table(r#"["2.2.8", "2.3.0"]"#)).unwrap();
    let config = flags(&["--config", path.to_str().unwrap(), "--grace", "5s"])
        .resolve()
        .unwrap();
    let reload = config.reload.clone().expect("a config file can be re-read");
    assert_eq!(reload.path(), path);

    std::fs::write(&path, table(r#"["2.3.0", "2.4.0"]"#)).unwrap();
    let again = reload.resolve().unwrap();
    assert_eq!(again.engines[0].versions, [v("2.3.0"), v("2.4.0")]);
    assert_eq!(again.grace, secs(5), "the flags still win over the file");

    std::fs::write(&path, table(r#"["2.4"]"#)).unwrap();
    assert!(reload.resolve().is_err());
    assert!(resolve(&["--", "e"], "").unwrap().reload.is_none());
}
