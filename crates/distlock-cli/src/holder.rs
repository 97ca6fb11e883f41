//! How `distlock` labels its locks and describes their holders.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use distlock::HolderInfo;
use serde_json::{Value, json};

/// What `distlock run` stores as the lock's metadata, as JSON, so that
/// holders are described on every backend, including those that do not
/// record the process themselves (Redis, etcd).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CliMetadata {
    /// The process holding the lock (the `distlock` process).
    pub pid: u32,
    /// Its host name.
    pub host: String,
    /// The command's program name (its arguments are left out: they may
    /// hold secrets).
    pub command: String,
}

impl CliMetadata {
    /// The metadata as a JSON object string.
    pub fn to_json(&self) -> String {
        json!({
            "pid": self.pid,
            "host": self.host,
            "command": self.command,
        })
        .to_string()
    }

    /// Reads metadata written by [`to_json`](Self::to_json); `None` for
    /// anything else.
    pub fn from_json(text: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(text).ok()?;
        Some(CliMetadata {
            pid: u32::try_from(v.get("pid")?.as_u64()?).ok()?,
            host: v.get("host")?.as_str()?.to_owned(),
            command: v.get("command")?.as_str()?.to_owned(),
        })
    }
}

/// The holding process, from the store's own record or from
/// `distlock run`'s metadata.
fn process_of(
    h: &HolderInfo,
) -> (
    Option<u32>,
    Option<String>,
    Option<SystemTime>,
    Option<String>,
) {
    let meta = h.metadata.as_deref().and_then(CliMetadata::from_json);
    (
        h.pid.or(meta.as_ref().map(|m| m.pid)),
        h.host.clone().or(meta.as_ref().map(|m| m.host.clone())),
        h.since,
        meta.map(|m| m.command),
    )
}

fn ago(since: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(since)
        .unwrap_or_default()
        .as_secs();
    if secs == 0 {
        "just now".into()
    } else {
        format!(
            "{} ago",
            humantime::format_duration(Duration::from_secs(secs))
        )
    }
}

/// One line describing a holder: who, since when, fencing token, time left.
///
/// ```
/// use distlock::HolderInfo;
/// let h = HolderInfo::new(7).process(42, "box-1");
/// assert_eq!(distlock_cli::describe_holder(&h), "pid 42 on box-1, fencing token 7");
/// ```
pub fn describe_holder(h: &HolderInfo) -> String {
    let (pid, host, since, command) = process_of(h);
    let mut parts = Vec::new();
    match (pid, host) {
        (Some(pid), Some(host)) if !host.is_empty() => parts.push(format!("pid {pid} on {host}")),
        (Some(pid), _) => parts.push(format!("pid {pid}")),
        _ => {}
    }
    if let Some(command) = command {
        parts.push(format!("running {command}"));
    }
    if let Some(since) = since {
        parts.push(format!(
            "since {} ({})",
            humantime::format_rfc3339_seconds(since),
            ago(since)
        ));
    }
    parts.push(format!("fencing token {}", h.fencing_token));
    if let Some(left) = h.expires_in {
        parts.push(format!(
            "expires in {}",
            humantime::format_duration(Duration::from_millis(left.as_millis() as u64))
        ));
    }
    parts.join(", ")
}

/// The JSON `distlock status --json` prints.
pub fn holder_json(key: &str, holder: Option<&HolderInfo>) -> Value {
    let Some(h) = holder else {
        return json!({ "key": key, "held": false });
    };
    let (pid, host, since, command) = process_of(h);
    json!({
        "key": key,
        "held": true,
        "fencing_token": h.fencing_token,
        "pid": pid,
        "host": host,
        "since": since.map(|s| humantime::format_rfc3339_seconds(s).to_string()),
        "since_unix_ms": since.and_then(|s| s.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_millis() as u64),
        "command": command,
        "expires_in_ms": h.expires_in.map(|d| d.as_millis() as u64),
        "metadata": h.metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_describes_holders_on_any_backend() {
        let since = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let meta = CliMetadata {
            pid: 9,
            host: "h".into(),
            command: "make".into(),
        };
        assert_eq!(CliMetadata::from_json(&meta.to_json()), Some(meta.clone()));
        assert_eq!(CliMetadata::from_json("worker-7"), None);
        // A TTL store that records nothing itself: the metadata tells.
        let h = HolderInfo::new(3)
            .metadata(Some(meta.to_json()))
            .since(since)
            .expires_in(Duration::from_millis(2500));
        let text = describe_holder(&h);
        assert!(
            text.starts_with("pid 9 on h, running make, since 2027-01-15T08:00:00Z (")
                && text.ends_with("fencing token 3, expires in 2s 500ms"),
            "{text}"
        );
        let v = holder_json("k", Some(&h));
        assert_eq!(v["pid"], 9);
        assert_eq!(v["expires_in_ms"], 2500);
        assert_eq!(holder_json("k", None)["held"], false);
    }
}
