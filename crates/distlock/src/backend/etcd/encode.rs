//! How locks are laid out in etcd's key space.
//!
//! Every acquisition of `key` in namespace `ns` is its own etcd key,
//! `/<ns>/<encoded key>/<owner token, 32 hex digits>`; the one with the
//! lowest create revision under the lock's prefix `/<ns>/<encoded key>/`
//! holds the lock, the others queue behind it in create-revision order.
//!
//! The encoding percent-escapes `/`, `%` and every byte outside printable
//! ASCII, so a key never contains the separator and "a" and "a/b" get
//! disjoint prefixes (`/ns/a/` and `/ns/a%2Fb/`).

use std::time::Duration;

use crate::holder::HolderInfo;
use crate::key::LockKey;
use crate::lease::OwnerToken;

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

/// The value stored with an entry: the lock's TTL in milliseconds and its
/// metadata, as `<ttl ms>:<0 | 1 metadata>`.
pub(super) fn entry_value(ttl: Duration, metadata: Option<&str>) -> Vec<u8> {
    let ms = ttl.as_millis();
    match metadata {
        Some(m) => format!("{ms}:1{m}").into_bytes(),
        None => format!("{ms}:0").into_bytes(),
    }
}

/// What `inspect` reports for the entry with `create_revision` and `value`.
pub(super) fn holder_info(create_revision: i64, value: &[u8]) -> HolderInfo {
    let token = u64::try_from(create_revision).unwrap_or_default();
    let text = String::from_utf8_lossy(value);
    let Some((ms, rest)) = text.split_once(':') else {
        return HolderInfo::new(token);
    };
    let info = HolderInfo::new(token);
    let info = match ms.parse::<u64>() {
        Ok(ms) => info.expires_in(Duration::from_millis(ms)),
        Err(_) => info,
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
        let v = entry_value(Duration::from_millis(1500), Some("w:1 {x}"));
        let info = holder_info(42, &v);
        assert_eq!(info.fencing_token, 42);
        assert_eq!(info.expires_in, Some(Duration::from_millis(1500)));
        assert_eq!(info.metadata.as_deref(), Some("w:1 {x}"));
        let bare = holder_info(7, &entry_value(Duration::from_secs(3), None));
        assert_eq!(bare.metadata, None);
        assert_eq!(holder_info(9, b"garbage").expires_in, None);
    }
}
