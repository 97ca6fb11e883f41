//! Connecting to each topology, every step bounded, with clear errors for
//! what retrying cannot fix (a wrong database, master name or password).

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::sentinel::SentinelNodeConnectionInfo;
use ::redis::{
    AsyncConnectionConfig, Client, ConnectionInfo, ErrorKind, RedisConnectionInfo, RedisError,
    TlsMode,
};
use futures::future::join_all;
use tokio::time::timeout;

use super::NAME;
use super::conn::Conn;
use super::errors::{Who, is_unknown_database, map_err, url_of};
use super::sentinel::SentinelMaster;
use crate::error::{Error, Result};

/// What a builder connects to.
pub(super) enum Target {
    Single(Client),
    Sentinel {
        sentinels: Vec<ConnectionInfo>,
        master: String,
        /// The master's and replicas' database, user and password.
        redis: RedisConnectionInfo,
        tls: bool,
    },
    Cluster {
        nodes: Vec<ConnectionInfo>,
    },
}

impl Target {
    pub(super) fn who(&self) -> Who {
        match self {
            Target::Single(client) => Who::of(client.get_connection_info().redis_settings()),
            Target::Sentinel { redis, .. } => Who::of(redis),
            Target::Cluster { nodes } => nodes
                .first()
                .map_or_else(Who::nobody, |n| Who::of(n.redis_settings())),
        }
    }

    /// Where it is, for `Debug` and errors (no user or password).
    pub(super) fn describe(&self) -> String {
        match self {
            Target::Single(client) => client.get_connection_info().addr().to_string(),
            Target::Sentinel {
                sentinels, master, ..
            } => format!("sentinels {} master {master}", addrs(sentinels)),
            Target::Cluster { nodes } => format!("cluster {}", addrs(nodes)),
        }
    }
}

fn addrs(nodes: &[ConnectionInfo]) -> String {
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
    addrs.join(",")
}

/// Where subscription connections go: the server, the master the
/// sentinels name (a new session when it changes), or the cluster's nodes
/// (shard channels, see [`super::shard`]).
#[derive(Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per backend, cloned once for its subscription supervisor"
)]
pub(super) enum Source {
    Single(Client),
    Sentinel(Arc<SentinelMaster>),
    Cluster(Vec<ConnectionInfo>),
}

/// How a builder connects: its timeouts and retries.
pub(super) struct Dial {
    pub(super) connection_timeout: Duration,
    pub(super) response_timeout: Duration,
    pub(super) reconnect_retries: usize,
}

impl Dial {
    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connection_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_number_of_retries(self.reconnect_retries)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500))
            .set_exponent_base(2.0)
    }

    /// Bounds a whole connect: every attempt and the back-off between.
    fn bound(&self) -> Duration {
        // The manager retries even a refused password; bound it all.
        let attempts = u32::try_from(self.reconnect_retries + 1).unwrap_or(u32::MAX);
        self.connection_timeout.saturating_mul(attempts)
            + Duration::from_millis(500 * u64::from(attempts.min(100)))
    }

    pub(super) async fn connect(&self, target: Target) -> Result<(Conn, Source)> {
        let who = target.who();
        let bound = self.bound();
        let timed_out = Error::Timeout {
            op: "connect",
            after: bound,
        };
        match target {
            Target::Single(client) => {
                // The manager retries whatever fails, a certificate or a
                // password it can never get past included: one plain
                // attempt first reports those at once.
                self.refuse_hopeless(std::slice::from_ref(&client), &who)
                    .await?;
                let work =
                    ConnectionManager::new_with_config(client.clone(), self.manager_config());
                match timeout(bound, work).await {
                    Ok(Ok(conn)) => Ok((Conn::Single(conn), Source::Single(client))),
                    Ok(Err(e)) => Err(self.connect_error(&client, &who, e)),
                    Err(_) => Err(timed_out),
                }
            }
            Target::Sentinel {
                sentinels,
                master,
                redis,
                tls,
            } => {
                let described = format!("redis+sentinel://{}/{master}", addrs(&sentinels));
                let db = redis.db();
                let mut node =
                    SentinelNodeConnectionInfo::default().set_redis_connection_info(redis);
                if tls {
                    node = node.set_tls_mode(TlsMode::Secure);
                }
                // No attempt of our own first: redis-rs's lookup connects to
                // the master the sentinels name once, plainly, to ask its
                // ROLE, and a refusal there (credentials, certificate,
                // database) comes back from it at once, not retried.
                let work = SentinelMaster::connect(
                    sentinels.clone(),
                    master.clone(),
                    node,
                    db,
                    self.manager_config(),
                    bound,
                );
                match timeout(bound, work).await {
                    Ok(Ok(found)) => {
                        let found = Arc::new(found);
                        Ok((Conn::Sentinel(found.clone()), Source::Sentinel(found)))
                    }
                    // redis-rs says "not found" also when every sentinel
                    // flags the master down: a failover under way, which
                    // passes (the torture harness's `distlock run` exited 64
                    // between a master's kill and its replica's promotion).
                    Ok(Err(e)) if e.kind() == ErrorKind::MasterNameNotFoundBySentinel => {
                        if self.sentinels_know(&sentinels, &master).await {
                            return Err(Error::backend(
                                NAME,
                                "connect",
                                format!(
                                    "the sentinels {} know {master:?} but name no master that \
                                     is up (a failover under way?): {e}",
                                    addrs(&sentinels)
                                ),
                            ));
                        }
                        Err(Error::InvalidUrl {
                            url: described,
                            reason: format!(
                                "no sentinel knows a master named {master:?} ({e}); the URL's \
                                 path is the name the sentinels monitor it by"
                            ),
                        })
                    }
                    Ok(Err(e)) if is_unknown_database(&e) => {
                        Err(unknown_database(described, db, &e))
                    }
                    Ok(Err(e)) => Err(map_err("connect", None, &who, self.response_timeout, e)),
                    Err(_) => Err(timed_out),
                }
            }
            Target::Cluster { nodes } => {
                // The cluster client turns a refusal at every seed into an
                // I/O error ("Failed to create initial connections"), which
                // reads as transient: one plain attempt per seed first.
                let seeds: Vec<Client> = nodes
                    .iter()
                    .filter_map(|node| Client::open(node.clone()).ok())
                    .collect();
                self.refuse_hopeless(&seeds, &who).await?;
                // User, password and TLS come from the nodes' addresses.
                let client = ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(self.connection_timeout)
                    .response_timeout(self.response_timeout)
                    .retries(u32::try_from(self.reconnect_retries).unwrap_or(u32::MAX))
                    .build()
                    .map_err(|e| map_err("connect", None, &who, self.response_timeout, e))?;
                match timeout(bound, client.get_async_connection()).await {
                    Ok(Ok(conn)) => Ok((Conn::Cluster(conn), Source::Cluster(nodes))),
                    Ok(Err(e)) => Err(map_err("connect", None, &who, self.response_timeout, e)),
                    Err(_) => Err(timed_out),
                }
            }
        }
    }
}

/// How one plain connection attempt ended.
enum Attempt {
    Connected,
    /// Failed for a reason no retry gets past.
    Hopeless(Error),
    /// Failed or timed out in a way a retry may get past.
    Failed,
}

impl Dial {
    /// One connection attempt without retries to each of `clients` at
    /// once, each bounded by the connection and response timeouts: `Err`
    /// with the first failure no retry gets past (credentials, permissions,
    /// an untrusted certificate, a database the server lacks) when none of
    /// them connected; `Ok` when one connected or every failure may pass on
    /// a retry (the connect that follows then reports it).
    async fn refuse_hopeless(&self, clients: &[Client], who: &Who) -> Result<()> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connection_timeout))
            .set_response_timeout(Some(self.response_timeout));
        let within = self.connection_timeout + self.response_timeout;
        let attempts = clients.iter().map(|client| {
            let config = config.clone();
            async move {
                let work = client.get_multiplexed_async_connection_with_config(&config);
                match timeout(within, work).await {
                    Ok(Ok(_)) => Attempt::Connected,
                    Ok(Err(e)) => match self.connect_error(client, who, e) {
                        hopeless @ (Error::Refused { .. } | Error::InvalidUrl { .. }) => {
                            Attempt::Hopeless(hopeless)
                        }
                        _ => Attempt::Failed,
                    },
                    Err(_) => Attempt::Failed,
                }
            }
        });
        let mut hopeless = None;
        for attempt in join_all(attempts).await {
            match attempt {
                Attempt::Connected => return Ok(()),
                Attempt::Hopeless(e) => {
                    hopeless.get_or_insert(e);
                }
                Attempt::Failed => {}
            }
        }
        hopeless.map_or(Ok(()), Err)
    }

    /// Whether any of `sentinels` monitors a master named `master`
    /// (`SENTINEL GET-MASTER-ADDR-BY-NAME` answers an address, down or
    /// not); a sentinel that does not answer knows nothing.
    async fn sentinels_know(&self, sentinels: &[ConnectionInfo], master: &str) -> bool {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connection_timeout))
            .set_response_timeout(Some(self.response_timeout));
        let within = self.connection_timeout + self.response_timeout;
        let asks = sentinels.iter().map(|sentinel| {
            let config = config.clone();
            async move {
                let work = async {
                    let client = Client::open(sentinel.clone())?;
                    let mut conn = client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?;
                    ::redis::cmd("SENTINEL")
                        .arg("GET-MASTER-ADDR-BY-NAME")
                        .arg(master)
                        .query_async::<Option<(String, u16)>>(&mut conn)
                        .await
                };
                matches!(timeout(within, work).await, Ok(Ok(Some(_))))
            }
        });
        join_all(asks).await.into_iter().any(|known| known)
    }

    /// What a failed connection to `client` means.
    fn connect_error(&self, client: &Client, who: &Who, e: RedisError) -> Error {
        if is_unknown_database(&e) {
            let info = client.get_connection_info();
            return unknown_database(url_of(info), info.redis_settings().db(), &e);
        }
        map_err("connect", None, who, self.response_timeout, e)
    }
}

fn unknown_database(url: String, db: i64, e: &::redis::RedisError) -> Error {
    Error::InvalidUrl {
        url,
        reason: format!(
            "database {db} does not exist on the server: {}",
            e.detail().unwrap_or_default()
        ),
    }
}
