//! `engine-shim step-down --pid`: SIGUSR1 to one engine-shim, and to nothing else.
//!
//! kill(2) gives special meanings to pids that are not positive (-1: every process we may signal,
//! 0: our own process group, -N: process group N), and any other process dies of SIGUSR1's default
//! action. So the pid must be positive and name a running engine-shim. The signal goes through a
//! pidfd opened *before* the check, so if the pid is recycled meanwhile the signal fails (the
//! process the pidfd names is gone) instead of reaching the newcomer.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use rustix::process::{Pid, PidfdFlags, Signal};

/// The file name of the binary, as `/proc/PID/exe` shows it.
const NAME: &str = "engine-shim";

/// Why no signal was sent.
#[derive(Debug, PartialEq, Eq)]
pub enum StepDownPidError {
    /// The pid does not name an engine-shim (exit code 2: the operator gave the wrong pid).
    Refused(String),
    /// The pid names an engine-shim that could not be signalled (exit code 1).
    Failed(String),
}

/// Positive pids only: the others address many processes at once.
pub fn check_pid(pid: i32) -> Result<Pid, StepDownPidError> {
    let refused = |what: &str| {
        StepDownPidError::Refused(format!(
            "--pid {pid} would signal {what}; give the pid of one engine-shim \
             (or prefer --control-socket PATH, which also waits for the hand-off)"
        ))
    };
    match pid {
        -1 => Err(refused("every process this user may signal")),
        0 => Err(refused("this command's own process group")),
        _ if pid < 0 => Err(refused(&format!(
            "every process of process group {}",
            pid.unsigned_abs()
        ))),
        _ => Ok(Pid::from_raw(pid).expect("a positive pid")),
    }
}

/// What a process is, as far as /proc tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The executable (`/proc/PID/exe`), when readable.
    Exe(PathBuf),
    /// `argv[0]` (`/proc/PID/cmdline`), when the executable is not readable (another user's
    /// process); empty for kernel threads and zombies.
    Argv0(PathBuf),
}

/// True if the process runs the engine-shim binary. After an upgrade replaced the binary the link
/// reads `…/engine-shim (deleted)`.
pub fn is_engine_shim(identity: &Identity) -> bool {
    let name = match identity {
        Identity::Exe(path) | Identity::Argv0(path) => path.file_name(),
    };
    name.is_some_and(|name| {
        name == OsStr::new(NAME) || name == OsStr::new(&format!("{NAME} (deleted)"))
    })
}

/// Reads `pid`'s identity from `proc` (normally `/proc`): its executable, else its argv[0].
pub fn identify(proc: &Path, pid: Pid) -> io::Result<Identity> {
    let dir = proc.join(pid.as_raw_nonzero().to_string());
    match std::fs::read_link(dir.join("exe")) {
        Ok(exe) => Ok(Identity::Exe(exe)),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => Err(e),
        // Another user's process (EACCES) or one without an executable (kernel thread, zombie).
        Err(_) => {
            let cmdline = std::fs::read(dir.join("cmdline"))?;
            let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
            Ok(Identity::Argv0(PathBuf::from(
                String::from_utf8_lossy(argv0).into_owned(),
            )))
        }
    }
}

/// True if `pid` is an engine's guardian (`engine-shim __guardian …`): the same binary as a shim,
/// but not one to hand off.
pub fn is_guardian(proc: &Path, pid: Pid) -> bool {
    let cmdline = proc.join(pid.as_raw_nonzero().to_string()).join("cmdline");
    std::fs::read(cmdline).is_ok_and(|cmdline| {
        cmdline.split(|&b| b == 0).nth(1) == Some(crate::guardian::SUBCOMMAND.as_bytes())
    })
}

/// Sends SIGUSR1 to `pid` if it is an engine-shim.
pub fn send_step_down(pid: i32) -> Result<String, StepDownPidError> {
    let target = check_pid(pid)?;
    let gone = || StepDownPidError::Refused(format!("no process with pid {pid}"));
    // Opened first: from here on the signal can only reach the process we are about to check.
    let pidfd = match rustix::process::pidfd_open(target, PidfdFlags::empty()) {
        Ok(fd) => Some(fd),
        Err(rustix::io::Errno::SRCH) => return Err(gone()),
        // Kernels before 5.3: fall back to kill(2), with the small recycling window it has.
        Err(rustix::io::Errno::NOSYS) => None,
        Err(e) => {
            return Err(StepDownPidError::Failed(format!(
                "cannot open pid {pid}: {e}"
            )))
        }
    };
    let identity = identify(Path::new("/proc"), target).map_err(|_| gone())?;
    if !is_engine_shim(&identity) {
        let what = match &identity {
            Identity::Exe(path) => path.display().to_string(),
            Identity::Argv0(path) if path.as_os_str().is_empty() => {
                "a process without a command line (a kernel thread or a zombie)".to_string()
            }
            Identity::Argv0(path) => path.display().to_string(),
        };
        return Err(StepDownPidError::Refused(format!(
            "pid {pid} is not an engine-shim (it is {what})"
        )));
    }
    if is_guardian(Path::new("/proc"), target) {
        return Err(StepDownPidError::Refused(format!(
            "pid {pid} is the guardian of an engine, not an engine-shim instance; give the pid of \
             the engine-shim it runs under (its parent)"
        )));
    }
    let sent = match &pidfd {
        Some(fd) => rustix::process::pidfd_send_signal(fd, Signal::USR1),
        None => rustix::process::kill_process(target, Signal::USR1),
    };
    match sent {
        Ok(()) => Ok(format!(
            "sent SIGUSR1 to engine-shim pid {pid}; its log says when the hand-off is done"
        )),
        Err(rustix::io::Errno::SRCH) => Err(gone()),
        Err(e) => Err(StepDownPidError::Failed(format!(
            "cannot signal pid {pid}: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(pid: i32) -> String {
        match check_pid(pid) {
            Err(StepDownPidError::Refused(message)) => message,
            other => panic!("{pid}: {other:?}"),
        }
    }

    #[test]
    fn only_positive_pids_are_taken() {
        assert!(refused(-1).contains("every process"));
        assert!(refused(0).contains("own process group"));
        assert!(refused(-42).contains("process group 42"));
        assert!(refused(i32::MIN).contains("process group 2147483648"));
        assert_eq!(check_pid(42).unwrap().as_raw_nonzero().get(), 42);
    }

    #[test]
    fn recognises_the_engine_shim_binary_even_after_an_upgrade() {
        let exe = |p: &str| Identity::Exe(PathBuf::from(p));
        assert!(is_engine_shim(&exe("/usr/bin/engine-shim")));
        assert!(is_engine_shim(&exe("/usr/bin/engine-shim (deleted)")));
        assert!(is_engine_shim(&Identity::Argv0("engine-shim".into())));
        assert!(!is_engine_shim(&exe("/sbin/init")));
        assert!(!is_engine_shim(&exe("/usr/bin/engine-shim-old")));
        assert!(!is_engine_shim(&Identity::Argv0(PathBuf::new())));
    }

    #[test]
    fn identifies_this_process_and_refuses_it() {
        let me = Pid::from_raw(std::process::id() as i32).unwrap();
        let identity = identify(Path::new("/proc"), me).unwrap();
        assert_eq!(identity, Identity::Exe(std::env::current_exe().unwrap()));
        let message = match send_step_down(std::process::id() as i32) {
            Err(StepDownPidError::Refused(message)) => message,
            other => panic!("{other:?}"),
        };
        assert!(
            message.contains("is not an engine-shim (it is /"),
            "{message}"
        );
    }
}
