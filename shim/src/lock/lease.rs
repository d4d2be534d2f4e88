//! The lease: one row per lock name, whose expiry only the database's clock judges.
//!
//! Every statement compares `expires_at` with the database's `now()` and none with the hosts'
//! clocks, so clock skew between hosts cannot make two holders. A row is taken only when it is
//! absent, expired, or already ours, in one atomic upsert: two takers racing for an expired row
//! serialise on its row lock, and the second sees the first's fresh expiry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::conn::{Conn, DbError};
use super::HolderInfo;

/// The table, created by the first shim that needs it. `acquired_at` (the database's time of the
/// last change of holder) lets waiters say since when the holder has held the lock.
const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS engine_shim_lease (
    name text PRIMARY KEY,
    holder_id text NOT NULL,
    host text,
    pid int,
    engine_version text,
    epoch bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now()
)";

const TABLE_EXISTS: &str = "SELECT to_regclass('engine_shim_lease') IS NOT NULL";

/// Takes the row if it is free, expired or ours; the epoch grows on every change of holder.
const ACQUIRE: &str = "INSERT INTO engine_shim_lease AS l
        (name, holder_id, host, pid, engine_version, epoch, expires_at, acquired_at)
    VALUES ($1, $2, $3, $4, $5, 1, now() + $6::bigint * interval '1 millisecond', now())
    ON CONFLICT (name) DO UPDATE SET
        holder_id = excluded.holder_id,
        host = excluded.host,
        pid = excluded.pid,
        engine_version = excluded.engine_version,
        epoch = CASE WHEN l.holder_id = excluded.holder_id THEN l.epoch ELSE l.epoch + 1 END,
        acquired_at = CASE WHEN l.holder_id = excluded.holder_id AND l.expires_at >= now()
            THEN l.acquired_at ELSE now() END,
        expires_at = excluded.expires_at
    WHERE l.holder_id = excluded.holder_id OR l.expires_at < now()
    RETURNING epoch";

/// Extends our unexpired lease; no row means it is not ours any more.
const RENEW: &str = "UPDATE engine_shim_lease
    SET expires_at = now() + $3::bigint * interval '1 millisecond'
    WHERE name = $1 AND holder_id = $2 AND expires_at >= now()
    RETURNING epoch";

/// Ends our lease now, so the next taker need not wait for it to run out.
const RELEASE: &str = "UPDATE engine_shim_lease SET expires_at = now()
    WHERE name = $1 AND holder_id = $2 AND expires_at > now()";

const HOLDER: &str = "SELECT holder_id, host, pid, engine_version, epoch, expires_at, acquired_at
    FROM engine_shim_lease WHERE name = $1";

/// Who we are in the table, and for how long a lease runs.
#[derive(Debug, Clone)]
pub(super) struct Lease {
    pub(super) name: String,
    pub(super) holder_id: String,
    pub(super) lease: Duration,
}

/// What an acquisition attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Acquire {
    /// The row is ours, with this epoch.
    Got { epoch: u64 },
    /// Someone else holds an unexpired lease (`None` if the row vanished in between).
    Busy { holder: Option<Row> },
}

/// The lease row, as a waiting shim shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Row {
    pub(super) holder_id: String,
    pub(super) info: HolderInfo,
}

impl Lease {
    /// Creates the table if it is missing; a table created meanwhile by another shim is fine.
    pub(super) async fn ensure_table(conn: &mut Conn) -> Result<(), DbError> {
        let exists: bool = conn.query_one(TABLE_EXISTS, &[]).await?.get(0);
        if exists {
            return Ok(());
        }
        match conn.batch(CREATE_TABLE).await {
            Ok(()) => Ok(()),
            // Two shims creating it at once: one of them gets a duplicate-key error on the type.
            Err(err) if conn.query_one(TABLE_EXISTS, &[]).await?.get::<_, bool>(0) => {
                tracing::debug!(
                    "lease table created by someone else meanwhile: {}",
                    err.message
                );
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    pub(super) async fn acquire(
        &self,
        conn: &mut Conn,
        me: &HolderInfo,
    ) -> Result<Acquire, DbError> {
        let pid = i32::try_from(me.pid).unwrap_or(i32::MAX);
        let row = conn
            .query_opt(
                ACQUIRE,
                &[
                    &self.name,
                    &self.holder_id,
                    &me.host,
                    &pid,
                    &me.engine_version,
                    &self.lease_ms(),
                ],
            )
            .await?;
        match row {
            Some(row) => Ok(Acquire::Got {
                epoch: epoch(row.get(0)),
            }),
            None => Ok(Acquire::Busy {
                holder: self.holder(conn).await?,
            }),
        }
    }

    /// `Some(epoch)` if the lease is still ours and now runs a full lease from the database's now.
    pub(super) async fn renew(&self, conn: &mut Conn) -> Result<Option<u64>, DbError> {
        let row = conn
            .query_opt(RENEW, &[&self.name, &self.holder_id, &self.lease_ms()])
            .await?;
        Ok(row.map(|row| epoch(row.get(0))))
    }

    pub(super) async fn release(&self, conn: &mut Conn) -> Result<(), DbError> {
        conn.execute(RELEASE, &[&self.name, &self.holder_id])
            .await?;
        Ok(())
    }

    /// The row as it is now, if there is one.
    pub(super) async fn holder(&self, conn: &mut Conn) -> Result<Option<Row>, DbError> {
        let Some(row) = conn.query_opt(HOLDER, &[&self.name]).await? else {
            return Ok(None);
        };
        let host: Option<String> = row.get(1);
        let pid: Option<i32> = row.get(2);
        let engine_version: Option<String> = row.get(3);
        let expires_at: SystemTime = row.get(5);
        let acquired_at: SystemTime = row.get(6);
        Ok(Some(Row {
            holder_id: row.get(0),
            info: HolderInfo {
                pid: pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                host: host.unwrap_or_default(),
                engine_version: engine_version.unwrap_or_default(),
                since_unix_ms: unix_ms(acquired_at),
                epoch: Some(epoch(row.get(4))),
                expires_at: Some(humantime::format_rfc3339_millis(expires_at).to_string()),
            },
        }))
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }
}

fn epoch(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}
