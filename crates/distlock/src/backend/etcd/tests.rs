//! The backend's own unit tests that need no etcd.

use super::*;

/// A backend that never reaches etcd.
pub(super) async fn offline(options: EtcdOptions) -> EtcdBackend {
    // The client dials lazily: nothing listens there, and nothing needs to.
    let client = Client::connect(["127.0.0.1:9"], None).await.unwrap();
    EtcdBackend::with_client(client, options).unwrap()
}

#[tokio::test]
async fn lock_ttls_map_to_whole_second_leases_of_at_least_one_and_a_half_ttls() {
    let backend = offline(EtcdOptions::new()).await;
    let lease = |ms| backend.lease_ttl_for(Duration::from_millis(ms)).as_secs();
    assert_eq!(lease(300), 5, "short locks share the session lease");
    assert_eq!(lease(3_333), 5);
    assert_eq!(lease(3_334), 6);
    assert_eq!(lease(30_000), 45, "the default TTL");
    let short = offline(EtcdOptions::new().session_ttl(Duration::from_millis(1500))).await;
    assert_eq!(short.lease_ttl_for(Duration::from_millis(300)).as_secs(), 2);
}

#[tokio::test]
async fn options_are_validated() {
    let client = Client::connect(["127.0.0.1:9"], None).await.unwrap();
    for (options, name) in [
        (
            EtcdOptions::new().dial_timeout(Duration::ZERO),
            "dial_timeout",
        ),
        (
            EtcdOptions::new().session_ttl(Duration::ZERO),
            "session_ttl",
        ),
        (
            EtcdOptions::new().session_timeout(Duration::ZERO),
            "session_timeout",
        ),
        (
            EtcdOptions::new().request_timeout(Duration::ZERO),
            "request_timeout",
        ),
        (
            EtcdOptions::new().waiter_lease(Duration::ZERO),
            "waiter_lease",
        ),
    ] {
        match EtcdBackend::with_client(client.clone(), options) {
            Err(Error::InvalidOptions { option, .. }) => assert_eq!(option, name),
            other => panic!("expected InvalidOptions for {name}, got {other:?}"),
        }
    }
    let none: [&str; 0] = [];
    assert!(
        EtcdBackend::connect(none, EtcdOptions::new())
            .await
            .is_err()
    );
}

#[test]
fn endpoints_get_a_scheme() {
    assert_eq!(
        endpoint_urls(&["h:1", "https://x:2"], false),
        ["http://h:1", "https://x:2"]
    );
    assert_eq!(endpoint_urls(&["h:1"], true), ["https://h:1"]);
}
