//! Which lock to use: the `--lock` value and its documented default.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::pg_config::{postgres_url, PgLockConfig, PgOptions, PASSWORD_ENV, PASSWORD_FILE_ENV};

/// Chainflip engine's default `--config-root`: the directory both engine packages on a host share.
pub const DEFAULT_CONFIG_ROOT: &str = "/etc/chainflip";

/// The lock file's name inside the lock directory.
pub const LOCK_FILE_NAME: &str = "engine-shim.lock";

/// The engine flag naming its config root (Chainflip's `--config-root DIR`).
const CONFIG_ROOT_FLAG: &str = "--config-root";

/// Its short form (Chainflip's `-c DIR`).
const CONFIG_ROOT_SHORT: &str = "-c";

/// The environment variable the engine reads its config root from when no flag names it.
pub const CONFIG_ROOT_ENV: &str = "CF_CONFIG_ROOT";

/// Which lock keeps engines on one host (or one data directory) from running at the same time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockSpec {
    /// No lock: for a shim that is alone by construction (one container, one pod).
    None,
    /// An flock on this file; every shim that shares a data directory must name the same file.
    File(PathBuf),
    /// A lock in a PostgreSQL database, for shims on several hosts (primary and secondary).
    Postgres(Box<PgLockConfig>),
}

impl LockSpec {
    /// The lock used when `--lock` is not given: `file:<DIR>/engine-shim.lock`.
    ///
    /// DIR is `lock_dir` if given; else the engine's own config root, found as the engine finds
    /// it, because two engine packages sharing data belong to one config root: its arguments
    /// first (`--config-root DIR`, `--config-root=DIR`, `-c DIR`, `-cDIR`, `-c=DIR`, the forms
    /// clap accepts), then `env_config_root` (the shim's `CF_CONFIG_ROOT`, which the engine
    /// inherits; empty counts as unset, as for clap), then Chainflip's default, `/etc/chainflip`.
    /// So two shims wrapping the two engine packages of a host find the same lock without any flag.
    pub fn default_for(
        lock_dir: Option<&Path>,
        engine_args: &[String],
        env_config_root: Option<&Path>,
    ) -> LockSpec {
        let dir = lock_dir
            .map(Path::to_path_buf)
            .or_else(|| config_root(engine_args))
            .or_else(|| {
                env_config_root
                    .filter(|dir| !dir.as_os_str().is_empty())
                    .map(Path::to_path_buf)
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_ROOT));
        LockSpec::File(dir.join(LOCK_FILE_NAME))
    }

    /// Parses a `--lock` value; a PostgreSQL URL takes the mode, name, timings and password from
    /// `options` (the `--lock-mode`, `--lock-name`, `--lease`, `--renew` flags, their config keys,
    /// and [`super::Password::from_env`]). `none` and `file:PATH` ignore `options`.
    pub fn parse_with(text: &str, options: &PgOptions) -> Result<LockSpec, LockSpecError> {
        let text = text.trim();
        if text == "none" {
            return Ok(LockSpec::None);
        }
        if let Some(path) = text.strip_prefix("file:") {
            return match path {
                "" => Err(LockSpecError::EmptyPath),
                path => Ok(LockSpec::File(PathBuf::from(path))),
            };
        }
        if LockSpec::is_postgres(text) {
            return PgLockConfig::new(text, options)
                .map(|config| LockSpec::Postgres(Box::new(config)));
        }
        Err(LockSpecError::Unknown(LockSpec::shown_safely(text)))
    }

    /// Whether a `--lock` value names a PostgreSQL lock, however its scheme is spelt and spaced
    /// (it then takes a password from the environment).
    pub fn is_postgres(text: &str) -> bool {
        postgres_url(text).is_some()
    }

    /// A `--lock` value as a message may repeat it: a URL-like value is cut to its scheme, since
    /// what follows may hold a password.
    pub fn shown_safely(text: &str) -> String {
        let text = text.trim();
        match text.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…"),
            None => text.to_string(),
        }
    }
}

/// The first `--config-root` value in the engine's arguments, in either of clap's spellings.
fn config_root(args: &[String]) -> Option<PathBuf> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let value = if arg == CONFIG_ROOT_FLAG || arg == CONFIG_ROOT_SHORT {
            args.next().map(String::as_str)
        } else if let Some(rest) = arg.strip_prefix(CONFIG_ROOT_FLAG) {
            rest.strip_prefix('=')
        } else {
            // `-cDIR` and `-c=DIR`; `--c…` is another long flag, not this one.
            arg.strip_prefix(CONFIG_ROOT_SHORT)
                .filter(|_| !arg.starts_with("--"))
                .map(|rest| rest.strip_prefix('=').unwrap_or(rest))
        };
        match value {
            Some(dir) if !dir.is_empty() => return Some(PathBuf::from(dir)),
            _ => {}
        }
    }
    None
}

/// Why a `--lock` value (or a PostgreSQL lock option) was refused; each message names the fix.
/// None of them repeats a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockSpecError {
    #[error(
        "lock `file:` names no path: use file:PATH, e.g. file:/etc/chainflip/engine-shim.lock"
    )]
    EmptyPath,
    #[error("unknown lock `{0}`: use `none`, `file:PATH` or `postgres://USER@HOST:PORT/DATABASE`")]
    Unknown(String),
    /// The URL itself is not repeated: it carries the password.
    #[error(
        "the PostgreSQL URL contains a password, which any local user could read with `ps`: \
         remove it from the URL and put it in {PASSWORD_ENV}, or in a file named by \
         {PASSWORD_FILE_ENV}"
    )]
    PasswordInUrl,
    #[error("invalid PostgreSQL lock URL: {0}: use postgres://USER@HOST:PORT/DATABASE")]
    BadPostgresUrl(String),
    #[error(
        "the PostgreSQL lock does not speak TLS (sslmode=require): reach the database over a \
         private network, a unix socket or a tunnel, and drop sslmode=require"
    )]
    TlsNotSupported,
    #[error("unknown lock mode `{0}`: use lease, advisory or dual")]
    UnknownMode(String),
    #[error("invalid lock name: {0}: use a short label such as `engine-shim` or `validator-1`")]
    BadLockName(String),
    /// `--lease` / `--renew` out of bounds; the message says which bound.
    #[error("{0}")]
    BadTiming(String),
    #[error("cannot read the database password from {}: {error}", path.display())]
    PasswordFile { path: PathBuf, error: String },
    #[error("both {PASSWORD_ENV} and {PASSWORD_FILE_ENV} are set: keep only one")]
    PasswordTwice,
    #[error("{PASSWORD_ENV} is not valid UTF-8")]
    PasswordNotUtf8,
}

impl FromStr for LockSpec {
    type Err = LockSpecError;

    /// `none`, `file:PATH` (PATH absolute, or relative to the shim's working directory), or a
    /// PostgreSQL URL with the default options and the password from the environment (use
    /// [`LockSpec::parse_with`] to pass options).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let options = if LockSpec::is_postgres(s) {
            PgOptions::from_env()?
        } else {
            PgOptions::default()
        };
        LockSpec::parse_with(s, &options)
    }
}

/// For `none` and `file:`, the same text [`FromStr`] accepts, so a logged spec can be pasted back
/// as `--lock`; for PostgreSQL, the URL (which holds no password) followed by the lock's mode,
/// name and timings.
impl fmt::Display for LockSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockSpec::None => f.write_str("none"),
            LockSpec::File(path) => write!(f, "file:{}", path.display()),
            LockSpec::Postgres(config) => config.fmt(f),
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
            "unknown lock `/var/lock/engine.lock`: use `none`, `file:PATH` or \
             `postgres://USER@HOST:PORT/DATABASE`"
        );
        assert!("NONE".parse::<LockSpec>().is_err());
    }

    #[test]
    fn a_misspelt_url_is_not_echoed_past_its_scheme() {
        let err = "postgress://shim:secret@db/locks"
            .parse::<LockSpec>()
            .unwrap_err();
        assert_eq!(err, LockSpecError::Unknown("postgress://…".into()));
        assert!(!err.to_string().contains("secret"));
    }

    #[test]
    fn postgres_urls_take_the_options_and_refuse_a_password() {
        let options = PgOptions {
            name: "validator-7".into(),
            ..PgOptions::default()
        };
        match LockSpec::parse_with(" postgres://shim@db:5432/locks ", &options) {
            Ok(LockSpec::Postgres(config)) => {
                assert_eq!(config.url(), "postgres://shim@db:5432/locks");
                assert_eq!(config.name(), "validator-7");
            }
            other => panic!("expected a PostgreSQL lock, got {other:?}"),
        }
        for url in [
            "postgres://shim:secret@db/locks",
            "postgresql://shim:secret@db/locks",
        ] {
            let err = LockSpec::parse_with(url, &options).unwrap_err();
            assert_eq!(err, LockSpecError::PasswordInUrl);
            assert!(!err.to_string().contains("secret"));
        }
        // The options mean nothing to the other locks.
        assert_eq!(LockSpec::parse_with("none", &options), Ok(LockSpec::None));
    }

    #[test]
    fn any_spelling_of_a_postgres_url_is_one_and_a_password_in_it_is_never_shown() {
        let options = PgOptions::default();
        for url in [
            " POSTGRES://shim:s3cret@127.0.0.1:1/locks",
            "PostgreSQL://shim:s3cret@db/locks",
            "postgres://shim:s3cret@db/locks ",
        ] {
            assert!(LockSpec::is_postgres(url), "{url}");
            let err = LockSpec::parse_with(url, &options).unwrap_err();
            assert_eq!(err, LockSpecError::PasswordInUrl, "{url}");
            assert!(!LockSpec::shown_safely(url).contains("s3cret"));
        }
        match LockSpec::parse_with(" POSTGRES://shim@db/locks", &options) {
            Ok(LockSpec::Postgres(config)) => assert_eq!(config.url(), "postgres://shim@db/locks"),
            other => panic!("expected a PostgreSQL lock, got {other:?}"),
        }
        assert_eq!(LockSpec::shown_safely(" file:/x "), "file:/x");
        assert_eq!(
            LockSpec::shown_safely("MySQL://shim:s3cret@db"),
            "MySQL://…"
        );
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
            LockSpec::default_for(None, &args(&["--p2p.port", "8078"]), None),
            LockSpec::File("/etc/chainflip/engine-shim.lock".into())
        );
    }

    #[test]
    fn default_follows_the_engines_config_root_in_every_form_clap_accepts() {
        let expected = LockSpec::File("/srv/cf/engine-shim.lock".into());
        for engine_args in [
            &["--config-root", "/srv/cf", "-v"][..],
            &["-v", "--config-root=/srv/cf"],
            &["-c", "/srv/cf"],
            &["--p2p.port", "8078", "-c/srv/cf"],
            &["-c=/srv/cf"],
        ] {
            assert_eq!(
                LockSpec::default_for(None, &args(engine_args), None),
                expected,
                "{engine_args:?}"
            );
        }
        // A flag without its value, or a look-alike flag, is not a config root.
        let none = LockSpec::default_for(None, &[], None);
        for engine_args in [
            &["--config-root"][..],
            &["-c"],
            &["--config-rooted=/x"],
            &["--cache", "/x"],
            &["--config-root="],
        ] {
            assert_eq!(
                LockSpec::default_for(None, &args(engine_args), None),
                none,
                "{engine_args:?}"
            );
        }
    }

    #[test]
    fn cf_config_root_counts_when_no_engine_arg_names_a_root() {
        let env = Some(Path::new("/from/env"));
        assert_eq!(
            LockSpec::default_for(None, &args(&["--p2p.port", "8078"]), env),
            LockSpec::File("/from/env/engine-shim.lock".into())
        );
        // The engine's own flag wins over the environment, as in the engine.
        assert_eq!(
            LockSpec::default_for(None, &args(&["-c", "/srv/cf"]), env),
            LockSpec::File("/srv/cf/engine-shim.lock".into())
        );
        // Set but empty is unset.
        assert_eq!(
            LockSpec::default_for(None, &[], Some(Path::new(""))),
            LockSpec::File("/etc/chainflip/engine-shim.lock".into())
        );
    }

    #[test]
    fn lock_dir_wins_over_the_config_root() {
        assert_eq!(
            LockSpec::default_for(
                Some(Path::new("/run/engine-shim")),
                &args(&["--config-root", "/srv/cf"]),
                Some(Path::new("/from/env"))
            ),
            LockSpec::File("/run/engine-shim/engine-shim.lock".into())
        );
    }
}
