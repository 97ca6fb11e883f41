//! How `distlock` labels its locks and describes their holders.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use distlock::{HolderInfo, Holders, Leader};
use serde_json::{Map, Value, json};

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
/// use distlock::{HolderInfo, Holders, Leader};
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

/// How the holders of a key share it, for people: `None` for one
/// exclusive holder, else "2 of 3 permits" or "3 readers".
pub fn describe_sharing(holders: &Holders) -> Option<String> {
    let n = holders.holders.len();
    match holders.limit? {
        u32::MAX => Some(format!("{n} reader{}", if n == 1 { "" } else { "s" })),
        limit => Some(format!("{n} of {limit} permits")),
    }
}

/// The JSON of one holder: who, since when, fencing token, time left.
fn one_holder_json(h: &HolderInfo) -> Map<String, Value> {
    let (pid, host, since, command) = process_of(h);
    let Value::Object(fields) = json!({
        "fencing_token": h.fencing_token,
        "pid": pid,
        "host": host,
        "since": since.map(|s| humantime::format_rfc3339_seconds(s).to_string()),
        "since_unix_ms": since.and_then(|s| s.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_millis() as u64),
        "command": command,
        "expires_in_ms": h.expires_in.map(|d| d.as_millis() as u64),
        "metadata": h.metadata,
    }) else {
        unreachable!("a JSON object literal")
    };
    fields
}

/// The JSON `distlock status --json` prints: `{"key", "held": false}` for a
/// free key; else `held`, the permit `limit` (null for an exclusive holder,
/// 4294967295 for readers), every holder under `holders` (oldest first),
/// and the latest holder's fields at the top level as well.
pub fn holders_json(key: &str, holders: &Holders) -> Value {
    let Some(latest) = holders.holders.last() else {
        return json!({ "key": key, "held": false });
    };
    let mut out = Map::new();
    out.insert("key".into(), key.into());
    out.insert("held".into(), true.into());
    out.insert("limit".into(), holders.limit.into());
    out.extend(one_holder_json(latest));
    out.insert(
        "holders".into(),
        holders
            .holders
            .iter()
            .map(|h| Value::Object(one_holder_json(h)))
            .collect(),
    );
    Value::Object(out)
}

/// One line about a key's leader, as `distlock leader` prints it.
///
/// ```
/// use distlock::{HolderInfo, Leader};
/// let leader = Leader::from_holder(&HolderInfo::new(7).metadata(Some("node-a".into())));
/// assert_eq!(distlock_cli::describe_leader("k", Some(&leader)), "\"k\" is led by node-a, term 7");
/// assert_eq!(distlock_cli::describe_leader("k", None), "\"k\" has no leader");
/// ```
pub fn describe_leader(key: &str, leader: Option<&Leader>) -> String {
    let Some(l) = leader else {
        return format!("{key:?} has no leader");
    };
    let mut parts = vec![
        format!("{key:?} is led by {}", l.identity),
        format!("term {}", l.term),
    ];
    if let Some(since) = l.since {
        parts.push(format!(
            "since {} ({})",
            humantime::format_rfc3339_seconds(since),
            ago(since)
        ));
    }
    if let Some(left) = l.expires_in {
        parts.push(format!(
            "expires in {}",
            humantime::format_duration(Duration::from_millis(left.as_millis() as u64))
        ));
    }
    parts.join(", ")
}

/// The JSON `distlock leader --json` prints: `{"key", "leader": null}`, or
/// the leader's `identity`, `term`, `since`, `since_unix_ms` and
/// `expires_in_ms`.
pub fn leader_json(key: &str, leader: Option<&Leader>) -> Value {
    json!({
        "key": key,
        "leader": leader.map(|l| json!({
            "identity": l.identity,
            "term": l.term,
            "since": l.since.map(|s| humantime::format_rfc3339_seconds(s).to_string()),
            "since_unix_ms": l.since.and_then(|s| s.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_millis() as u64),
            "expires_in_ms": l.expires_in.map(|d| d.as_millis() as u64),
        })),
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
        let v = holders_json("k", &Holders::exclusive(h.clone()));
        assert_eq!(v["pid"], 9);
        assert_eq!(v["expires_in_ms"], 2500);
        assert_eq!(v["limit"], Value::Null);
        assert_eq!(v["holders"][0]["fencing_token"], 3);
        assert_eq!(
            holders_json("k", &Holders::none()),
            json!({"key": "k", "held": false})
        );
        let permits = Holders::permits(3, vec![HolderInfo::new(4), h]);
        assert_eq!(
            describe_sharing(&permits).as_deref(),
            Some("2 of 3 permits")
        );
        let v = holders_json("k", &permits);
        assert_eq!(
            (v["limit"].as_u64(), v["fencing_token"].as_u64()),
            (Some(3), Some(3))
        );
        assert_eq!(v["holders"].as_array().map(Vec::len), Some(2));
        let readers = Holders::permits(u32::MAX, vec![HolderInfo::new(4)]);
        assert_eq!(describe_sharing(&readers).as_deref(), Some("1 reader"));
    }
}
