//! The PostgreSQL lock's settings: which database, which lock in it, how it is held, its timings,
//! and where the password comes from.
//!
//! The password never travels in argv (any local user can read it with `ps`) nor in logs: a URL
//! that carries one is refused, and the password is read from `ENGINE_SHIM_LOCK_PASSWORD` or from a
//! file. Nothing here prints it: [`Password`]'s `Debug` is redacted and `Display` shows the URL as
//! given, which is known to hold none.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::SslMode;

use super::LockSpecError;

/// The lock name used when none is given. Validators sharing one database each pick their own.
pub const DEFAULT_LOCK_NAME: &str = "engine-shim";
/// Default of `--lease`: how long the database keeps a lease without renewal.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);
/// Default of `--renew`: how often the holder renews its lease (or checks its advisory session).
pub const DEFAULT_RENEW: Duration = Duration::from_secs(1);
/// The environment variable holding the database password.
pub const PASSWORD_ENV: &str = "ENGINE_SHIM_LOCK_PASSWORD";
/// The environment variable naming a file whose content is the database password.
pub const PASSWORD_FILE_ENV: &str = "ENGINE_SHIM_LOCK_PASSWORD_FILE";

/// Lock names longer than this are refused: a name is a label, not a document.
const MAX_NAME_CHARS: usize = 200;

/// How the PostgreSQL lock is held (`--lock-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// A row with an expiry, renewed with the database's clock; the holder fences itself before
    /// the expiry. Survives connection drops; takeover after a crash takes one lease.
    #[default]
    Lease,
    /// A session advisory lock: freed the moment the holder's connection ends, so takeover after
    /// a crash is fast; but the session is the lock, so any connection loss loses it.
    Advisory,
    /// Both: the advisory lock first, then the lease; lost when either is.
    Dual,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Lease => "lease",
            LockMode::Advisory => "advisory",
            LockMode::Dual => "dual",
        }
    }

    pub(crate) fn uses_lease(self) -> bool {
        matches!(self, LockMode::Lease | LockMode::Dual)
    }

    pub(crate) fn uses_advisory(self) -> bool {
        matches!(self, LockMode::Advisory | LockMode::Dual)
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LockMode {
    type Err = LockSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "lease" => Ok(LockMode::Lease),
            "advisory" => Ok(LockMode::Advisory),
            "dual" => Ok(LockMode::Dual),
            other => Err(LockSpecError::UnknownMode(other.to_string())),
        }
    }
}

/// The database password. Its `Debug` is redacted and it has no `Display`, so it cannot end up
/// in a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl Password {
    #[cfg(test)]
    pub fn new(password: impl Into<String>) -> Self {
        Password(password.into())
    }

    /// The content of `path`, without its final line break (editors and `echo` add one).
    pub fn from_file(path: &Path) -> Result<Self, LockSpecError> {
        let content = std::fs::read_to_string(path).map_err(|err| LockSpecError::PasswordFile {
            path: path.to_path_buf(),
            error: err.to_string(),
        })?;
        let password = content
            .strip_suffix('\n')
            .map(|p| p.strip_suffix('\r').unwrap_or(p))
            .unwrap_or(&content);
        if password.is_empty() {
            return Err(LockSpecError::PasswordFile {
                path: path.to_path_buf(),
                error: "the file is empty".into(),
            });
        }
        Ok(Password(password.to_string()))
    }

    /// The password from the environment, else from `config_file` (the config file's setting):
    /// `ENGINE_SHIM_LOCK_PASSWORD`, or the file named by `ENGINE_SHIM_LOCK_PASSWORD_FILE`.
    /// `None` when none is given (a database that trusts this host or user needs none).
    pub fn from_env(config_file: Option<&Path>) -> Result<Option<Self>, LockSpecError> {
        Self::resolve(
            std::env::var_os(PASSWORD_ENV),
            std::env::var_os(PASSWORD_FILE_ENV),
            config_file,
        )
    }

    /// [`Password::from_env`] with the environment passed in. Both variables at once are refused
    /// (which one was meant?); either one beats the config file, as the environment beats the
    /// config file everywhere else.
    fn resolve(
        direct: Option<OsString>,
        file: Option<OsString>,
        config_file: Option<&Path>,
    ) -> Result<Option<Self>, LockSpecError> {
        let direct = direct.filter(|v| !v.is_empty());
        let file = file.filter(|v| !v.is_empty()).map(PathBuf::from);
        match (direct, file) {
            (Some(_), Some(_)) => Err(LockSpecError::PasswordTwice),
            (Some(direct), None) => direct
                .into_string()
                .map(|p| Some(Password(p)))
                .map_err(|_| LockSpecError::PasswordNotUtf8),
            (None, Some(path)) => Self::from_file(&path).map(Some),
            (None, None) => config_file.map(Self::from_file).transpose(),
        }
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

/// What the command line and the config file say about a PostgreSQL lock, besides its URL.
/// Ignored for `none` and `file:` locks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    pub mode: LockMode,
    /// Which lock in the database: validators sharing one database each use their own name.
    pub name: String,
    pub lease: Duration,
    pub renew: Duration,
    pub password: Option<Password>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            mode: LockMode::default(),
            name: DEFAULT_LOCK_NAME.to_string(),
            lease: DEFAULT_LEASE,
            renew: DEFAULT_RENEW,
            password: None,
        }
    }
}

impl PgOptions {
    /// The defaults, with the password from the environment (see [`Password::from_env`]).
    pub fn from_env() -> Result<Self, LockSpecError> {
        Ok(PgOptions {
            password: Password::from_env(None)?,
            ..PgOptions::default()
        })
    }
}

/// A validated PostgreSQL lock: where, which, how, and how fast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgLockConfig {
    /// The URL as given; known to carry no password.
    url: String,
    /// The same URL parsed, with the password added.
    connect: tokio_postgres::Config,
    mode: LockMode,
    name: String,
    lease: Duration,
    renew: Duration,
}

impl PgLockConfig {
    /// Checks `url` (`postgres://USER@HOST[:PORT]/DATABASE`, or `postgresql://`) and the options.
    /// The scheme may be in any case and the URL may have spaces around it (see [`postgres_url`]).
    pub fn new(url: &str, options: &PgOptions) -> Result<Self, LockSpecError> {
        let Some(url) = postgres_url(url) else {
            return Err(LockSpecError::BadPostgresUrl(
                "it must start with postgres:// or postgresql://".into(),
            ));
        };
        let url = url.as_str();
        // Checked on the text first, so that nothing below can echo a password.
        if userinfo_has_password(url) {
            return Err(LockSpecError::PasswordInUrl);
        }
        let mut connect: tokio_postgres::Config = url
            .parse()
            .map_err(|err| LockSpecError::BadPostgresUrl(describe_parse_error(&err)))?;
        if connect.get_password().is_some() {
            return Err(LockSpecError::PasswordInUrl);
        }
        if connect.get_hosts().is_empty() {
            return Err(LockSpecError::BadPostgresUrl("it names no host".into()));
        }
        if connect.get_user().is_none() {
            return Err(LockSpecError::BadPostgresUrl("it names no user".into()));
        }
        if connect.get_ssl_mode() == SslMode::Require {
            return Err(LockSpecError::TlsNotSupported);
        }
        // Without TLS, `prefer` would only cost a refused TLS request per connection.
        connect.ssl_mode(SslMode::Disable);
        validate_name(&options.name)?;
        validate_timing(options.lease, options.renew)?;
        if let Some(password) = &options.password {
            connect.password(password.expose());
        }
        Ok(PgLockConfig {
            url: url.to_string(),
            connect,
            mode: options.mode,
            name: options.name.clone(),
            lease: options.lease,
            renew: options.renew,
        })
    }

    /// The URL as given (it holds no password).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn mode(&self) -> LockMode {
        self.mode
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    pub fn renew(&self) -> Duration {
        self.renew
    }

    /// The parsed URL with the password, for connecting.
    pub(crate) fn connect_config(&self) -> &tokio_postgres::Config {
        &self.connect
    }
}

/// `postgres://shim@db:5432/locks (lease lock "engine-shim", lease 5s, renew 1s)`: never a password.
impl fmt::Display for PgLockConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} lock {:?}, lease {}, renew {})",
            self.url,
            self.mode,
            self.name,
            humantime::format_duration(self.lease),
            humantime::format_duration(self.renew)
        )
    }
}

/// `text` as a PostgreSQL URL with its scheme lower-cased, if it is one: spaces around it and the
/// scheme's case (`POSTGRES://`, `PostgreSQL://`) do not matter, as in any URL. `None` for
/// anything else. Every test of "is this a PostgreSQL lock?" goes through here, so that no
/// spelling of a URL that holds a password can be taken for a file name or an unknown value and
/// repeated in a message.
pub(crate) fn postgres_url(text: &str) -> Option<String> {
    let (scheme, rest) = text.trim().split_once("://")?;
    ["postgres", "postgresql"]
        .iter()
        .any(|known| scheme.eq_ignore_ascii_case(known))
        .then(|| format!("{}://{rest}", scheme.to_ascii_lowercase()))
}

/// Whether the URL's user-info part (`user:password@`) has a password, even an empty one.
fn userinfo_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// tokio-postgres names the problem only in the error's source; neither part repeats the URL.
fn describe_parse_error(err: &tokio_postgres::Error) -> String {
    match std::error::Error::source(err) {
        Some(source) => format!("{err}: {source}"),
        None => err.to_string(),
    }
}

fn validate_name(name: &str) -> Result<(), LockSpecError> {
    let problem = if name.is_empty() {
        "it is empty"
    } else if name.chars().count() > MAX_NAME_CHARS {
        "it is longer than 200 characters"
    } else if name.chars().any(char::is_control) {
        "it contains control characters"
    } else {
        return Ok(());
    };
    Err(LockSpecError::BadLockName(problem.into()))
}

/// `renew ≤ lease / 2`: a holder gets at least two renewals in before its own renew deadline
/// (half the lease), and the deadline arithmetic (see `fence.rs`) keeps a margin of one `renew`.
fn validate_timing(lease: Duration, renew: Duration) -> Result<(), LockSpecError> {
    if lease < Duration::from_millis(2) || renew.is_zero() {
        return Err(LockSpecError::BadTiming(format!(
            "--lease ({}) and --renew ({}) must both be positive, and the lease at least 2ms",
            humantime::format_duration(lease),
            humantime::format_duration(renew)
        )));
    }
    if renew.saturating_mul(2) > lease {
        return Err(LockSpecError::BadTiming(format!(
            "--renew {} is more than half of --lease {}: use --renew {} or less, or a longer --lease",
            humantime::format_duration(renew),
            humantime::format_duration(lease),
            humantime::format_duration(lease / 2)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::LockSpec;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn config(url: &str) -> Result<PgLockConfig, LockSpecError> {
        PgLockConfig::new(url, &PgOptions::default())
    }

    #[test]
    fn defaults_are_a_five_second_lease_renewed_every_second() {
        let config = config("postgres://shim@db.internal:5433/locks").unwrap();
        assert_eq!(config.mode(), LockMode::Lease);
        assert_eq!(config.name(), "engine-shim");
        assert_eq!((config.lease(), config.renew()), (S(5), S(1)));
        assert!(config.connect_config().get_password().is_none());
        assert_eq!(config.connect_config().get_user(), Some("shim"));
        assert_eq!(config.connect_config().get_dbname(), Some("locks"));
        assert_eq!(config.connect_config().get_ports(), &[5433]);
        assert_eq!(
            config.to_string(),
            r#"postgres://shim@db.internal:5433/locks (lease lock "engine-shim", lease 5s, renew 1s)"#
        );
    }

    #[test]
    fn both_schemes_and_options_are_taken() {
        let options = PgOptions {
            mode: LockMode::Dual,
            name: "validator-2".into(),
            lease: S(10),
            renew: MS(2500),
            password: Some(Password::new("hunter2")),
        };
        let config = PgLockConfig::new("postgresql://shim@10.0.0.5/locks", &options).unwrap();
        assert_eq!(config.mode(), LockMode::Dual);
        assert_eq!(config.name(), "validator-2");
        assert_eq!((config.lease(), config.renew()), (S(10), MS(2500)));
        assert!(config.connect_config().get_password().is_some());
        assert_eq!(
            config.connect_config().get_password(),
            Some(&b"hunter2"[..])
        );
        assert_eq!(
            config.to_string(),
            r#"postgresql://shim@10.0.0.5/locks (dual lock "validator-2", lease 10s, renew 2s 500ms)"#
        );
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_being_repeated() {
        for url in [
            "postgres://shim:secret@db/locks",
            "postgresql://shim:secret@db:5432/locks",
            "postgres://shim:@db/locks",
            "postgres://shim@db/locks?password=secret",
            "postgres://shim:secret@db:notaport/locks",
        ] {
            let err = config(url).unwrap_err();
            assert_eq!(err, LockSpecError::PasswordInUrl, "{url}");
            let message = err.to_string();
            assert!(!message.contains("secret"), "{message}");
            assert!(message.contains(PASSWORD_ENV), "{message}");
            assert!(message.contains(PASSWORD_FILE_ENV), "{message}");
        }
    }

    #[test]
    fn the_scheme_is_recognised_in_any_case_and_around_spaces() {
        assert_eq!(
            postgres_url(" POSTGRES://shim@db/locks\n").as_deref(),
            Some("postgres://shim@db/locks")
        );
        assert_eq!(
            postgres_url("PostgreSQL://shim@db/locks").as_deref(),
            Some("postgresql://shim@db/locks")
        );
        for other in ["postgress://shim@db", "file:/x", "none", "postgres:/x", ""] {
            assert_eq!(postgres_url(other), None, "{other}");
        }
        let config = config("  POSTGRESQL://shim@db:5432/locks ").unwrap();
        assert_eq!(config.url(), "postgresql://shim@db:5432/locks");
        for url in [
            " POSTGRES://shim:secret@db/locks",
            "PostgreSQL://shim:secret@db/locks",
            "\tpostgres://shim:secret@db/locks",
        ] {
            let err = config_err(url);
            assert_eq!(err, LockSpecError::PasswordInUrl, "{url}");
            assert!(!err.to_string().contains("secret"));
        }
    }

    fn config_err(url: &str) -> LockSpecError {
        PgLockConfig::new(url, &PgOptions::default()).unwrap_err()
    }

    #[test]
    fn an_at_sign_in_the_path_or_query_is_not_user_info() {
        assert!(!userinfo_has_password(
            "postgres://db/locks?application_name=a:b@c"
        ));
        assert!(userinfo_has_password("postgres://u:p@db/x"));
        assert!(!userinfo_has_password("postgres://u@db:5432/x"));
    }

    #[test]
    fn urls_that_cannot_work_are_refused_naming_the_problem() {
        let cases = [
            ("mysql://shim@db/locks", "postgres://"),
            ("postgres://shim@db:port/locks", "port"),
            ("postgres://shim@/locks", "no host"),
            ("postgres://db/locks", "no user"),
        ];
        for (url, needle) in cases {
            let message = config(url).unwrap_err().to_string();
            assert!(message.contains(needle), "{url}: {message}");
            assert!(
                message.contains("postgres://USER@HOST:PORT/DATABASE"),
                "{message}"
            );
        }
        assert_eq!(
            config("postgres://shim@db/locks?sslmode=require"),
            Err(LockSpecError::TlsNotSupported)
        );
    }

    #[test]
    fn renew_must_be_at_most_half_the_lease() {
        let with = |lease, renew| {
            PgLockConfig::new(
                "postgres://shim@db/locks",
                &PgOptions {
                    lease,
                    renew,
                    ..PgOptions::default()
                },
            )
        };
        assert!(with(S(5), MS(2500)).is_ok());
        assert!(with(S(2), S(1)).is_ok());
        let message = with(S(5), MS(2501)).unwrap_err().to_string();
        assert_eq!(
            message,
            "--renew 2s 501ms is more than half of --lease 5s: use --renew 2s 500ms or less, or a \
             longer --lease"
        );
        assert!(matches!(
            with(S(5), Duration::ZERO),
            Err(LockSpecError::BadTiming(_))
        ));
        assert!(matches!(
            with(Duration::ZERO, Duration::ZERO),
            Err(LockSpecError::BadTiming(_))
        ));
    }

    #[test]
    fn lock_names_must_be_short_printable_labels() {
        let with = |name: &str| {
            PgLockConfig::new(
                "postgres://shim@db/locks",
                &PgOptions {
                    name: name.into(),
                    ..PgOptions::default()
                },
            )
        };
        assert!(with("validator-1 (mainnet)").is_ok());
        for bad in ["", "a\nb", &"x".repeat(201)] {
            assert!(
                matches!(with(bad), Err(LockSpecError::BadLockName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn modes_parse_and_print_as_their_flag_values() {
        for mode in [LockMode::Lease, LockMode::Advisory, LockMode::Dual] {
            assert_eq!(mode.to_string().parse::<LockMode>(), Ok(mode));
            let value = clap::ValueEnum::to_possible_value(&mode).unwrap();
            assert_eq!(value.get_name(), mode.as_str());
        }
        assert!("Lease".parse::<LockMode>().is_err());
        #[derive(serde::Deserialize)]
        struct File {
            mode: LockMode,
        }
        let file: File = toml::from_str("mode = \"dual\"").unwrap();
        assert_eq!(file.mode, LockMode::Dual);
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let options = PgOptions {
            password: Some(Password::new("hunter2")),
            ..PgOptions::default()
        };
        let config = PgLockConfig::new("postgres://shim@db/locks", &options).unwrap();
        for text in [
            format!("{options:?}"),
            format!("{config:?}"),
            format!("{config}"),
            format!("{:?}", LockSpec::Postgres(Box::new(config.clone()))),
            LockSpec::Postgres(Box::new(config)).to_string(),
        ] {
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn the_password_comes_from_the_variable_or_a_file_but_not_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "from-file\r\n").unwrap();
        let config_file = dir.path().join("config-password");
        std::fs::write(&config_file, "from-config\n").unwrap();
        let os = |s: &str| Some(OsString::from(s));

        assert_eq!(
            Password::resolve(os("direct"), None, Some(&config_file)),
            Ok(Some(Password::new("direct")))
        );
        assert_eq!(
            Password::resolve(None, Some(file.clone().into()), Some(&config_file)),
            Ok(Some(Password::new("from-file")))
        );
        assert_eq!(
            Password::resolve(None, None, Some(&config_file)),
            Ok(Some(Password::new("from-config")))
        );
        // An empty variable counts as unset.
        assert_eq!(Password::resolve(os(""), os(""), None), Ok(None));
        assert_eq!(
            Password::resolve(os("direct"), Some(file.into()), None),
            Err(LockSpecError::PasswordTwice)
        );
    }

    #[test]
    fn an_unreadable_or_empty_password_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let message = Password::from_file(&missing).unwrap_err().to_string();
        assert!(
            message.contains(&missing.display().to_string()),
            "{message}"
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let message = Password::from_file(&empty).unwrap_err().to_string();
        assert!(message.contains("empty"), "{message}");
        // Only one final line break is taken off: the rest is the password.
        let spaced = dir.path().join("spaced");
        std::fs::write(&spaced, " pass word \n\n").unwrap();
        assert_eq!(
            Password::from_file(&spaced),
            Ok(Password::new(" pass word \n"))
        );
    }
}
