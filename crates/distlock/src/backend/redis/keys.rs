//! Key naming: the Redis keys and channel of one lock.

use crate::key::LockKey;

/// The Redis names distlock uses for one lock (see the [module docs](super)).
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
    /// The permit holders' expiries: `NS:{H}:expiries:K`.
    pub expiries: String,
    /// The permit holders' fencing tokens and metadata: `NS:{H}:permits:K`.
    pub permits: String,
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
        let names = Names::of(key);
        RedisKeys {
            lock: names.lock(),
            fence: names.fence(),
            queue: names.queue(),
            waiting: names.waiting(),
            channel: names.channel(),
            expiries: names.expiries(),
            permits: names.permits(),
        }
    }
}

/// Builds only the names an operation needs (a lock's extend needs one,
/// its acquire two): each is one allocation of the right size.
pub(super) struct Names<'a> {
    key: &'a LockKey,
    tag: u64,
}

impl<'a> Names<'a> {
    pub(super) fn of(key: &'a LockKey) -> Self {
        Names {
            key,
            tag: fnv1a(key.key.as_str()),
        }
    }

    /// `NS:{H}:kind:K`.
    fn name(&self, kind: &str) -> String {
        use std::fmt::Write as _;
        let (namespace, key) = (self.key.namespace.as_str(), self.key.key.as_str());
        let mut name = String::with_capacity(namespace.len() + kind.len() + key.len() + 22);
        // Writing to a String cannot fail.
        let _ = write!(name, "{namespace}:{{{:016x}}}:{kind}:{key}", self.tag);
        name
    }

    pub(super) fn lock(&self) -> String {
        self.name("lock")
    }

    pub(super) fn fence(&self) -> String {
        self.name("fence")
    }

    pub(super) fn queue(&self) -> String {
        self.name("queue")
    }

    pub(super) fn waiting(&self) -> String {
        self.name("waiting")
    }

    pub(super) fn channel(&self) -> String {
        self.name("released")
    }

    pub(super) fn expiries(&self) -> String {
        self.name("expiries")
    }

    pub(super) fn permits(&self) -> String {
        self.name("permits")
    }
}

/// The 64-bit FNV-1a hash of `key`: stable across builds and platforms.
fn fnv1a(key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// 16 hex digits of [`fnv1a`]: free of braces, so it can be the hash tag.
#[cfg(test)]
fn slot_tag(key: &str) -> String {
    format!("{:016x}", fnv1a(key))
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
            for other in [&n.channel, &n.queue, &n.waiting, &n.expiries, &n.permits] {
                assert_eq!(hash_tag(other), slot_tag(key), "{key}");
            }
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
