//! One connection to the lock's database, set up so that failures show quickly on both ends, and
//! the errors it can give sorted into "retry" and "this cannot work, here is the fix".
//!
//! The connection is dedicated to one `Lock`: an advisory lock belongs to its session, so it must
//! never be shared with other work or go through a transaction pooler.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};

use super::pg_config::{PgLockConfig, PASSWORD_ENV, PASSWORD_FILE_ENV};

/// Client-side TCP keepalives: a holder or waiter whose database host vanished learns it in a few
/// seconds rather than after the Linux default of two hours.
const CLIENT_KEEPALIVE_IDLE: Duration = Duration::from_secs(1);
const CLIENT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const CLIENT_KEEPALIVE_RETRIES: u32 = 3;

/// Server-side keepalive probes before the server drops a silent client (see [`server_options`]).
const SERVER_KEEPALIVE_COUNT: u64 = 3;

/// An open session.
pub(super) struct Conn {
    client: Client,
    /// Becomes `Some(why)` when the connection has ended, from either side.
    closed: watch::Receiver<Option<String>>,
    statements: HashMap<&'static str, Statement>,
    /// The `application_name` last set, so it is set once per holder.
    app_name: Option<String>,
}

impl Conn {
    /// Connects, giving up after `timeout`.
    pub(super) async fn open(config: &PgLockConfig, timeout: Duration) -> Result<Conn, DbError> {
        let mut connect = config.connect_config().clone();
        let options = match connect.get_options() {
            Some(given) if !given.is_empty() => format!("{given} {}", server_options(config)),
            _ => server_options(config),
        };
        connect
            .options(options)
            .application_name("engine-shim")
            .connect_timeout(timeout)
            .keepalives(true)
            .keepalives_idle(CLIENT_KEEPALIVE_IDLE)
            .keepalives_interval(CLIENT_KEEPALIVE_INTERVAL)
            .keepalives_retries(CLIENT_KEEPALIVE_RETRIES)
            // Give up on a connection whose data went unacknowledged for as long as a holder
            // waits before fencing anyway.
            .tcp_user_timeout((config.lease() / 2).max(Duration::from_millis(1)));
        let (client, connection) = tokio::time::timeout(timeout, connect.connect(NoTls))
            .await
            .map_err(|_| DbError::timeout("connecting", timeout))?
            .map_err(|err| DbError::from_pg(&err))?;
        let (closed_tx, closed) = watch::channel(None);
        tokio::spawn(async move {
            let why = match connection.await {
                Ok(()) => "the server closed the connection".to_string(),
                Err(err) => DbError::from_pg(&err).message,
            };
            closed_tx.send_replace(Some(why));
        });
        Ok(Conn {
            client,
            closed,
            statements: HashMap::new(),
            app_name: None,
        })
    }

    /// Why the connection ended, if it has.
    pub(super) fn closed_reason(&self) -> Option<String> {
        self.closed.borrow().clone()
    }

    /// Resolves when the connection ends, with why. Never resolves while it is open.
    pub(super) async fn closed(&mut self) -> String {
        match self.closed.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => "the connection task ended".to_string(),
        }
    }

    /// Names this session in `pg_stat_activity` (and so to waiting shims) after its holder.
    pub(super) async fn set_app_name(&mut self, name: &str) -> Result<(), DbError> {
        if self.app_name.as_deref() == Some(name) {
            return Ok(());
        }
        self.query_one("SELECT set_config('application_name', $1, false)", &[&name])
            .await?;
        self.app_name = Some(name.to_string());
        Ok(())
    }

    pub(super) async fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, DbError> {
        let statement = self.statement(sql).await?;
        self.client
            .query_opt(&statement, params)
            .await
            .map_err(|err| DbError::from_pg(&err))
    }

    pub(super) async fn query_one(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, DbError> {
        let statement = self.statement(sql).await?;
        self.client
            .query_one(&statement, params)
            .await
            .map_err(|err| DbError::from_pg(&err))
    }

    pub(super) async fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, DbError> {
        let statement = self.statement(sql).await?;
        self.client
            .execute(&statement, params)
            .await
            .map_err(|err| DbError::from_pg(&err))
    }

    /// Runs statements without parameters or results (DDL), in the simple protocol.
    pub(super) async fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|err| DbError::from_pg(&err))
    }

    /// Each statement is prepared once per session: a renewal is then one round trip.
    async fn statement(&mut self, sql: &'static str) -> Result<Statement, DbError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self
            .client
            .prepare(sql)
            .await
            .map_err(|err| DbError::from_pg(&err))?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }
}

/// Session settings sent at connection start (`options`), all of which any user may set.
///
/// - Server-side keepalives and `tcp_user_timeout`: the server drops a session whose client went
///   silent (host dead, network cut) after about one lease instead of two hours, which frees an
///   advisory lock. Never sooner than a lease after the client was last heard: the holder's own
///   kill deadline (`fence.rs`) falls before that, so a holder cut off from the database has
///   stopped its engine by the time the server lets the advisory lock go.
/// - `lock_timeout` and `statement_timeout`: a query stuck behind someone else's row lock fails
///   instead of hanging the holder's renewals.
fn server_options(config: &PgLockConfig) -> String {
    let lease_secs = config.lease().as_secs() + u64::from(config.lease().subsec_nanos() > 0);
    let idle = lease_secs.saturating_sub(SERVER_KEEPALIVE_COUNT).max(1);
    let lease_ms = config.lease().as_millis().max(1);
    let renew_ms = config.renew().as_millis().max(1);
    format!(
        "-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval=1 -c \
         tcp_keepalives_count={SERVER_KEEPALIVE_COUNT} -c tcp_user_timeout={lease_ms} -c \
         lock_timeout={renew_ms} -c statement_timeout={lease_ms}"
    )
}

/// A database error, worded for the operator, and whether retrying can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DbError {
    pub(super) message: String,
    pub(super) kind: ErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorKind {
    /// The database is down, restarting, unreachable or slow: try again later.
    Transient,
    /// Configuration the operator must fix (credentials, database name, privileges): retrying
    /// cannot help. `message` names the fix.
    Fatal,
    /// The lease table is gone (dropped by hand): create it again, then retry.
    MissingTable,
}

impl DbError {
    pub(super) fn timeout(what: &str, after: Duration) -> Self {
        DbError {
            message: format!(
                "{what} took longer than {}",
                humantime::format_duration(after)
            ),
            kind: ErrorKind::Transient,
        }
    }

    pub(super) fn from_pg(err: &tokio_postgres::Error) -> Self {
        let Some(db) = err.as_db_error() else {
            let message = describe(err);
            let kind = if message.contains("password missing") {
                return DbError {
                    message: format!(
                        "the database asks for a password: set {PASSWORD_ENV}, or name a file \
                         holding it in {PASSWORD_FILE_ENV}"
                    ),
                    kind: ErrorKind::Fatal,
                };
            } else {
                ErrorKind::Transient
            };
            return DbError { message, kind };
        };
        let said = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        let code = db.code();
        let (message, kind) = if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            (
                format!(
                    "the database refused the login: {said}: check the user in the URL, the \
                     password in {PASSWORD_ENV} / {PASSWORD_FILE_ENV}, and pg_hba.conf"
                ),
                ErrorKind::Fatal,
            )
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            (
                format!("{said}: create the database, or name an existing one in the URL"),
                ErrorKind::Fatal,
            )
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            (
                format!(
                    "{said}: let this user create the table once (CREATE on the schema) or create \
                     it beforehand as an administrator, and grant it SELECT, INSERT, UPDATE on \
                     table engine_shim_lease"
                ),
                ErrorKind::Fatal,
            )
        } else if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
            (
                format!(
                    "{said}: the database is read-only (a standby?): point the lock at the primary"
                ),
                ErrorKind::Fatal,
            )
        } else if *code == SqlState::UNDEFINED_TABLE {
            (said, ErrorKind::MissingTable)
        } else {
            (said, ErrorKind::Transient)
        };
        DbError { message, kind }
    }
}

/// tokio-postgres says what kind of error it was in `Display` and what happened in the source.
fn describe(err: &tokio_postgres::Error) -> String {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{LockMode, PgOptions};

    #[test]
    fn the_server_drops_a_silent_client_no_sooner_than_a_lease() {
        for (lease_ms, idle) in [(5000, 2), (2000, 1), (10_000, 7), (4500, 2), (500, 1)] {
            let config = PgLockConfig::new(
                "postgres://shim@db/locks",
                &PgOptions {
                    mode: LockMode::Advisory,
                    lease: Duration::from_millis(lease_ms),
                    renew: Duration::from_millis(lease_ms / 4),
                    ..PgOptions::default()
                },
            )
            .unwrap();
            let options = server_options(&config);
            assert!(
                options.contains(&format!("tcp_keepalives_idle={idle} ")),
                "{options}"
            );
            // Keepalives alone: idle + interval × count seconds of silence.
            assert!(
                (idle + SERVER_KEEPALIVE_COUNT) * 1000 >= lease_ms,
                "{options}"
            );
            assert!(
                options.contains(&format!("tcp_user_timeout={lease_ms} ")),
                "{options}"
            );
        }
    }
}
