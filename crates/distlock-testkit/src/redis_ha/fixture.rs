//! Conformance fixtures over the shared [`SentinelSet`] and
//! [`RedisCluster`]: every locker gets its own backend from the topology's
//! URL, as separate processes would.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use distlock::backend::Backend;
use distlock::backend::redis::{RedisBackend, RedisKeys};
use distlock::{Key, LockKey, Namespace};
use futures::future::BoxFuture;
use redis::AsyncConnectionConfig;
use redis::cluster::ClusterClient;

use super::{RedisCluster, SentinelSet};
use crate::certs::Certificates;
use crate::fixture::{Fixture, ReachableFixture};
use crate::redis::admin_client;

/// Admin commands may wait for a node's fsync (see the module docs).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Which topology a [`HaFixture`] runs on.
#[derive(Clone, Copy, Debug)]
enum On {
    Sentinel,
    Cluster,
}

/// The conformance fixture over a replicated topology, with replica
/// acknowledgement at its default (one replica: both topologies have
/// replicas).
#[derive(Clone, Debug)]
pub struct HaFixture {
    on: On,
    url: Arc<str>,
    tls: bool,
}

impl HaFixture {
    /// A fixture over [`SentinelSet::shared`].
    pub async fn sentinel() -> Self {
        Self::on(On::Sentinel, SentinelSet::shared().url(), false)
    }

    /// A fixture over [`RedisCluster::shared`].
    pub async fn cluster() -> Self {
        Self::on(On::Cluster, RedisCluster::shared().url(), false)
    }

    /// A fixture over [`SentinelSet::shared_tls`]: its URL is
    /// `rediss+sentinel://`, whose clients must trust [`ca`](Self::ca).
    pub async fn sentinel_tls() -> Self {
        Self::on(On::Sentinel, SentinelSet::shared_tls().url(), true)
    }

    /// A fixture over [`RedisCluster::shared_tls`]: its URL is
    /// `rediss+cluster://`, whose clients must trust [`ca`](Self::ca).
    pub async fn cluster_tls() -> Self {
        Self::on(On::Cluster, RedisCluster::shared_tls().url(), true)
    }

    fn on(on: On, url: String, tls: bool) -> Self {
        HaFixture {
            on,
            url: url.into(),
            tls,
        }
    }

    /// The CA the servers' certificates come from, on a TLS topology (a
    /// client trusts it with `SSL_CERT_FILE`, see [`crate::certs`]).
    pub fn ca(&self) -> Option<PathBuf> {
        self.tls.then(|| Certificates::shared().ca())
    }

    fn set(&self) -> &'static SentinelSet {
        if self.tls {
            SentinelSet::shared_tls()
        } else {
            SentinelSet::shared()
        }
    }

    fn cluster_set(&self) -> &'static RedisCluster {
        if self.tls {
            RedisCluster::shared_tls()
        } else {
            RedisCluster::shared()
        }
    }

    /// A new backend (own connections) on this fixture's topology.
    pub async fn redis_backend(&self) -> RedisBackend {
        RedisBackend::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url))
    }

    /// Runs `cmd` where `key` lives: the master, or the node of its slot.
    async fn admin<T: redis::FromRedisValue>(&self, key: &str, cmd: redis::Cmd) -> T {
        let work = async {
            match self.on {
                On::Sentinel => {
                    let addr = self.set().master_addr().await;
                    let port = addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(ADMIN_TIMEOUT))
                        .set_response_timeout(Some(ADMIN_TIMEOUT));
                    let mut conn = admin_client(port.expect("the master's port"))?
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?;
                    cmd.query_async(&mut conn).await
                }
                On::Cluster => {
                    let _ = key;
                    let cluster = self.cluster_set();
                    let mut builder = ClusterClient::builder(cluster.node_urls())
                        .response_timeout(ADMIN_TIMEOUT)
                        .connection_timeout(ADMIN_TIMEOUT);
                    if let Some(ca) = cluster.ca() {
                        builder = builder.certs(redis::TlsCertificates {
                            client_tls: None,
                            root_cert: Some(std::fs::read(ca).expect("the CA's certificate")),
                        });
                    }
                    let mut conn = builder.build()?.get_async_connection().await?;
                    cmd.query_async(&mut conn).await
                }
            }
        };
        match tokio::time::timeout(ADMIN_TIMEOUT, work).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => panic!("admin command on {}: {e}", self.url),
            Err(_) => panic!("admin command on {} timed out", self.url),
        }
    }
}

impl Fixture for HaFixture {
    fn backend(&self) -> BoxFuture<'_, Arc<dyn Backend>> {
        Box::pin(async move { Arc::new(self.redis_backend().await) as Arc<dyn Backend> })
    }

    fn delete_behind_back<'a>(&'a self, namespace: &'a str, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let names = RedisKeys::new(&LockKey {
                namespace: Namespace::new(namespace).expect("valid namespace"),
                key: Key::new(key).expect("valid key"),
            });
            let mut del = redis::cmd("DEL");
            del.arg(&names.lock);
            let deleted: i64 = self.admin(&names.lock, del).await;
            assert_eq!(deleted, 1, "no live lock on {} to delete", names.lock);
        })
    }
}

impl ReachableFixture for HaFixture {
    fn url(&self, namespace: &str) -> String {
        format!("{}?namespace={namespace}", self.url)
    }

    /// Every key of the namespace but the fencing counters (on a cluster:
    /// `KEYS` goes to every master, and the answers are joined).
    fn leftovers<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut keys_cmd = redis::cmd("KEYS");
            keys_cmd.arg(format!("{namespace}:*"));
            let mut keys: Vec<String> = self.admin(namespace, keys_cmd).await;
            keys.retain(|k| !k.contains("}:fence:"));
            keys.sort();
            keys
        })
    }
}
