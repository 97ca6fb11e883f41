//! Key naming: the Redis keys and channel of one lock.

use crate::key::LockKey;

/// The Redis names distlock uses for one lock (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisKeys {
    /// The lock itself: `NS:{H}:lock:K`.
    pub lock: String,
    /// The key's fencing counter: `NS:{H}:fence:K`.
    pub fence: String,
    /// The waiters' queue: `NS:{H}:queue:K`.
    pub queue: String,
    /// The waiters' leases: `NS:{H}:waiting:K`.
    pub waiting: String,
    /// The channel a release publishes on: `NS:{H}:released:K`.
    pub channel: String,
}

impl RedisKeys {
    /// The names for `key`.
    ///
    /// ```
    /// use distlock::{Key, LockKey, Namespace};
    /// use distlock::backend::redis::RedisKeys;
    ///
    /// let key = LockKey { namespace: Namespace::new("app").unwrap(), key: Key::new("{a}/b").unwrap() };
    /// let names = RedisKeys::new(&key);
    /// assert!(names.lock.starts_with("app:{") && names.lock.ends_with("}:lock:{a}/b"));
    /// assert_eq!(names.lock.replace(":lock:", ":fence:"), names.fence);
    /// ```
    pub fn new(key: &LockKey) -> Self {
        let prefix = format!("{}:{{{}}}", key.namespace, slot_tag(key.key.as_str()));
        let name = |kind: &str| format!("{prefix}:{kind}:{}", key.key);
        RedisKeys {
            lock: name("lock"),
            fence: name("fence"),
            queue: name("queue"),
            waiting: name("waiting"),
            channel: name("released"),
        }
    }
}

/// 16 hex digits of the 64-bit FNV-1a hash of `key`: stable across builds
/// and platforms, and free of braces, so it can be the hash tag.
pub(super) fn slot_tag(key: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;
    use crate::key::Namespace;

    fn names(ns: &str, key: &str) -> RedisKeys {
        RedisKeys::new(&LockKey {
            namespace: Namespace::new(ns).unwrap(),
            key: Key::new(key).unwrap(),
        })
    }

    /// Redis Cluster's hash-tag rule: the first `{`, then the first `}`
    /// after it, if what is between is non-empty.
    fn hash_tag(name: &str) -> &str {
        if let Some(open) = name.find('{')
            && let Some(len) = name[open + 1..].find('}')
            && len > 0
        {
            return &name[open + 1..open + 1 + len];
        }
        name
    }

    #[test]
    fn lock_counter_and_channel_share_a_slot_whatever_braces_the_key_has() {
        for key in ["k", "{a}", "}{", "{}", "{a}{b}", "x{y}z", "{", "}", "🚀{"] {
            let n = names("app", key);
            assert_eq!(hash_tag(&n.lock), hash_tag(&n.fence), "{key}");
            assert_eq!(hash_tag(&n.lock), slot_tag(key), "{key}");
            assert_eq!(hash_tag(&n.channel), slot_tag(key), "{key}");
            assert!(n.lock.starts_with("app:{") && n.fence.starts_with("app:{"));
        }
    }

    #[test]
    fn names_are_injective_and_stable() {
        let all: Vec<_> = [
            ("a", "b"),
            ("a", "b:c"),
            ("a", "b/c"),
            ("a:b", "c"),
            ("ab", "c"),
        ]
        .into_iter()
        .filter(|(ns, _)| Namespace::new(*ns).is_ok())
        .map(|(ns, k)| names(ns, k).lock)
        .collect();
        let mut unique = all.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), all.len());
        // Stable across builds: keys written by one version are found by the next.
        assert_eq!(slot_tag("a"), "af63dc4c8601ec8c");
        assert_eq!(names("ns", "a").lock, "ns:{af63dc4c8601ec8c}:lock:a");
    }
}
