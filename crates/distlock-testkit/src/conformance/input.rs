//! What callers pass in: unusual and invalid keys, invalid options,
//! namespaces.

use std::time::Duration;

use distlock::{Error, MAX_KEY_BYTES, Namespace, ObtainOptions, RetryStrategy};

use super::{MS, locker};
use crate::fixture::Fixture;

/// Keys with slashes, braces, spaces, emoji and the maximum length work and
/// are all distinct.
pub async fn unusual_keys_work(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "unusual").await;
    let b = fx.locker(&ns).await;
    let keys = [
        "a/b/c".to_owned(),
        "{braces}".to_owned(),
        "}{".to_owned(),
        "{a}{b}".to_owned(),
        "with space".to_owned(),
        "emoji 🚀".to_owned(),
        "../../etc/passwd".to_owned(),
        "%2F*?[".to_owned(),
        "tab\tnew\nline".to_owned(),
        "x".repeat(MAX_KEY_BYTES),
        "🚀".repeat(MAX_KEY_BYTES / 4),
    ];
    let mut held = Vec::new();
    for key in &keys {
        let lock = a.try_obtain(key.as_str()).await.unwrap();
        let holder = b.inspect(key.as_str()).await.unwrap().expect("visible");
        assert_eq!(holder.fencing_token, lock.fencing_token());
        assert!(
            b.try_obtain(key.as_str())
                .await
                .unwrap_err()
                .is_not_obtained()
        );
        held.push(lock);
    }
    for lock in held {
        lock.release().await.unwrap();
    }
    for key in &keys {
        assert!(!b.is_locked(key.as_str()).await.unwrap());
    }
}

/// "a" and keys that extend it never share a lock.
pub async fn prefix_keys_are_independent(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "prefix").await;
    let keys = ["a", "a/b", "a/", "ab", "a:b", "a/b/c", "/a"];
    let mut held = Vec::new();
    for key in keys {
        held.push(locker.try_obtain(key).await.unwrap());
    }
    let a = held.remove(0);
    a.release().await.unwrap();
    assert!(!locker.is_locked("a").await.unwrap());
    for (lock, key) in held.into_iter().zip(&keys[1..]) {
        assert!(
            locker.is_locked(*key).await.unwrap(),
            "{key} freed by releasing a"
        );
        lock.release().await.unwrap();
    }
}

/// Bad keys are a clear InvalidKey, never a panic.
pub async fn invalid_keys_are_rejected(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "bad_keys").await;
    let too_long = "x".repeat(MAX_KEY_BYTES + 1);
    for (key, says) in [("", "empty"), (too_long.as_str(), "1025 bytes")] {
        for err in [
            locker.obtain(key).await.unwrap_err(),
            locker.try_obtain(key).await.unwrap_err(),
            locker.is_locked(key).await.unwrap_err(),
            locker.inspect(key).await.unwrap_err(),
        ] {
            assert!(
                matches!(&err, Error::InvalidKey { reason } if reason.contains(says)),
                "{err}"
            );
        }
    }
    let err = locker.obtain(vec![0x66, 0x6f, 0xff]).await.unwrap_err();
    assert!(err.to_string().contains("UTF-8"), "{err}");
}

/// Bad options are a clear InvalidOptions naming the option.
pub async fn invalid_options_are_rejected(fx: &dyn Fixture) {
    let (locker, _) = locker(fx, "bad_options").await;
    let cases = [
        (ObtainOptions::new().ttl(Duration::ZERO), "ttl"),
        (
            ObtainOptions::new().ttl(Duration::from_secs(2 * 24 * 3600)),
            "ttl",
        ),
        (
            ObtainOptions::new()
                .ttl(Duration::from_secs(1))
                .refresh_interval(Duration::from_secs(1)),
            "refresh_interval",
        ),
        (
            ObtainOptions::new()
                .wait(Duration::ZERO)
                .retry(RetryStrategy::linear(MS)),
            "retry",
        ),
        (
            ObtainOptions::new().retry(RetryStrategy::linear(Duration::ZERO)),
            "retry",
        ),
    ];
    for (opts, option) in cases {
        match locker.obtain_with("k", opts).await {
            Err(Error::InvalidOptions { option: o, .. }) => assert_eq!(o, option),
            other => panic!("expected InvalidOptions for {option}, got {other:?}"),
        }
    }
    assert!(Namespace::new("bad namespace").is_err());
    assert!(!locker.is_locked("k").await.unwrap(), "nothing was taken");
}

/// The same key in two namespaces is two locks.
pub async fn namespaces_isolate(fx: &dyn Fixture) {
    let (a, _) = locker(fx, "ns_a").await;
    let (b, _) = locker(fx, "ns_b").await;
    let la = a.try_obtain("shared").await.unwrap();
    let lb = b.try_obtain("shared").await.unwrap();
    assert!(!a.is_locked("other").await.unwrap());
    la.release().await.unwrap();
    assert!(b.is_locked("shared").await.unwrap());
    lb.release().await.unwrap();
}
