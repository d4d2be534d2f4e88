//! Who holds the lock: written into the lock itself so a waiting shim can tell the operator whom it
//! waits for, instead of a bare "lock busy".

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Who holds (or wants) the lock.
///
/// The holder writes this into the lock when it gets it and clears it before giving the lock back,
/// so a waiter reads the current holder. A holder that died without clearing it leaves stale
/// information behind, but then the lock itself is free: the next acquisition gets it at once and
/// overwrites it, so a waiter never reports a dead holder for long.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HolderInfo {
    pub pid: u32,
    pub host: String,
    /// The version of the engine the holder is about to run.
    pub engine_version: String,
    /// When the holder got the lock (or, before that, asked for it), in wall-clock milliseconds.
    pub since_unix_ms: u64,
    /// The lease's epoch (PostgreSQL lease and dual locks): it grows with every change of holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// When the holder's lease runs out unless renewed, by the database's clock (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

impl HolderInfo {
    /// This process, on this host, now.
    pub fn me(engine_version: &str) -> Self {
        let uname = rustix::system::uname();
        HolderInfo {
            pid: std::process::id(),
            host: uname.nodename().to_string_lossy().into_owned(),
            engine_version: engine_version.to_string(),
            since_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64),
            epoch: None,
            expires_at: None,
        }
    }
}

/// `pid 1234 on host-a, engine 1.0.0, since 2026-11-22T10:00:00Z`, then `, epoch 7, lease until
/// 2026-11-22T10:00:05.250Z` when known: the words a waiting line uses.
impl fmt::Display for HolderInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = UNIX_EPOCH + Duration::from_millis(self.since_unix_ms);
        write!(
            f,
            "pid {} on {}, engine {}, since {}",
            self.pid,
            self.host,
            self.engine_version,
            humantime::format_rfc3339_seconds(since)
        )?;
        if let Some(epoch) = self.epoch {
            write!(f, ", epoch {epoch}")?;
        }
        if let Some(expires_at) = &self.expires_at {
            write!(f, ", lease until {expires_at}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_pid_host_version_and_utc_time() {
        let holder = HolderInfo {
            pid: 1234,
            host: "host-a".into(),
            engine_version: "1.0.0".into(),
            // 2026-11-22T10:00:00.750Z: milliseconds are cut, not rounded.
            since_unix_ms: 1_795_341_600_750,
            epoch: None,
            expires_at: None,
        };
        assert_eq!(
            holder.to_string(),
            "pid 1234 on host-a, engine 1.0.0, since 2026-11-22T10:00:00Z"
        );
    }

    #[test]
    fn display_adds_the_epoch_and_expiry_when_known() {
        let holder = HolderInfo {
            pid: 1234,
            host: "host-a".into(),
            engine_version: "1.0.0".into(),
            since_unix_ms: 1_795_341_600_750,
            epoch: Some(7),
            expires_at: Some("2026-11-22T10:00:05.250Z".into()),
        };
        assert_eq!(
            holder.to_string(),
            "pid 1234 on host-a, engine 1.0.0, since 2026-11-22T10:00:00Z, epoch 7, lease until \
             2026-11-22T10:00:05.250Z"
        );
    }

    #[test]
    fn json_round_trips() {
        let holder = HolderInfo {
            pid: 7,
            host: "validator-1".into(),
            engine_version: "1.1.0".into(),
            since_unix_ms: 42,
            epoch: None,
            expires_at: None,
        };
        // What the file lock writes, and what shims from before epochs existed wrote, unchanged.
        let json = serde_json::to_string(&holder).unwrap();
        assert_eq!(
            json,
            r#"{"pid":7,"host":"validator-1","engine_version":"1.1.0","since_unix_ms":42}"#
        );
        assert_eq!(serde_json::from_str::<HolderInfo>(&json).unwrap(), holder);
        let with_epoch = HolderInfo {
            epoch: Some(3),
            expires_at: Some("2026-11-22T10:00:05Z".into()),
            ..holder
        };
        let json = serde_json::to_string(&with_epoch).unwrap();
        assert_eq!(
            serde_json::from_str::<HolderInfo>(&json).unwrap(),
            with_epoch
        );
    }

    #[test]
    fn me_is_this_process_on_this_host() {
        let me = HolderInfo::me("1.2.3");
        assert_eq!(me.pid, std::process::id());
        assert!(!me.host.is_empty());
        assert_eq!(me.engine_version, "1.2.3");
        assert!(me.since_unix_ms > 0);
    }
}
