//! The advisory lock: a PostgreSQL session lock on a key derived from the lock name.
//!
//! The lock lives exactly as long as the session that took it, so a crashed holder frees it the
//! moment its connection closes, and a silently dead one once the server's keepalives give up on
//! it (about one lease: see `conn.rs`). Its holder is found through `pg_locks`, and named by the
//! `application_name` the holder gave its session.

use std::time::{SystemTime, UNIX_EPOCH};

use twox_hash::XxHash64;

use super::conn::{Conn, DbError};
use super::HolderInfo;

/// Prefix of every holder's `application_name`.
const APP_PREFIX: &str = "engine-shim:";

/// PostgreSQL keeps at most this many bytes of an `application_name`.
const MAX_APP_NAME_BYTES: usize = 63;

const TRY_LOCK: &str = "SELECT pg_try_advisory_lock($1)";
const UNLOCK: &str = "SELECT pg_advisory_unlock($1)";

/// Whether this session holds the lock. A successful answer also proves the session is alive,
/// and, unlike `SELECT 1`, it notices a pooler that moved us to another server session.
const HELD: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid = $1 AND objid = $2 AND objsubid = 1)";

const HOLDER: &str = "SELECT a.application_name, a.backend_start
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = $1 AND l.objid = $2 AND l.objsubid = 1";

/// The 64-bit advisory key of a lock name. Stable across versions and hosts: shims built at
/// different times must agree on it. The prefix keeps it apart from other users' keys.
pub(super) fn key(name: &str) -> i64 {
    XxHash64::oneshot(0, format!("engine-shim:{name}").as_bytes()) as i64
}

/// How `pg_locks` shows a bigint key: its high half as `classid`, its low half as `objid`.
fn key_parts(key: i64) -> (u32, u32) {
    let key = key as u64;
    ((key >> 32) as u32, key as u32)
}

/// The session name that tells waiters who holds the lock: `engine-shim:PID:VERSION:HOST`, cut to
/// what PostgreSQL keeps (the host goes last so only it is ever cut).
pub(super) fn app_name(me: &HolderInfo) -> String {
    let mut name = format!("{APP_PREFIX}{}:{}:{}", me.pid, me.engine_version, me.host);
    if name.len() > MAX_APP_NAME_BYTES {
        let mut cut = MAX_APP_NAME_BYTES;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name
}

/// Reads back what [`app_name`] wrote; `None` for a session that is not a shim's.
fn parse_app_name(name: &str, session_start: SystemTime) -> Option<HolderInfo> {
    let mut parts = name.strip_prefix(APP_PREFIX)?.splitn(3, ':');
    let pid = parts.next()?.parse().ok()?;
    let engine_version = parts.next()?.to_string();
    let host = parts.next().unwrap_or_default().to_string();
    Some(HolderInfo {
        pid,
        host,
        engine_version,
        since_unix_ms: session_start
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64),
        epoch: None,
        expires_at: None,
    })
}

/// The lock for one name.
#[derive(Debug, Clone, Copy)]
pub(super) struct Advisory {
    pub(super) key: i64,
}

impl Advisory {
    pub(super) fn new(name: &str) -> Self {
        Advisory { key: key(name) }
    }

    /// Takes the lock if it is free. Never call it while holding: session locks stack, and one
    /// unlock would then not free it.
    pub(super) async fn try_lock(&self, conn: &mut Conn) -> Result<bool, DbError> {
        Ok(conn.query_one(TRY_LOCK, &[&self.key]).await?.get(0))
    }

    pub(super) async fn unlock(&self, conn: &mut Conn) -> Result<(), DbError> {
        conn.query_one(UNLOCK, &[&self.key]).await?;
        Ok(())
    }

    /// Whether this session still holds the lock.
    pub(super) async fn held(&self, conn: &mut Conn) -> Result<bool, DbError> {
        let (classid, objid) = key_parts(self.key);
        Ok(conn.query_one(HELD, &[&classid, &objid]).await?.get(0))
    }

    /// Who holds it, as far as its session name tells; `None` if free or not a shim's session.
    pub(super) async fn holder(&self, conn: &mut Conn) -> Result<Option<HolderInfo>, DbError> {
        let (classid, objid) = key_parts(self.key);
        let row = conn.query_opt(HOLDER, &[&classid, &objid]).await?;
        Ok(row.and_then(|row| {
            let name: Option<String> = row.get(0);
            let start: Option<SystemTime> = row.get(1);
            parse_app_name(&name?, start.unwrap_or(UNIX_EPOCH))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(host: &str) -> HolderInfo {
        HolderInfo {
            pid: 4242,
            host: host.into(),
            engine_version: "1.10.3".into(),
            since_unix_ms: 0,
            epoch: None,
            expires_at: None,
        }
    }

    #[test]
    fn keys_are_stable_and_differ_by_name() {
        // Fixed forever: shims of different versions must find the same lock.
        assert_eq!(key("engine-shim"), key("engine-shim"));
        assert_eq!(
            key("engine-shim"),
            XxHash64::oneshot(0, b"engine-shim:engine-shim") as i64
        );
        assert_ne!(key("validator-1"), key("validator-2"));
    }

    #[test]
    fn key_parts_are_how_pg_locks_shows_a_bigint_key() {
        assert_eq!(key_parts(0x0000_0001_0000_0002), (1, 2));
        assert_eq!(key_parts(-1), (u32::MAX, u32::MAX));
    }

    #[test]
    fn the_session_name_round_trips_and_is_cut_in_the_host() {
        let start = UNIX_EPOCH + std::time::Duration::from_secs(1000);
        let name = app_name(&me("validator-1"));
        assert_eq!(name, "engine-shim:4242:1.10.3:validator-1");
        let parsed = parse_app_name(&name, start).unwrap();
        assert_eq!(
            (
                parsed.pid,
                parsed.engine_version.as_str(),
                parsed.host.as_str()
            ),
            (4242, "1.10.3", "validator-1")
        );
        assert_eq!(parsed.since_unix_ms, 1_000_000);

        let long = app_name(&me(&"h".repeat(100)));
        assert_eq!(long.len(), MAX_APP_NAME_BYTES);
        assert!(parse_app_name(&long, start)
            .unwrap()
            .host
            .starts_with("hhh"));
        let multibyte = app_name(&me(&"é".repeat(40)));
        assert!(multibyte.len() <= MAX_APP_NAME_BYTES);

        assert_eq!(parse_app_name("psql", start), None);
        assert_eq!(parse_app_name("engine-shim:x:1.0.0:h", start), None);
    }
}
