//! Checks that a store's hopeless conditions (bad credentials, missing
//! permissions, an untrusted certificate, a bad URL) are reported at once
//! instead of being retried until a deadline.

use std::time::Duration;

use distlock::{Error, Locker, ObtainOptions};
use tokio::time::Instant;

/// How long the obtain may wait: far longer than a refusal may take.
pub const PATIENT_WAIT: Duration = Duration::from_secs(10);

/// How soon a hopeless condition must be reported (with room for a loaded
/// machine; a retry loop would run for the whole [`PATIENT_WAIT`]).
pub const AT_ONCE: Duration = Duration::from_secs(2);

/// Connects to `url` and obtains a key with a [`PATIENT_WAIT`] wait, as a
/// program would; returns the first error (from connecting or obtaining),
/// asserting that it came within [`AT_ONCE`]. Panics if the lock is
/// obtained.
pub async fn first_error_at_once(url: &str) -> Error {
    let start = Instant::now();
    let err = match Locker::from_url(url).await {
        Ok(locker) => locker
            .obtain_with("k", ObtainOptions::new().wait(PATIENT_WAIT))
            .await
            .expect_err("obtained a lock through a hopeless store"),
        Err(e) => e,
    };
    let took = start.elapsed();
    assert!(took < AT_ONCE, "{url}: reported after {took:?}: {err}");
    err
}

/// [`first_error_at_once`], asserting the error is an [`Error::Refused`]
/// whose message contains every one of `says`; returns the message.
pub async fn assert_refused_at_once(url: &str, says: &[&str]) -> String {
    let err = first_error_at_once(url).await;
    let msg = err.to_string();
    assert!(matches!(err, Error::Refused { .. }), "{url}: {err:?}");
    for part in says {
        assert!(msg.contains(part), "{url}: {msg:?} does not say {part:?}");
    }
    assert!(!msg.contains('\n'), "{url}: not one line: {msg:?}");
    msg
}
