//! How locks are laid out in etcd's key space.
//!
//! Every acquisition of `key` in namespace `ns` is its own etcd key,
//! `/<ns>/<encoded key>/<owner token, 32 hex digits>`; the keys under the
//! lock's prefix `/<ns>/<encoded key>/` queue in create-revision order,
//! each value recording the acquisition's mode (see `admission` for who
//! holds).
//!
//! The encoding percent-escapes `/`, `%` and every byte outside printable
//! ASCII, so a key never contains the separator and "a" and "a/b" get
//! disjoint prefixes (`/ns/a/` and `/ns/a%2Fb/`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::holder::HolderInfo;
use crate::key::LockKey;
use crate::lease::{OwnerToken, Share};

/// The prefix every entry of `key` lives under, ending in `/`.
pub(super) fn lock_prefix(key: &LockKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.namespace.as_str().len() + key.key.as_str().len() + 3);
    out.push(b'/');
    // Namespaces are ASCII letters, digits, '.', '_' and '-': nothing to escape.
    out.extend_from_slice(key.namespace.as_str().as_bytes());
    out.push(b'/');
    for &b in key.key.as_str().as_bytes() {
        if b.is_ascii_graphic() && b != b'/' && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out.push(b'/');
    out
}

/// The etcd key of `owner`'s entry for `key`.
pub(super) fn entry_key(key: &LockKey, owner: OwnerToken) -> Vec<u8> {
    let mut out = lock_prefix(key);
    out.extend_from_slice(owner.to_hex().as_bytes());
    out
}

/// The owner token an entry key ends with, if it has one.
pub(super) fn owner_of(entry_key: &[u8]) -> Option<OwnerToken> {
    let hex = entry_key.rsplit(|&b| b == b'/').next()?;
    if hex.len() != 32 {
        return None;
    }
    let hex = std::str::from_utf8(hex).ok()?;
    u128::from_str_radix(hex, 16)
        .ok()
        .map(OwnerToken::from_u128)
}

/// What an entry's put is: a grant, a grant asked for again (which keeps
/// the token of the grant's put), or a place in the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Put {
    /// A grant: the put's revision is the fencing token.
    Grant,
    /// A grant written again, with its token.
    Again(i64),
    /// A queued entry, on the waiters' lease. Its grant is a later put, so
    /// readers must not take it for a holder even once the queue admits it:
    /// its token is not chosen yet.
    Queued,
}

/// The value stored with an entry: the lock's TTL in milliseconds, when
/// it ends unless extended (Unix milliseconds, the writer's clock), its
/// mode, its fencing token when a put other than its grant's wrote it, a
/// mark on a queued entry, and its metadata, as `<ttl ms>+<deadline
/// ms>[p<limit>][t<token>][q]:<0 | 1 metadata>`: `p<limit>` for one of
/// `limit` permits, nothing for an exclusive lease, so a lock's value is
/// what older versions wrote (and they read). Values without the deadline,
/// `<ttl ms>:...`, were written by older versions still.
pub(super) fn entry_value(
    ttl: Duration,
    deadline: SystemTime,
    share: Share,
    put: Put,
    metadata: Option<&str>,
) -> Vec<u8> {
    let ms = ttl.as_millis();
    let until = deadline
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let mut head = format!("{ms}+{until}");
    if let Share::Permit { limit } = share {
        head.push_str(&format!("p{limit}"));
    }
    match put {
        Put::Grant => {}
        Put::Again(token) => head.push_str(&format!("t{token}")),
        Put::Queued => head.push('q'),
    }
    match metadata {
        Some(m) => format!("{head}:1{m}").into_bytes(),
        None => format!("{head}:0").into_bytes(),
    }
}

/// The number tagged `tag` in a value's head, before its metadata.
fn field(value: &[u8], tag: u8) -> Option<u64> {
    let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
    let head = &value[..end];
    let at = head.iter().position(|&b| b == tag)?;
    let digits = head[at + 1..].split(|b| !b.is_ascii_digit()).next()?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The mode an entry's value records: exclusive unless it names a limit
/// (what older versions wrote, and what is safest to assume of a value
/// that cannot be read: it admits nobody beside it).
pub(super) fn entry_share(value: &[u8]) -> Share {
    field(value, b'p')
        .and_then(|limit| u32::try_from(limit).ok())
        .map_or(Share::Exclusive, |limit| Share::Permit { limit })
}

/// Whether an entry's value marks it queued: not granted yet, however far
/// up the queue it stands.
pub(super) fn entry_queued(value: &[u8]) -> bool {
    let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
    value[..end].contains(&b'q')
}

/// An entry's fencing token: the revision of the put that granted it (its
/// last put), unless a later put (a grant asked for again) recorded it.
pub(super) fn entry_token(value: &[u8], mod_revision: i64) -> i64 {
    field(value, b't')
        .and_then(|token| i64::try_from(token).ok())
        .unwrap_or(mod_revision)
}

/// What `inspect` reports for the entry with fencing token `token` (the
/// revision of its grant) and `value`, read at `now`, when its lease has
/// `lease_left` (if known).
///
/// The time left is counted to the deadline written with the grant, and
/// once that passed (the holder extended it: extends are reads, not
/// writes) it is the TTL; never more than the lease's time left.
pub(super) fn holder_info(
    token: i64,
    value: &[u8],
    now: SystemTime,
    lease_left: Option<Duration>,
) -> HolderInfo {
    let token = u64::try_from(token).unwrap_or_default();
    let text = String::from_utf8_lossy(value);
    let Some((head, rest)) = text.split_once(':') else {
        return HolderInfo::new(token);
    };
    // The tagged fields (mode, token), if any, are not part of the deadline.
    let head = head
        .split(|c: char| c.is_ascii_alphabetic())
        .next()
        .unwrap_or(head);
    let (ttl, deadline) = match head.split_once('+') {
        Some((ttl, deadline)) => (ttl, deadline.parse::<u64>().ok()),
        None => (head, None),
    };
    let ttl = ttl.parse::<u64>().ok().map(Duration::from_millis);
    let deadline = deadline.map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    let left = ttl.map(|ttl| match deadline.map(|d| d.duration_since(now)) {
        Some(Ok(left)) => left.min(ttl),
        _ => ttl,
    });
    let left = match (left, lease_left) {
        (Some(left), Some(lease)) => Some(left.min(lease)),
        (left, lease) => left.or(lease),
    };
    let info = HolderInfo::new(token);
    let info = match left {
        Some(left) => info.expires_in(left),
        None => info,
    };
    match rest.strip_prefix('1') {
        Some(metadata) => info.metadata(Some(metadata.to_owned())),
        None => info,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{Key, Namespace};

    fn lk(key: &str) -> LockKey {
        LockKey {
            namespace: Namespace::new("ns").unwrap(),
            key: Key::new(key).unwrap(),
        }
    }

    #[test]
    fn prefixes_are_injective_and_never_nest() {
        let keys = [
            "a", "a/b", "a/", "ab", "a%2Fb", "a%", "/a", "a b", "🚀", "a\n", "{x}",
        ];
        let prefixes: Vec<_> = keys.iter().map(|k| lock_prefix(&lk(k))).collect();
        for (i, p) in prefixes.iter().enumerate() {
            assert_eq!(p.iter().filter(|&&b| b == b'/').count(), 3, "{:?}", keys[i]);
            for (j, q) in prefixes.iter().enumerate() {
                if i != j {
                    assert!(!q.starts_with(p), "{:?} nests in {:?}", keys[j], keys[i]);
                }
            }
        }
        assert_eq!(lock_prefix(&lk("a/b c")), b"/ns/a%2Fb%20c/");
    }

    #[test]
    fn entry_keys_carry_the_owner() {
        let owner = OwnerToken::random().unwrap();
        let key = entry_key(&lk("a/b"), owner);
        assert!(key.starts_with(&lock_prefix(&lk("a/b"))));
        assert_eq!(owner_of(&key), Some(owner));
        assert_eq!(owner_of(b"/ns/a/short"), None);
    }

    #[test]
    fn values_round_trip_ttl_and_metadata() {
        let now = SystemTime::now();
        let ttl = Duration::from_millis(1500);
        let v = entry_value(
            ttl,
            now + ttl,
            Share::Exclusive,
            Put::Grant,
            Some("w:1 {x}"),
        );
        let info = holder_info(42, &v, now, None);
        assert_eq!(info.fencing_token, 42);
        assert!(
            info.expires_in
                .is_some_and(|left| left <= ttl && left > ttl - Duration::from_millis(2))
        );
        assert_eq!(info.metadata.as_deref(), Some("w:1 {x}"));
        let bare = holder_info(
            7,
            &entry_value(ttl, now, Share::Exclusive, Put::Grant, None),
            now,
            None,
        );
        assert_eq!(bare.metadata, None);
        assert_eq!(holder_info(9, b"garbage", now, None).expires_in, None);
    }

    #[test]
    fn the_time_left_counts_to_the_deadline_then_is_the_ttl_and_never_exceeds_the_lease() {
        let granted = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let ttl = Duration::from_secs(6);
        let v = entry_value(ttl, granted + ttl, Share::Exclusive, Put::Grant, None);
        let s = Duration::from_secs;
        let left = |after: u64, lease: Option<u64>| {
            holder_info(1, &v, granted + s(after), lease.map(s)).expires_in
        };
        assert_eq!(left(2, None), Some(s(4)));
        assert_eq!(left(2, Some(3)), Some(s(3)), "the lease expires first");
        assert_eq!(left(7, None), Some(ttl), "extended past its first deadline");
        assert_eq!(left(7, Some(1)), Some(s(1)));
        // Written by an older version: the TTL, within the lease.
        let old = holder_info(1, b"6000:0", granted, Some(s(9)));
        assert_eq!(old.expires_in, Some(ttl));
    }

    #[test]
    fn values_record_the_mode_and_a_lock_is_written_as_before() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let ttl = Duration::from_secs(6);
        let lock = entry_value(ttl, now + ttl, Share::Exclusive, Put::Grant, Some("p:5"));
        assert_eq!(
            lock, b"6000+1700000006000:1p:5",
            "the value older versions read"
        );
        assert_eq!(
            entry_share(&lock),
            Share::Exclusive,
            "metadata is not a mode"
        );
        for share in [Share::Permit { limit: 3 }, Share::READERS] {
            let v = entry_value(ttl, now + ttl, share, Put::Grant, Some("m"));
            assert_eq!(entry_share(&v), share);
            assert_eq!(entry_token(&v, 8), 8, "the grant's put");
            let again = entry_value(ttl, now + ttl, share, Put::Again(5), Some("t9q"));
            assert_eq!((entry_share(&again), entry_token(&again, 8)), (share, 5));
            let queued = entry_value(ttl, now + ttl, share, Put::Queued, Some("q"));
            assert_eq!(entry_share(&queued), share);
            assert!(entry_queued(&queued));
            assert!(
                !entry_queued(&v) && !entry_queued(&again),
                "metadata is no mark"
            );
            let info = holder_info(3, &v, now + Duration::from_secs(2), None);
            assert_eq!(info.expires_in, Some(Duration::from_secs(4)));
            assert_eq!(info.metadata.as_deref(), Some("m"));
        }
        assert!(!entry_queued(&lock));
        assert_eq!(entry_share(b"6000:0"), Share::Exclusive);
        assert_eq!(entry_share(b"6000+1pxyz:0"), Share::Exclusive);
    }
}
