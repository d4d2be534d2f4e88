//! The engine's guardian: a tiny process between the shim and the engine that holds the lock until
//! **no process of the engine is left**, whatever happens to the shim.
//!
//! Why it exists: the engine inherits the lock's descriptors (so a killed shim cannot let the next
//! engine start beside a live one), and so does everything the engine starts. PDEATHSIG only
//! reaches the direct child, and killing a process group misses whatever escaped it with `setsid`:
//! a helper left behind would keep the lock forever, or — without the inheritance — the lock would
//! be free while the helper still holds the data directory. The guardian closes both holes:
//! - it is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so every orphan of the engine's tree,
//!   including ones that called `setsid`, becomes its child and can be found and reaped;
//! - it holds the lock's descriptors itself and exits only after the engine has exited **and**
//!   every remaining descendant has been killed and reaped (`waitpid` returned `ECHILD`): the lock
//!   is given back only when nothing of the engine runs, and never before (in particular never
//!   before the engine's own data lock is closed, which happens before it can be reaped);
//! - it gets a parent-death signal: when the shim dies (even by SIGKILL) it kills the engine's
//!   whole tree at once, reaps it, and exits.
//!
//! It is the `engine-shim` binary itself, started as `engine-shim __guardian REPORT_FD PROGRAM
//! [ARGS…]` (see [`SUBCOMMAND`]), single-threaded and synchronous: it blocks its signals and waits
//! for them with `sigwaitinfo`, so there is no handler and no race to reason about. It tells the
//! shim the engine's pid (or why it could not start) on `REPORT_FD`, then closes it.
//!
//! Signals it understands (the supervisor sends them to the guardian, never to a pid or group it
//! cannot be sure of):
//! - SIGTERM, SIGINT: passed on to the engine's process group;
//! - SIGUSR2 (also its parent-death signal): SIGKILL to the engine's whole tree, now;
//! - SIGUSR1, SIGHUP, SIGQUIT: ignored. They mean something to the shim (a hand-off, a reload), and
//!   a `pkill -USR1 engine-shim` reaches guardians too: passing them on would kill most engines.
//!
//! Its exit status mirrors the engine's: the same exit code, or death by the same signal.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};

/// The hidden first argument that turns `engine-shim` into a guardian.
pub const SUBCOMMAND: &str = "__guardian";

/// The guardian's parent-death signal, and the supervisor's "kill the engine now".
pub const KILL_NOW: i32 = libc::SIGUSR2;

/// The first line the guardian writes on its report descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The engine runs with this pid.
    Started(u32),
    /// The engine could not be started; the message says why.
    Failed(String),
}

impl Report {
    pub fn to_line(&self) -> String {
        match self {
            Report::Started(pid) => format!("started {pid}\n"),
            Report::Failed(error) => format!("failed {}\n", error.replace('\n', " ")),
        }
    }

    /// Reads what the guardian wrote; `None` if it wrote nothing usable (it died first).
    pub fn parse(text: &str) -> Option<Report> {
        let line = text.lines().next()?;
        if let Some(pid) = line.strip_prefix("started ") {
            return pid.parse().ok().map(Report::Started);
        }
        line.strip_prefix("failed ")
            .map(|error| Report::Failed(error.to_string()))
    }
}

/// What the guardian does with a signal, given whether the engine is still unreaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Response {
    /// Pass the signal on to the engine's process group.
    Forward(i32),
    /// SIGKILL the engine's whole tree.
    KillAll,
    /// Reap whatever exited.
    Reap,
    Ignore,
}

fn respond(signal: i32) -> Response {
    match signal {
        libc::SIGCHLD => Response::Reap,
        KILL_NOW => Response::KillAll,
        libc::SIGTERM | libc::SIGINT => Response::Forward(signal),
        _ => Response::Ignore,
    }
}

/// The signals the guardian waits for (all blocked, so none interrupts it, and none of those it
/// ignores can end it by its default action).
const HANDLED: [i32; 7] = [
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    KILL_NOW,
];

/// Runs the guardian with `args` (everything after [`SUBCOMMAND`]); never returns.
pub fn main(args: &[OsString]) -> ! {
    let (report_fd, program, engine_args) = match parse_args(args) {
        Some(parsed) => parsed,
        None => {
            eprintln!("engine-shim {SUBCOMMAND}: usage: REPORT_FD PROGRAM [ARGS…] (internal)");
            std::process::exit(2);
        }
    };
    // SAFETY: the supervisor passed this descriptor, open and ours alone, for exactly this use.
    let mut report = unsafe { File::from_raw_fd(report_fd) };
    // Not for the engine.
    set_cloexec(report_fd);
    let mask = signal_set(&HANDLED);
    // SAFETY: plain system calls on valid arguments.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::sigprocmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut());
    }
    let engine = match spawn_engine(program, engine_args) {
        Ok(pid) => pid,
        Err(error) => {
            let _ = report.write_all(Report::Failed(error).to_line().as_bytes());
            std::process::exit(127);
        }
    };
    let _ = report.write_all(Report::Started(engine).to_line().as_bytes());
    drop(report);
    let status = guard(engine, &mask);
    reap_everything(engine);
    mirror(status)
}

fn parse_args(args: &[OsString]) -> Option<(RawFd, &OsStr, &[OsString])> {
    let (fd, rest) = args.split_first()?;
    let fd = fd.to_str()?.parse().ok()?;
    let (program, engine_args) = rest.split_first()?;
    Some((fd, program.as_os_str(), engine_args))
}

/// Starts the engine in its own process group, with the default signal mask and SIGKILL as its
/// parent-death signal (so the guardian's own death, should it be killed, takes it along).
fn spawn_engine(program: &OsStr, args: &[OsString]) -> Result<u32, String> {
    let guardian = std::process::id() as libc::pid_t;
    let mut command = Command::new(program);
    command.args(args).process_group(0);
    // SAFETY: only async-signal-safe system calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let empty = signal_set(&[]);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            if libc::getppid() != guardian {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    match command.spawn() {
        // The child is reaped by `guard` through waitpid(-1), not through this handle.
        Ok(child) => Ok(child.id()),
        Err(error) => Err(format!(
            "cannot start {}: {error}",
            std::path::Path::new(program).display()
        )),
    }
}

/// Waits for signals until the engine has exited; returns its status.
fn guard(engine: u32, mask: &libc::sigset_t) -> ExitStatus {
    loop {
        // SAFETY: `mask` is a valid, initialised set; a null info pointer is allowed.
        let signal = unsafe { libc::sigwaitinfo(mask, std::ptr::null_mut()) };
        if signal < 0 {
            continue; // EINTR
        }
        match respond(signal) {
            Response::Forward(signal) => signal_group(engine, signal),
            Response::KillAll => kill_tree(engine),
            Response::Ignore => {}
            Response::Reap => {
                if let Some(status) = reap_exited(engine) {
                    return status;
                }
            }
        }
    }
}

/// Reaps every child that has exited; the engine's status if it was among them.
fn reap_exited(engine: u32) -> Option<ExitStatus> {
    let mut engine_status = None;
    loop {
        let mut status = 0;
        // SAFETY: a valid pointer to a local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return engine_status;
        }
        if pid as u32 == engine {
            engine_status = Some(ExitStatus::from_raw(status));
        }
    }
}

/// Kills and reaps every descendant left: the engine's group first, then every child (orphans of
/// the tree are re-parented to us as the subreaper), until `waitpid` says none is left. Children
/// are only looked up while some are still alive, so an engine that left nothing behind costs no
/// look at /proc.
fn reap_everything(engine: u32) {
    signal_group(engine, libc::SIGKILL);
    loop {
        let mut status = 0;
        // SAFETY: a valid pointer to a local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        match pid {
            1.. => continue,
            0 => {
                kill_tree(engine);
                // SAFETY: as above; blocks until one of them has died.
                unsafe { libc::waitpid(-1, &mut status, 0) };
            }
            _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => return, // ECHILD: nothing of the engine is left
        }
    }
}

/// SIGKILL to the engine's process group and to every child of ours (their own children become
/// ours once they die, and are killed on the next round).
fn kill_tree(engine: u32) {
    signal_group(engine, libc::SIGKILL);
    for child in children() {
        // SAFETY: a plain system call; `child` is our own unreaped child, so the pid is not
        // recycled.
        unsafe {
            libc::kill(child as libc::pid_t, libc::SIGKILL);
        }
    }
}

fn signal_group(leader: u32, signal: i32) {
    // SAFETY: a plain system call. The group's leader is our child; until the guardian reaps it
    // (and then kills whatever is left in its group), the group id cannot be reused.
    unsafe {
        libc::kill(-(leader as libc::pid_t), signal);
    }
}

/// Our children: from `/proc/self/task/PID/children` where the kernel offers it (the guardian has
/// one thread, so that is every child), else by looking through every `/proc/PID/stat`.
fn children() -> Vec<u32> {
    let me = std::process::id();
    match std::fs::read_to_string(format!("/proc/self/task/{me}/children")) {
        Ok(list) => list
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect(),
        Err(_) => children_of(me),
    }
}

/// The pids whose parent is `parent`, from `/proc/PID/stat`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parent_pid(&stat))
                == Some(parent)
        })
        .collect()
}

/// The parent pid in a `/proc/PID/stat` line: the second field after the command, which is in
/// parentheses and may itself contain spaces and parentheses.
fn parent_pid(stat: &str) -> Option<u32> {
    let after_command = &stat[stat.rfind(')')? + 1..];
    after_command.split_whitespace().nth(1)?.parse().ok()
}

/// Ends the guardian the way the engine ended.
fn mirror(status: ExitStatus) -> ! {
    if let Some(signal) = status.signal() {
        // SAFETY: plain system calls; no core file for a signal the guardian only mirrors.
        unsafe {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            libc::signal(signal, libc::SIG_DFL);
            let only = signal_set(&[signal]);
            libc::sigprocmask(libc::SIG_UNBLOCK, &only, std::ptr::null_mut());
            libc::raise(signal);
        }
        std::process::exit(128 + signal);
    }
    std::process::exit(status.code().unwrap_or(1))
}

fn signal_set(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before any use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: a plain system call on a descriptor we own.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        for report in [
            Report::Started(4242),
            Report::Failed("cannot start /x: No such file".into()),
        ] {
            assert_eq!(Report::parse(&report.to_line()), Some(report));
        }
        assert_eq!(
            Report::parse(&Report::Failed("two\nlines".into()).to_line()),
            Some(Report::Failed("two lines".into()))
        );
        assert_eq!(Report::parse(""), None);
        assert_eq!(Report::parse("started x\n"), None);
    }

    #[test]
    fn signals_are_forwarded_killed_on_or_reaped() {
        assert_eq!(respond(libc::SIGTERM), Response::Forward(libc::SIGTERM));
        assert_eq!(respond(libc::SIGINT), Response::Forward(libc::SIGINT));
        assert_eq!(respond(KILL_NOW), Response::KillAll);
        assert_eq!(respond(libc::SIGCHLD), Response::Reap);
        assert_eq!(respond(libc::SIGWINCH), Response::Ignore);
        // A hand-off or reload signal meant for shims must not reach (and kill) the engine.
        assert_eq!(respond(libc::SIGUSR1), Response::Ignore);
        assert_eq!(respond(libc::SIGHUP), Response::Ignore);
    }

    #[test]
    fn parent_pid_survives_odd_command_names() {
        assert_eq!(parent_pid("12 (sleep) S 7 12 12 0"), Some(7));
        assert_eq!(parent_pid("12 (a) b) (c) S 99 12 12 0"), Some(99));
        assert_eq!(parent_pid("garbage"), None);
    }
}
