//! `engine-shim run`'s settings, fully resolved: command-line flag > environment variable > config
//! file > default.
//!
//! The settings come in layers, none of which knows about clap. The command line (flags and
//! `ENGINE_SHIM_*` variables, read by `cli`) arrives as [`Overrides`], whose fields are all optional
//! so an unset flag can be told apart from a default. [`Overrides::resolve`] lays the TOML file
//! (`--config FILE`, a [`FileConfig`]) underneath and fills the rest from [`crate::defaults`],
//! producing a [`RunConfig`] that the rest of the shim uses without caring where a value came from.
//! Everything here is pure except reading the file, so the precedence rules are tested without
//! processes or sockets.

pub mod words;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::covers::Covers;
use crate::defaults;
use crate::lock::LockMode;
use crate::storage_key::StorageKey;
use crate::telemetry::LogFormat;
use crate::version::{Compatibility, Rule, SemVer};

const MS: u64 = 1;
const SEC: u64 = 1000 * MS;
const MIN: u64 = 60 * SEC;
const HOUR: u64 = 60 * MIN;

/// A duration setting's name, default and accepted range: the one table that flags, environment
/// variables and the config file are checked against. Zero crashes or spins the shim (a zero ping
/// interval panics, a zero back-off reconnects in a hot loop, a zero log interval logs every
/// block), and values beyond any real use overflow clocks or only hide typos (`10000s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    /// The flag's name without `--`; its config key is the same in snake_case.
    pub flag: &'static str,
    pub default: Duration,
    pub min: Duration,
    pub max: Duration,
}

const fn range(flag: &'static str, default: Duration, min_ms: u64, max_ms: u64) -> DurationRange {
    DurationRange {
        flag,
        default,
        min: Duration::from_millis(min_ms),
        max: Duration::from_millis(max_ms),
    }
}

pub const GRACE: DurationRange = range("grace", defaults::GRACE, 100 * MS, HOUR);
pub const START_SECS: DurationRange = range("start-secs", defaults::START_SECS, 100 * MS, HOUR);
pub const STALE_AFTER: DurationRange = range("stale-after", defaults::STALE_AFTER, SEC, HOUR);
pub const WAIT_LOG_EVERY: DurationRange =
    range("wait-log-every", defaults::WAIT_LOG_EVERY, SEC, 24 * HOUR);
pub const RECONNECT_MAX: DurationRange =
    range("reconnect-max", defaults::RECONNECT_MAX, 250 * MS, HOUR);
pub const STANDBY: DurationRange = range("standby", defaults::STANDBY, 100 * MS, 24 * HOUR);
/// The PostgreSQL lock's own rule (renew at most half the lease) is checked with the lock.
pub const LEASE: DurationRange = range("lease", defaults::LEASE, SEC, HOUR);
pub const RENEW: DurationRange = range("renew", defaults::RENEW, 100 * MS, 30 * MIN);
/// `check --timeout`.
pub const CHECK_TIMEOUT: DurationRange = range("timeout", defaults::CHECK_TIMEOUT, 100 * MS, HOUR);

/// Every duration setting of `run`, for documentation and tests.
pub const RUN_DURATIONS: [DurationRange; 8] = [
    GRACE,
    START_SECS,
    STALE_AFTER,
    WAIT_LOG_EVERY,
    RECONNECT_MAX,
    STANDBY,
    LEASE,
    RENEW,
];

impl DurationRange {
    /// The value if it is in range, else the message naming the range (`where` names the
    /// setting as it was given: `--grace`, or `grace in /etc/engine-shim.toml`).
    pub fn check(&self, value: Duration, given_as: &str) -> Result<Duration, String> {
        if (self.min..=self.max).contains(&value) {
            return Ok(value);
        }
        Err(format!("{given_as} {}: {}", show(value), self.bounds()))
    }

    /// `must be between 1s and 1h`.
    pub fn bounds(&self) -> String {
        format!("must be between {} and {}", show(self.min), show(self.max))
    }

    /// The flag's value (flag or environment), else the file's, else the default; in range.
    fn pick(
        &self,
        flag: Option<Duration>,
        file: Option<Duration>,
        path: Option<&Path>,
    ) -> Result<Duration, ConfigError> {
        let (value, given_as) = match (flag, file) {
            (Some(value), _) => (value, format!("--{}", self.flag)),
            (None, Some(value)) => (value, in_file(&self.flag.replace('-', "_"), path)),
            (None, None) => return Ok(self.default),
        };
        self.check(value, &given_as).map_err(ConfigError::Usage)
    }
}

/// A duration the way operators write it: `0s`, `500ms`, `1h`.
fn show(value: Duration) -> String {
    if value.is_zero() {
        "0s".into()
    } else {
        humantime::format_duration(value).to_string()
    }
}

/// `key in FILE`, or just `key` when there is no file.
fn in_file(key: &str, path: Option<&Path>) -> String {
    match path {
        Some(path) => format!("{key} in {}", path.display()),
        None => key.to_string(),
    }
}

/// Parses `check --timeout`: a duration in [`CHECK_TIMEOUT`]'s range.
pub fn parse_check_timeout(text: &str) -> Result<Duration, String> {
    let value = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    CHECK_TIMEOUT
        .check(value, "--timeout")
        .map_err(|_| CHECK_TIMEOUT.bounds())
}

/// The node URL, if the shim can speak to it: plain `ws://` only. This build has no TLS stack
/// (it keeps the binary small and free of a C build), so `wss://` is refused here rather than
/// failing on every reconnect.
pub fn parse_node_url(text: &str) -> Result<String, String> {
    let url = text.trim();
    let host = url.strip_prefix("ws://").unwrap_or_default();
    if !host.is_empty() && !host.starts_with('/') {
        return Ok(url.to_string());
    }
    let fix = match url.split_once("://") {
        Some(("wss", _)) => {
            "this build speaks plain ws:// only (no TLS): reach the node over ws:// on loopback or \
             a private network, or run a local TLS-terminating proxy (e.g. stunnel) and point \
             --node at its ws://127.0.0.1:PORT"
        }
        Some(("http" | "https", _)) => {
            "the shim needs the node's WebSocket endpoint: write ws://HOST:PORT (e.g. \
             ws://127.0.0.1:9944)"
        }
        _ => "write ws://HOST:PORT, e.g. ws://127.0.0.1:9944",
    };
    Err(format!("'{url}' is not a ws:// URL: {fix}"))
}

/// The top layer of `run`'s settings: what the command line gave (a flag, or its `ENGINE_SHIM_*`
/// variable), `None` where it gave nothing. Field by field the same as the flags (see `cli` for
/// their meaning), so the layers beneath can tell "not given" from "given as the default".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub engines: Vec<EngineList>,
    pub engine_version: Option<SemVer>,
    pub node: Option<String>,
    pub storage_key: Option<StorageKey>,
    pub rule: Option<Rule>,
    pub log_format: Option<LogFormat>,
    pub grace: Option<Duration>,
    pub start_secs: Option<Duration>,
    pub stale_after: Option<Duration>,
    pub wait_log_every: Option<Duration>,
    pub reconnect_max: Option<Duration>,
    pub lock: Option<String>,
    pub lock_dir: Option<PathBuf>,
    pub lock_mode: Option<LockMode>,
    pub lock_name: Option<String>,
    pub lease: Option<Duration>,
    pub renew: Option<Duration>,
    pub standby: Option<Duration>,
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub control_socket: Option<PathBuf>,
    /// The args after `--`: the single engine's command, or the shared args.
    pub command: Vec<String>,
}

/// Everything `engine-shim run` needs, with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    pub node: String,
    pub storage_key: Vec<u8>,
    pub rule: Rule,
    pub log_format: LogFormat,
    pub grace: Duration,
    pub start_secs: Duration,
    pub stale_after: Duration,
    pub wait_log_every: Duration,
    pub reconnect_max: Duration,
    /// `--lock SPEC` as given (`none`, `file:PATH`); `None` means the documented default.
    pub lock: Option<String>,
    pub lock_dir: Option<PathBuf>,
    pub standby: Duration,
    pub control_socket: Option<PathBuf>,
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Options of a PostgreSQL lock (ignored by the other kinds); the password is read later, from
    /// the environment or `lock_password_file`, never from flags.
    pub lock_mode: LockMode,
    pub lock_name: String,
    pub lease: Duration,
    pub renew: Duration,
    pub lock_password_file: Option<PathBuf>,
    /// At least one engine, in the order given.
    pub engines: Vec<EngineCommand>,
    /// The `engine-shim` binary each engine runs under as its guardian; no flag sets it
    /// ([`defaults::GUARDIAN`], this very binary).
    pub guardian: PathBuf,
    /// How to read the settings again on SIGHUP; `None` without a config file.
    pub reload: Option<Reload>,
}

/// The flags and environment as given, to lay a re-read config file under them again on SIGHUP.
#[derive(Debug, Clone)]
pub struct Reload(pub Box<Overrides>);

impl Reload {
    /// The config file this reload reads.
    pub fn path(&self) -> &Path {
        self.0
            .config
            .as_deref()
            .expect("a reload has a config file")
    }

    /// Reads the file again and merges it under the same flags and environment.
    pub fn resolve(&self) -> Result<RunConfig, ConfigError> {
        (*self.0).clone().resolve()
    }
}

/// Two settings are the same whatever reloads them.
impl PartialEq for Reload {
    fn eq(&self, other: &Self) -> bool {
        self.path() == other.path()
    }
}

impl Eq for Reload {}

/// One engine the shim may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineCommand {
    /// The versions the engine covers, as declared; empty until discovered from the program
    /// (`PROGRAM --version` and the engine libraries it links).
    pub versions: Vec<SemVer>,
    /// Program, its own args, then the shared args; never empty.
    pub command: Vec<String>,
}

/// The engines of one `--engine` value (several when separated by `;`), before shared args.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineList(pub Vec<EngineCommand>);

/// Why the settings cannot be used. Every variant is a usage error (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source} (check --config / ENGINE_SHIM_CONFIG)", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `message` is the TOML parser's, which shows the offending line and key.
    #[error("config file {} is invalid: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Usage(String),
}

/// Parses one `--engine` value: `[VERSIONS=]CMD`, where VERSIONS is one `X.Y.Z` or several
/// separated by commas (a runner covering two versions: `2.2.8,2.3.0=CMD`), CMD is split into words
/// like a shell would, and several engines may be separated by an unquoted `;` (handy in
/// `ENGINE_SHIM_ENGINES`).
///
/// The versions are the part of the first word before its first `=`, unless that part contains a
/// `/`: so `/opt/a=b/engine` is a program, while `1.1=engine` is a bad version rather than a program
/// called `1.1=engine`, which would only fail later and less clearly.
pub fn parse_engines(text: &str) -> Result<EngineList, String> {
    let commands = words::split_commands(text).map_err(|e| e.to_string())?;
    if commands.is_empty() {
        return Err("no command given: write [VERSION=]CMD [ARGS…]".into());
    }
    commands
        .into_iter()
        .map(parse_engine_words)
        .collect::<Result<_, _>>()
        .map(EngineList)
}

fn parse_engine_words(mut words: Vec<String>) -> Result<EngineCommand, String> {
    let first = words[0].clone();
    let Some((head, program)) = first
        .split_once('=')
        .filter(|(head, _)| !head.contains('/'))
    else {
        return Ok(EngineCommand {
            versions: Vec::new(),
            command: words,
        });
    };
    let versions = head
        .split(',')
        .map(|part| {
            part.parse::<SemVer>().map_err(|_| {
                format!(
                    "'{part}' in '{first}' is not a version of the form X.Y.Z: write X.Y.Z=CMD or \
                     X.Y.Z,X.Y.Z=CMD, or give the program as a path (./{first}) if its name \
                     contains '='"
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_versions_once(&versions).map_err(|e| format!("{e} in '{first}'"))?;
    if program.is_empty() {
        return Err(format!(
            "'{first}' names a version but no program: write {head}=/path/to/engine [ARGS…]"
        ));
    }
    words[0] = program.to_string();
    Ok(EngineCommand {
        versions,
        command: words,
    })
}

/// A version listed twice for one engine is a typo for another version, not a harmless repeat.
fn check_versions_once(versions: &[SemVer]) -> Result<(), String> {
    for (i, version) in versions.iter().enumerate() {
        if versions[..i].contains(version) {
            return Err(format!("version {version} is listed twice: keep one"));
        }
    }
    Ok(())
}

/// Refuses sets of one-version engines where one release could be served by two engines, because
/// the shim could not know which one to run: duplicates, and pairs the rule cannot tell apart (same
/// major.minor under `major-minor`, same major under `major`, the same version under `exact`).
///
/// An engine covering several versions is a runner that overlaps its neighbours by design (the
/// package of 2.3 covers 2.2 and 2.3): pairs involving one are allowed, and
/// the gate's `pick_engine` decides between them.
pub(crate) fn validate_engines(engines: &[Covers], rule: Rule) -> Result<(), String> {
    let singles: Vec<SemVer> = engines
        .iter()
        .filter(|covers| !covers.is_several())
        .map(Covers::newest)
        .collect();
    for (i, &a) in singles.iter().enumerate() {
        for &b in &singles[i + 1..] {
            if a == b {
                return Err(format!("engine {a} is given twice: keep one"));
            }
            // Each rule matches fields for equality, so two engines share a compatible release
            // exactly when each is compatible with the other taken as a release.
            if rule.compare(a, b) == Compatibility::Compatible {
                return Err(format!(
                    "engines {a} and {b} are both compatible with release {}: keep one",
                    release_pattern(a, rule)
                ));
            }
        }
    }
    Ok(())
}

/// The releases an engine is compatible with, written like `1.1.x`.
fn release_pattern(version: SemVer, rule: Rule) -> String {
    match rule {
        Rule::MajorMinor => format!("{}.{}.x", version.major, version.minor),
        Rule::Major => format!("{}.x.x", version.major),
        Rule::Exact => version.to_string(),
    }
}

/// The TOML config file: one key per `run` flag (the flag's name in snake_case), plus `[[engine]]`
/// tables and `shared_args`. Unknown keys are errors so a typo does not silently fall back to a
/// default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub node: Option<String>,
    #[serde(default, deserialize_with = "storage_key")]
    pub storage_key: Option<StorageKey>,
    #[serde(default, deserialize_with = "choice")]
    pub rule: Option<Rule>,
    #[serde(default, deserialize_with = "choice")]
    pub log_format: Option<LogFormat>,
    #[serde(default, deserialize_with = "duration")]
    pub grace: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub start_secs: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub stale_after: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub wait_log_every: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub reconnect_max: Option<Duration>,
    pub lock: Option<String>,
    pub lock_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "duration")]
    pub standby: Option<Duration>,
    pub control_socket: Option<PathBuf>,
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub lock_mode: Option<LockMode>,
    pub lock_name: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    pub lease: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub renew: Option<Duration>,
    pub lock_password_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "version")]
    pub engine_version: Option<SemVer>,
    #[serde(default)]
    pub engine: Vec<FileEngine>,
    pub shared_args: Option<Vec<String>>,
}

/// One `[[engine]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEngine {
    #[serde(default, deserialize_with = "version")]
    pub version: Option<SemVer>,
    /// The versions of an engine covering several (a runner), instead of `version`.
    #[serde(default, deserialize_with = "versions")]
    pub versions: Option<Vec<SemVer>>,
    #[serde(deserialize_with = "command")]
    pub command: Vec<String>,
}

impl FileEngine {
    /// The engine as the flags would give it; `version` and `versions` are two spellings of one
    /// fact, so both at once is refused rather than one silently winning.
    fn engine_command(&self, path: Option<&Path>) -> Result<EngineCommand, ConfigError> {
        let versions = match (self.version, &self.versions) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Usage(format!(
                    "{}: give either version = \"X.Y.Z\" or versions = [\"X.Y.Z\", …] for the \
                     engine {}, not both",
                    in_file("[[engine]]", path),
                    self.command[0]
                )))
            }
            (Some(version), None) => vec![version],
            (None, Some(versions)) => versions.clone(),
            (None, None) => Vec::new(),
        };
        Ok(EngineCommand {
            versions,
            command: self.command.clone(),
        })
    }
}

impl FileConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        FileConfig::parse(&text, path)
    }

    /// Parses file contents; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
    }
}

impl Overrides {
    /// Reads the config file (if `--config` was given) and merges it under the flags and environment.
    pub fn resolve(self) -> Result<RunConfig, ConfigError> {
        match self.config.clone() {
            Some(path) => {
                let file = FileConfig::load(&path)?;
                let reload = Reload(Box::new(self.clone()));
                let mut config = self.merge(file, Some(&path))?;
                config.reload = Some(reload);
                Ok(config)
            }
            None => self.merge(FileConfig::default(), None),
        }
    }

    /// Lays `file` under the flags and fills in defaults; `path` only names the file in errors.
    pub fn merge(self, file: FileConfig, path: Option<&Path>) -> Result<RunConfig, ConfigError> {
        let rule = self.rule.or(file.rule).unwrap_or(defaults::RULE);
        let engines = self.engine_commands(&file, path)?;
        let known: Vec<Covers> = engines
            .iter()
            .filter_map(|e| Covers::new(e.versions.clone()))
            .collect();
        validate_engines(&known, rule).map_err(ConfigError::Usage)?;
        let node = match (self.node, file.node) {
            (Some(node), _) => node,
            (None, Some(node)) => parse_node_url(&node)
                .map_err(|e| ConfigError::Usage(format!("{}: {e}", in_file("node", path))))?,
            (None, None) => defaults::NODE.into(),
        };
        Ok(RunConfig {
            node,
            storage_key: self
                .storage_key
                .or(file.storage_key)
                .map_or_else(crate::storage_key::release_key, |key| key.0),
            rule,
            log_format: self.log_format.or(file.log_format).unwrap_or_default(),
            grace: GRACE.pick(self.grace, file.grace, path)?,
            start_secs: START_SECS.pick(self.start_secs, file.start_secs, path)?,
            stale_after: STALE_AFTER.pick(self.stale_after, file.stale_after, path)?,
            wait_log_every: WAIT_LOG_EVERY.pick(self.wait_log_every, file.wait_log_every, path)?,
            reconnect_max: RECONNECT_MAX.pick(self.reconnect_max, file.reconnect_max, path)?,
            lock: self.lock.or(file.lock),
            lock_dir: self.lock_dir.or(file.lock_dir),
            standby: STANDBY.pick(self.standby, file.standby, path)?,
            control_socket: self.control_socket.or(file.control_socket),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            lock_mode: self.lock_mode.or(file.lock_mode).unwrap_or_default(),
            lock_name: self
                .lock_name
                .or(file.lock_name)
                .unwrap_or_else(|| defaults::LOCK_NAME.to_string()),
            lease: LEASE.pick(self.lease, file.lease, path)?,
            renew: RENEW.pick(self.renew, file.renew, path)?,
            lock_password_file: file.lock_password_file,
            engines,
            guardian: defaults::GUARDIAN.into(),
            reload: None,
        })
    }

    /// The engines and their full commands. Engines come from `--engine` (or `ENGINE_SHIM_ENGINES`),
    /// else from the file's `[[engine]]` tables, else from the single-engine form `-- CMD [ARGS…]`.
    /// With either of the first two, the args after `--` are shared args and replace the file's
    /// `shared_args`.
    fn engine_commands(
        &self,
        file: &FileConfig,
        path: Option<&Path>,
    ) -> Result<Vec<EngineCommand>, ConfigError> {
        let in_file = |key: &str| match path {
            Some(path) => format!("{key} in {}", path.display()),
            None => key.to_string(),
        };
        let from_flags: Vec<EngineCommand> = self
            .engines
            .iter()
            .flat_map(|list| list.0.clone())
            .collect();
        let (engines, source) = if !from_flags.is_empty() {
            (from_flags, "--engine (or ENGINE_SHIM_ENGINES)".to_string())
        } else if !file.engine.is_empty() {
            let engines = file
                .engine
                .iter()
                .map(|e| e.engine_command(path))
                .collect::<Result<_, _>>()?;
            (engines, in_file("[[engine]]"))
        } else if !self.command.is_empty() {
            let versions = self.engine_version.or(file.engine_version);
            let mut command = self.command.clone();
            command.extend(file.shared_args.iter().flatten().cloned());
            return Ok(vec![EngineCommand {
                versions: versions.into_iter().collect(),
                command,
            }]);
        } else {
            return Err(ConfigError::Usage(
                "no engine to run: give --engine [VERSIONS=]CMD (once per program), [[engine]] \
                 tables in the --config file, or the single engine as `-- CMD [ARGS…]`"
                    .into(),
            ));
        };
        let engine_version = if self.engine_version.is_some() {
            Some("--engine-version (or ENGINE_SHIM_ENGINE_VERSION)".to_string())
        } else {
            file.engine_version.map(|_| in_file("engine_version"))
        };
        if let Some(engine_version) = engine_version {
            return Err(ConfigError::Usage(format!(
                "{engine_version} cannot be combined with {source}: it is for the single-engine \
                 form `-- CMD`; give each engine its version as --engine X.Y.Z=CMD or \
                 version = \"X.Y.Z\" in its [[engine]] table"
            )));
        }
        let shared = if self.command.is_empty() {
            file.shared_args.clone().unwrap_or_default()
        } else {
            self.command.clone()
        };
        Ok(engines
            .into_iter()
            .map(|mut engine| {
                engine.command.extend(shared.iter().cloned());
                engine
            })
            .collect())
    }
}

/// Deserializes a string through `parse`; other TOML types get an error saying what was expected.
struct ParsedStr<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
}

impl<T> Visitor<'_> for ParsedStr<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        (self.parse)(text).map_err(E::custom)
    }
}

fn parsed<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<Option<T>, D::Error> {
    deserializer
        .deserialize_str(ParsedStr { expecting, parse })
        .map(Some)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    parsed(d, "a duration string like \"10s\" or \"500ms\"", |text| {
        humantime::parse_duration(text).map_err(|e| {
            format!("'{text}' is not a duration ({e}): write e.g. \"10s\", \"500ms\", \"2m\"")
        })
    })
}

fn version<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SemVer>, D::Error> {
    parsed(d, "a version string like \"1.1.0\"", |text| {
        text.parse()
            .map_err(|e: crate::version::ParseVersionError| e.to_string())
    })
}

/// A non-empty list of distinct versions.
fn versions<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<SemVer>>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    if texts.is_empty() {
        return Err(de::Error::custom(
            "versions is empty: write versions = [\"2.2.8\", \"2.3.0\"], or leave it out to \
             learn them from the program",
        ));
    }
    let versions = texts
        .iter()
        .map(|text| text.parse::<SemVer>().map_err(de::Error::custom))
        .collect::<Result<Vec<_>, _>>()?;
    check_versions_once(&versions).map_err(de::Error::custom)?;
    Ok(Some(versions))
}

fn storage_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<StorageKey>, D::Error> {
    parsed(d, "a hex string like \"0xea74…\"", str::parse)
}

/// A setting chosen by name from a short list, spelled as its flag's value (`major-minor`,
/// `json`). The names are the flags' own: a test in `cli` keeps them equal to clap's.
pub trait Choice: Copy + 'static {
    /// Every choice, in the order the error message lists them.
    const ALL: &'static [Self];
    fn name(self) -> &'static str;
}

impl Choice for Rule {
    const ALL: &'static [Rule] = &[Rule::MajorMinor, Rule::Exact, Rule::Major];
    fn name(self) -> &'static str {
        self.as_str()
    }
}

impl Choice for LogFormat {
    const ALL: &'static [LogFormat] = &[LogFormat::Text, LogFormat::Json];
    fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The choice named `text`, or a message listing the names there are.
pub fn parse_choice<T: Choice>(text: &str) -> Result<T, String> {
    T::ALL
        .iter()
        .copied()
        .find(|choice| choice.name() == text)
        .ok_or_else(|| {
            let names: Vec<String> = T::ALL.iter().map(|c| format!("\"{}\"", c.name())).collect();
            format!("'{text}' is not one of {}", names.join(", "))
        })
}

fn choice<'de, D: Deserializer<'de>, T: Choice>(d: D) -> Result<Option<T>, D::Error> {
    parsed(d, "a string", parse_choice::<T>)
}

fn command<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let command = Vec::<String>::deserialize(d)?;
    if command.is_empty() {
        return Err(de::Error::custom(
            "command is empty: write command = [\"/path/to/engine\", \"--arg\", …]",
        ));
    }
    Ok(command)
}

#[cfg(test)]
mod tests;
