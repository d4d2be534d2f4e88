//! fake-engine: a stand-in for a real engine binary, for testing engine-shim end to end.
//!
//! It behaves like the engine where the shim cares: it reports a version, holds an exclusive lock on
//! its data directory the way RocksDB holds `data.db/LOCK` (so two overlapping engines fail loudly),
//! and stops on SIGTERM/SIGINT after an optional delay. With `--events` it appends one JSON line per
//! start, stop, crash and lock failure, so a test can prove from the file alone that two engines never
//! ran at once and see exactly which arguments and `ENGINE_SHIM_*` variables each was given.
//!
//! By default it is passive: it runs from the moment it is started. With `--node URL` it follows the
//! node's finalized blocks itself, as real Chainflip engines do (see `fake_node::double`): a 1.0–1.3
//! engine (`--as-version`) or today's two-version runner (`--as-versions OLD,NEW`).

#[path = "fake_engine/follow.rs"]
mod follow;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{ArgGroup, Parser};
use engine_shim::version::SemVer;
use fake_node::double::Covers;
use tokio::signal::unix::{signal, SignalKind};

/// Exit status after `--crash-after`, distinct from a clean stop (0) and a lock failure (1).
const CRASH_EXIT: u8 = 3;

/// A fake engine: reports a version, locks its data directory, logs its life to an events file.
#[derive(Debug, Parser)]
#[command(
    name = "fake-engine",
    disable_version_flag = true,
    trailing_var_arg = true,
    group(ArgGroup::new("identity").required(true).args(["as_version", "as_versions"]))
)]
struct Args {
    /// The engine version to pretend to be (also read from FAKE_ENGINE_AS_VERSION, so a bare
    /// `fake-engine --version` can be probed).
    #[arg(long, value_name = "X.Y.Z", env = "FAKE_ENGINE_AS_VERSION")]
    as_version: Option<SemVer>,

    /// Be today's Chainflip runner, linked against two engine versions: runs NEW when it fits,
    /// else OLD, switching OLD → NEW inside this process at the upgrade block. Needs `--node`.
    #[arg(long, value_name = "OLD,NEW", value_parser = parse_pair)]
    as_versions: Option<(SemVer, SemVer)>,

    /// Follow this node's finalized blocks and decide like a real engine: wait (holding nothing)
    /// while not yet compatible, start at the first compatible block, exit 1 once the release no
    /// longer fits. Without it the engine runs from the moment it is started.
    #[arg(long, value_name = "URL")]
    node: Option<String>,

    /// Print `fake-engine X.Y.Z` (a runner prints only NEW) and exit.
    #[arg(short = 'V', long)]
    version: bool,

    /// Data directory; created if missing. An exclusive lock on DIR/LOCK is held while running.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Append one JSON line per start, stop, crash and lock failure to FILE.
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,

    /// How long to take to shut down after SIGTERM/SIGINT (e.g. 500ms, 2s).
    #[arg(long, value_name = "D", value_parser = humantime::parse_duration, default_value = "0s")]
    shutdown_delay: Duration,

    /// Crash (exit 3) after running this long.
    #[arg(long, value_name = "D", value_parser = humantime::parse_duration)]
    crash_after: Option<Duration>,

    /// Ignore SIGTERM entirely, so only SIGKILL ends it (SIGINT still stops it).
    #[arg(long)]
    ignore_term: bool,

    /// Start a helper process that escapes into a session of its own (`setsid`), inherits every
    /// descriptor not marked close-on-exec plus the data directory's lock, and outlives the engine
    /// unless something kills it: as a real engine's sidecar left behind would. Its pid is logged
    /// as a `helper` event.
    #[arg(long)]
    leave_helper: bool,

    /// Any further arguments, echoed into the events (e.g. the start block the shim substituted).
    #[arg(value_name = "ARGS", allow_hyphen_values = true)]
    extra: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let covers = args.covers();
    if args.version {
        println!("fake-engine {}", covers.reported());
        return ExitCode::SUCCESS;
    }
    if matches!(covers, Covers::Runner { .. }) && args.node.is_none() {
        eprintln!(
            "fake-engine: --as-versions needs --node URL: the runner picks its inner version from \
             the release at each finalized block (or use --as-version X.Y.Z for a passive engine)"
        );
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("fake-engine: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        // Signal handlers first: a SIGTERM that arrives while starting up must still mean a clean stop.
        let signals = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Signals { term, int },
            (Err(error), _) | (_, Err(error)) => {
                eprintln!("fake-engine: cannot install signal handlers: {error}");
                return ExitCode::FAILURE;
            }
        };
        match &args.node {
            Some(url) => follow::run(&args, covers, url, signals).await,
            None => run_passive(args, signals).await,
        }
    })
}

impl Args {
    /// Which engine to be; clap guarantees exactly one of the two flags.
    fn covers(&self) -> Covers {
        match (self.as_versions, self.as_version) {
            (Some((old, new)), _) => Covers::Runner { old, new },
            (None, Some(version)) => Covers::One(version),
            (None, None) => unreachable!("clap requires --as-version or --as-versions"),
        }
    }
}

/// `OLD,NEW` for `--as-versions`.
fn parse_pair(text: &str) -> Result<(SemVer, SemVer), String> {
    let usage = || {
        format!(
            "'{text}' is not OLD,NEW (two X.Y.Z versions, OLD older than NEW, e.g. 2.2.8,2.3.0)"
        )
    };
    let (old, new) = text.split_once(',').ok_or_else(usage)?;
    let (old, new): (SemVer, SemVer) = (
        old.trim().parse().map_err(|_| usage())?,
        new.trim().parse().map_err(|_| usage())?,
    );
    if old >= new {
        return Err(usage());
    }
    Ok((old, new))
}

/// SIGTERM and SIGINT, installed before anything else.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

/// Passive mode: runs from the moment it is started.
async fn run_passive(args: Args, signals: Signals) -> ExitCode {
    let Signals { mut term, mut int } = signals;
    let version = args.covers().reported();
    let log = EventLog::new(&args);

    let lock = match &args.data_dir {
        None => None,
        Some(dir) => match lock_data_dir(dir) {
            Ok(lock) => Some(lock),
            Err(error) => {
                eprintln!("fake-engine {}: {error}", version);
                log.write("lock_failed", Some(&error));
                return ExitCode::FAILURE;
            }
        },
    };
    log.write("start", None);
    if args.leave_helper {
        match leave_helper(lock.as_ref()) {
            Ok(pid) => log.write_as("helper", pid, None),
            Err(error) => eprintln!("fake-engine: cannot start the helper: {error}"),
        }
    }
    say(&format!(
        "fake-engine {} started pid {}",
        version,
        std::process::id()
    ));

    let crash = async {
        match args.crash_after {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(crash);
    loop {
        tokio::select! {
            _ = term.recv() => {
                if args.ignore_term {
                    say(&format!("fake-engine {} ignoring SIGTERM", version));
                    continue;
                }
                break;
            }
            _ = int.recv() => break,
            () = &mut crash => {
                log.write("crash", None);
                eprintln!("fake-engine {} crashing as told (--crash-after)", version);
                // The lock goes with the process, as it would in a real crash.
                std::process::exit(CRASH_EXIT.into());
            }
        }
    }

    say(&format!("fake-engine {} stopping", version));
    tokio::time::sleep(args.shutdown_delay).await;
    // "stop" is written while the lock is still held, so an engine sharing the data directory can
    // only write its "start" after this "stop": in the events file, their lives never interleave.
    log.write("stop", None);
    if let Some(lock) = lock {
        let _ = lock.unlock();
    }
    ExitCode::SUCCESS
}

/// One log line on stdout. A closed stdout (the reader went away) must not turn into a panic.
fn say(line: &str) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Creates `dir` if needed and takes the exclusive, non-blocking lock on `dir/LOCK` that RocksDB
/// takes on `data.db/LOCK`. The lock is released when the file closes, including on SIGKILL.
fn lock_data_dir(dir: &Path) -> Result<File, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open lock file {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(format!(
            "IO error: While lock file: {}: Resource temporarily unavailable \
             (another engine is using this data directory)",
            path.display()
        )),
        Err(TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// Starts `sleep` in a new session, holding a copy of the data directory's lock; returns its pid.
/// The child is deliberately never waited for.
fn leave_helper(data_lock: Option<&File>) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let data_lock = data_lock.map(|file| file.as_raw_fd());
    let mut command = std::process::Command::new("sleep");
    command
        .arg("3600")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setsid and fcntl are async-signal-safe system calls.
    unsafe {
        command.pre_exec(move || {
            rustix::process::setsid()?;
            if let Some(fd) = data_lock {
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            }
            Ok(())
        });
    }
    Ok(command.spawn()?.id())
}

/// Appends events as JSON lines; every line is one `write` to an `O_APPEND` file, so lines from
/// several engines sharing one file never mix.
struct EventLog {
    path: Option<PathBuf>,
    version: SemVer,
    extra: Vec<String>,
    env: BTreeMap<String, String>,
    data_dir: Option<PathBuf>,
    /// A runner's two versions, OLD then NEW, on every event.
    covers: Option<Vec<String>>,
}

impl EventLog {
    fn new(args: &Args) -> Self {
        EventLog {
            path: args.events.clone(),
            version: args.covers().reported(),
            extra: args.extra.clone(),
            // `vars_os`: one odd variable elsewhere in the environment must not stop the engine.
            env: std::env::vars_os()
                .filter_map(|(name, value)| {
                    let name = name.into_string().ok()?;
                    name.starts_with("ENGINE_SHIM_")
                        .then(|| (name, value.to_string_lossy().into_owned()))
                })
                .collect(),
            data_dir: args.data_dir.clone(),
            covers: match args.covers() {
                Covers::One(_) => None,
                Covers::Runner { old, new } => Some(vec![old.to_string(), new.to_string()]),
            },
        }
    }

    fn write(&self, event: &str, error: Option<&str>) {
        self.write_as(event, std::process::id(), error);
    }

    /// An event about process `pid` (this engine, or a process it started).
    fn write_as(&self, event: &str, pid: u32, error: Option<&str>) {
        let mut record = self.record(event, self.version, pid);
        if let Some(error) = error {
            record["error"] = error.into();
            record["data_dir"] = self
                .data_dir
                .as_ref()
                .map(|d| d.display().to_string())
                .into();
        }
        self.append(record);
    }

    /// An event of this engine as `version` (the active inner version of a runner), with more
    /// fields (`block`, `release`, …).
    fn write_fields(&self, event: &str, version: SemVer, fields: serde_json::Value) {
        let mut record = self.record(event, version, std::process::id());
        if let (Some(record), serde_json::Value::Object(fields)) = (record.as_object_mut(), fields)
        {
            record.extend(fields);
        }
        self.append(record);
    }

    fn record(&self, event: &str, version: SemVer, pid: u32) -> serde_json::Value {
        let unix_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        let mut record = serde_json::json!({
            "event": event,
            "version": version.to_string(),
            "pid": pid,
            "unix_nanos": u64::try_from(unix_nanos).unwrap_or(u64::MAX),
            "args": self.extra,
            "env": self.env,
        });
        if let Some(covers) = &self.covers {
            record["covers"] = covers.clone().into();
        }
        record
    }

    fn append(&self, record: serde_json::Value) {
        let Some(path) = &self.path else { return };
        let mut line = record.to_string().into_bytes();
        line.push(b'\n');
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut file| file.write_all(&line));
        if let Err(e) = written {
            eprintln!(
                "fake-engine: cannot append to events file {}: {e}",
                path.display()
            );
        }
    }
}
