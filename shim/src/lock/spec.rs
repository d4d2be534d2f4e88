//! Which lock to use: the `--lock` value and its documented default.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Chainflip engine's default `--config-root`: the directory both engine packages on a host share.
pub const DEFAULT_CONFIG_ROOT: &str = "/etc/chainflip";

/// The lock file's name inside the lock directory.
pub const LOCK_FILE_NAME: &str = "engine-shim.lock";

/// The engine flag naming its config root (Chainflip's `--config-root DIR`).
const CONFIG_ROOT_FLAG: &str = "--config-root";

/// Which lock keeps engines on one host (or one data directory) from running at the same time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockSpec {
    /// No lock: for a shim that is alone by construction (one container, one pod).
    None,
    /// An flock on this file; every shim that shares a data directory must name the same file.
    File(PathBuf),
}

impl LockSpec {
    /// The lock used when `--lock` is not given: `file:<DIR>/engine-shim.lock`.
    ///
    /// DIR is `lock_dir` if given; else the engine's own config root (`--config-root DIR` or
    /// `--config-root=DIR` among its arguments), because two engine packages sharing data belong
    /// to one config root; else Chainflip's default config root, `/etc/chainflip`. So two shims
    /// wrapping the two engine packages of a host find the same lock without any flag.
    pub fn default_for(lock_dir: Option<&Path>, engine_args: &[String]) -> LockSpec {
        let dir = lock_dir
            .map(Path::to_path_buf)
            .or_else(|| config_root(engine_args))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_ROOT));
        LockSpec::File(dir.join(LOCK_FILE_NAME))
    }
}

/// The first `--config-root` value in the engine's arguments, in either of clap's spellings.
fn config_root(args: &[String]) -> Option<PathBuf> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let value = if arg == CONFIG_ROOT_FLAG {
            args.next().map(String::as_str)
        } else {
            arg.strip_prefix(CONFIG_ROOT_FLAG)
                .and_then(|rest| rest.strip_prefix('='))
        };
        match value {
            Some(dir) if !dir.is_empty() => return Some(PathBuf::from(dir)),
            _ => {}
        }
    }
    None
}

/// Why a `--lock` value was refused; the message lists the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockSpecError {
    /// A PostgreSQL URL. The URL itself is not repeated: it may carry a password.
    #[error("PostgreSQL locks are not supported yet: use --lock file:PATH or --lock none")]
    PostgresNotSupported,
    #[error(
        "lock `file:` names no path: use file:PATH, e.g. file:/etc/chainflip/engine-shim.lock"
    )]
    EmptyPath,
    #[error("unknown lock `{0}`: use `none` or `file:PATH`")]
    Unknown(String),
}

impl FromStr for LockSpec {
    type Err = LockSpecError;

    /// `none` or `file:PATH` (PATH absolute, or relative to the shim's working directory).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "none" {
            return Ok(LockSpec::None);
        }
        if let Some(path) = s.strip_prefix("file:") {
            return match path {
                "" => Err(LockSpecError::EmptyPath),
                path => Ok(LockSpec::File(PathBuf::from(path))),
            };
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Err(LockSpecError::PostgresNotSupported);
        }
        Err(LockSpecError::Unknown(s.to_string()))
    }
}

/// The same text [`FromStr`] accepts, so a logged spec can be pasted back as `--lock`.
impl fmt::Display for LockSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockSpec::None => f.write_str("none"),
            LockSpec::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn parses_none_and_files() {
        assert_eq!("none".parse(), Ok(LockSpec::None));
        assert_eq!(
            "file:/var/lock/engine.lock".parse(),
            Ok(LockSpec::File("/var/lock/engine.lock".into()))
        );
        assert_eq!(
            "file:run/engine.lock".parse(),
            Ok(LockSpec::File("run/engine.lock".into()))
        );
    }

    #[test]
    fn refuses_other_forms_naming_the_accepted_ones() {
        assert_eq!("file:".parse::<LockSpec>(), Err(LockSpecError::EmptyPath));
        let err = "/var/lock/engine.lock".parse::<LockSpec>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown lock `/var/lock/engine.lock`: use `none` or `file:PATH`"
        );
        assert!("NONE".parse::<LockSpec>().is_err());
    }

    #[test]
    fn postgres_is_not_supported_yet_and_its_password_is_not_echoed() {
        for url in [
            "postgres://shim:secret@db/locks",
            "postgresql://shim:secret@db/locks",
        ] {
            let err = url.parse::<LockSpec>().unwrap_err();
            assert_eq!(err, LockSpecError::PostgresNotSupported);
            let message = err.to_string();
            assert!(message.contains("not supported yet"), "{message}");
            assert!(!message.contains("secret"), "{message}");
        }
    }

    #[test]
    fn display_round_trips() {
        for spec in [
            LockSpec::None,
            LockSpec::File("/etc/chainflip/engine-shim.lock".into()),
        ] {
            assert_eq!(spec.to_string().parse(), Ok(spec));
        }
    }

    #[test]
    fn default_is_in_chainflips_config_root() {
        assert_eq!(
            LockSpec::default_for(None, &args(&["--p2p.port", "8078"])),
            LockSpec::File("/etc/chainflip/engine-shim.lock".into())
        );
    }

    #[test]
    fn default_follows_the_engines_config_root_in_either_spelling() {
        let expected = LockSpec::File("/srv/cf/engine-shim.lock".into());
        assert_eq!(
            LockSpec::default_for(None, &args(&["--config-root", "/srv/cf", "-v"])),
            expected
        );
        assert_eq!(
            LockSpec::default_for(None, &args(&["-v", "--config-root=/srv/cf"])),
            expected
        );
        // A flag without its value, or a look-alike flag, is not a config root.
        assert_eq!(
            LockSpec::default_for(None, &args(&["--config-root"])),
            LockSpec::default_for(None, &[])
        );
        assert_eq!(
            LockSpec::default_for(None, &args(&["--config-rooted=/x"])),
            LockSpec::default_for(None, &[])
        );
    }

    #[test]
    fn lock_dir_wins_over_the_config_root() {
        assert_eq!(
            LockSpec::default_for(
                Some(Path::new("/run/engine-shim")),
                &args(&["--config-root", "/srv/cf"])
            ),
            LockSpec::File("/run/engine-shim/engine-shim.lock".into())
        );
    }
}
