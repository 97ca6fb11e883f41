//! Lock keys and namespaces: validation once, in the engine.
//!
//! Backends never see an unvalidated key. Each backend encodes a
//! [`LockKey`] (namespace + key) injectively for its store, so "a" and
//! "a/b" never share a lock anywhere.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};

/// The longest key accepted, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;

/// The longest namespace accepted, in bytes.
pub const MAX_NAMESPACE_BYTES: usize = 64;

/// The namespace a [`Locker`](crate::Locker) uses unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "distlock";

/// A validated lock key: any non-empty UTF-8 string of at most
/// [`MAX_KEY_BYTES`] bytes (slashes, spaces, braces and emoji included).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

impl Key {
    /// Validates `key`.
    ///
    /// ```
    /// use distlock::Key;
    /// assert!(Key::new("jobs/nightly {eu} 🚀").is_ok());
    /// assert!(Key::new("").unwrap_err().to_string().contains("empty"));
    /// ```
    pub fn new(key: impl Into<String>) -> Result<Self> {
        let key = key.into();
        if key.is_empty() {
            return Err(Error::InvalidKey {
                reason: "the key is empty".into(),
            });
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(Error::InvalidKey {
                reason: format!(
                    "the key is {} bytes long; the maximum is {MAX_KEY_BYTES}",
                    key.len()
                ),
            });
        }
        Ok(Key(key.into()))
    }

    /// Validates a key given as bytes; they must be UTF-8.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<Self> {
        let text = String::from_utf8(bytes.into()).map_err(|e| Error::InvalidKey {
            reason: format!(
                "the key is not valid UTF-8 (bad byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        })?;
        Self::new(text)
    }

    /// The key as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Anything a lock key can be made from; validation happens on conversion.
///
/// Implemented for `&str`, `String`, `&String`, byte slices and vectors
/// (which must be UTF-8), and [`Key`] itself.
pub trait IntoKey {
    /// Validates and converts.
    fn into_key(self) -> Result<Key>;
}

impl IntoKey for Key {
    fn into_key(self) -> Result<Key> {
        Ok(self)
    }
}

impl IntoKey for &Key {
    fn into_key(self) -> Result<Key> {
        Ok(self.clone())
    }
}

impl IntoKey for &str {
    fn into_key(self) -> Result<Key> {
        Key::new(self)
    }
}

impl IntoKey for String {
    fn into_key(self) -> Result<Key> {
        Key::new(self)
    }
}

impl IntoKey for &String {
    fn into_key(self) -> Result<Key> {
        Key::new(self.as_str())
    }
}

impl IntoKey for &[u8] {
    fn into_key(self) -> Result<Key> {
        Key::from_bytes(self)
    }
}

impl IntoKey for Vec<u8> {
    fn into_key(self) -> Result<Key> {
        Key::from_bytes(self)
    }
}

/// A validated namespace: 1 to [`MAX_NAMESPACE_BYTES`] bytes of ASCII
/// letters, digits, `.`, `_` and `-`.
///
/// The narrow alphabet keeps every backend's encoding simple and lets an
/// operator grant a Redis ACL user `~<namespace>:*` or an etcd role the
/// prefix `/<namespace>/`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(Arc<str>);

impl Namespace {
    /// Validates `namespace`.
    pub fn new(namespace: impl Into<String>) -> Result<Self> {
        let ns = namespace.into();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if ns.is_empty() || ns.len() > MAX_NAMESPACE_BYTES || !ns.chars().all(valid_char) {
            return Err(Error::invalid_options(
                "namespace",
                format!(
                    "{ns:?} must be 1 to {MAX_NAMESPACE_BYTES} ASCII letters, digits, '.', '_' or '-'"
                ),
            ));
        }
        Ok(Namespace(ns.into()))
    }

    /// The namespace as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace(DEFAULT_NAMESPACE.into())
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a backend locks: a key within a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LockKey {
    /// The locker's namespace.
    pub namespace: Namespace,
    /// The caller's key.
    pub key: Key,
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_any_non_empty_utf8_up_to_the_limit() {
        for k in [
            "a",
            "a/b",
            "{tag}",
            "with space",
            "🚀",
            "../../etc/passwd",
            "\0",
        ] {
            assert_eq!(Key::new(k).unwrap().as_str(), k);
        }
        let longest = "é".repeat(MAX_KEY_BYTES / 2);
        assert_eq!(Key::new(longest.clone()).unwrap().as_str(), longest);
    }

    #[test]
    fn rejects_empty_long_and_non_utf8_keys_with_a_reason() {
        let empty = Key::new("").unwrap_err().to_string();
        assert!(empty.contains("empty"), "{empty}");
        let long = Key::new("x".repeat(MAX_KEY_BYTES + 1))
            .unwrap_err()
            .to_string();
        assert!(long.contains("1025 bytes"), "{long}");
        let bytes = Key::from_bytes(vec![b'a', 0xff]).unwrap_err().to_string();
        assert!(
            bytes.contains("UTF-8") && bytes.contains("offset 1"),
            "{bytes}"
        );
    }

    #[test]
    fn namespaces_use_a_narrow_alphabet() {
        assert!(Namespace::new("billing-prod.v2_a").is_ok());
        for bad in ["", "a b", "a/b", "{x}", "a:b", &"n".repeat(65)] {
            let err = Namespace::new(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidOptions {
                        option: "namespace",
                        ..
                    }
                ),
                "{bad}"
            );
        }
    }
}
