//! fake-engine: a stand-in for a real engine binary, for testing engine-shim end to end.
//!
//! It behaves like the engine where the shim cares: it reports a version, holds an exclusive lock on
//! its data directory the way RocksDB holds `data.db/LOCK` (so two overlapping engines fail loudly),
//! and stops on SIGTERM/SIGINT after an optional delay. With `--events` it appends one JSON line per
//! start, stop, crash and lock failure, so a test can prove from the file alone that two engines never
//! ran at once and see exactly which arguments and `ENGINE_SHIM_*` variables each was given.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use engine_shim::version::SemVer;
use tokio::signal::unix::{signal, SignalKind};

/// Exit status after `--crash-after`, distinct from a clean stop (0) and a lock failure (1).
const CRASH_EXIT: u8 = 3;

/// A fake engine: reports a version, locks its data directory, logs its life to an events file.
#[derive(Debug, Parser)]
#[command(
    name = "fake-engine",
    disable_version_flag = true,
    trailing_var_arg = true
)]
struct Args {
    /// The engine version to pretend to be (also read from FAKE_ENGINE_AS_VERSION, so a bare
    /// `fake-engine --version` can be probed).
    #[arg(long, value_name = "X.Y.Z", env = "FAKE_ENGINE_AS_VERSION")]
    as_version: SemVer,

    /// Print `fake-engine X.Y.Z` and exit.
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
    if args.version {
        println!("fake-engine {}", args.as_version);
        return ExitCode::SUCCESS;
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
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    // Signal handlers first: a SIGTERM that arrives while starting up must still mean a clean stop.
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("fake-engine: cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    let log = EventLog::new(&args);

    let lock = match &args.data_dir {
        None => None,
        Some(dir) => match lock_data_dir(dir) {
            Ok(lock) => Some(lock),
            Err(error) => {
                eprintln!("fake-engine {}: {error}", args.as_version);
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
        args.as_version,
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
                    say(&format!("fake-engine {} ignoring SIGTERM", args.as_version));
                    continue;
                }
                break;
            }
            _ = int.recv() => break,
            () = &mut crash => {
                log.write("crash", None);
                eprintln!("fake-engine {} crashing as told (--crash-after)", args.as_version);
                // The lock goes with the process, as it would in a real crash.
                std::process::exit(CRASH_EXIT.into());
            }
        }
    }

    say(&format!("fake-engine {} stopping", args.as_version));
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
}

impl EventLog {
    fn new(args: &Args) -> Self {
        EventLog {
            path: args.events.clone(),
            version: args.as_version,
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
        }
    }

    fn write(&self, event: &str, error: Option<&str>) {
        self.write_as(event, std::process::id(), error);
    }

    /// An event about process `pid` (this engine, or a process it started).
    fn write_as(&self, event: &str, pid: u32, error: Option<&str>) {
        let Some(path) = &self.path else { return };
        let unix_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        let mut record = serde_json::json!({
            "event": event,
            "version": self.version.to_string(),
            "pid": pid,
            "unix_nanos": u64::try_from(unix_nanos).unwrap_or(u64::MAX),
            "args": self.extra,
            "env": self.env,
        });
        if let Some(error) = error {
            record["error"] = error.into();
            record["data_dir"] = self
                .data_dir
                .as_ref()
                .map(|d| d.display().to_string())
                .into();
        }
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
