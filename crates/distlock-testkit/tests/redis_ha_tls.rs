//! `rediss+sentinel://` and `rediss+cluster://` against topologies that
//! speak only TLS (nodes, sentinels, replication and the cluster bus),
//! with certificates from a private CA. This process does not trust the
//! CA (a `rediss` URL trusts the system's roots; the CLI's tests trust it
//! with `SSL_CERT_FILE` and run locks through both URLs): a connection is
//! refused at once, as on one server.
#![cfg(feature = "redis")]

use distlock_testkit::redis_ha::{RedisCluster, SentinelSet};
use distlock_testkit::refusal::assert_refused_at_once;

const UNTRUSTED: &[&str] = &["certificate", "UnknownIssuer"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_at_once_through_sentinels() {
    let url = SentinelSet::shared_tls().url();
    assert!(url.starts_with("rediss+sentinel://"), "{url}");
    assert_refused_at_once(&url, UNTRUSTED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_at_once_by_a_cluster() {
    let url = RedisCluster::shared_tls().url();
    assert!(url.starts_with("rediss+cluster://"), "{url}");
    assert_refused_at_once(&url, UNTRUSTED).await;
}
