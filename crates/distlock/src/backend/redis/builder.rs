//! Building a [`RedisBackend`]: options, TLS, connecting, and what is
//! checked on connect.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{Client, ConnectionInfo, RedisConnectionInfo, RedisError};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::conn::{Conn, Topology};
use super::connect::{Dial, Source, Target};
use super::errors::{Who, acl_rules, is_auth_error, map_err};
use super::pubsub::Channels;
use super::replicas::{Replicas, keep_counting};
use super::scripts::{ALL, Queued};
use crate::error::{Error, Result};
use crate::key::{LockKey, Namespace};

/// The default bound on one connection attempt.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(1);
/// The default bound on one command's reply.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The default number of reconnection attempts after a connection fails,
/// before the next command starts over.
pub const DEFAULT_RECONNECT_RETRIES: usize = 3;
/// The default [`RedisBackendBuilder::waiter_lease`].
pub const DEFAULT_WAITER_LEASE: Duration = Duration::from_secs(1);

/// A key name for commands that name none but must go to one node of a
/// cluster (`CONFIG GET`, `INFO`).
pub(super) const ANY_KEY: &str = "distlock";

/// The default [`RedisBackendBuilder::replica_timeout`].
pub const DEFAULT_REPLICA_TIMEOUT: Duration = Duration::from_millis(500);

/// Locks in Redis: one server, a master that sentinels watch over, or a
/// Redis Cluster. Build it with [`RedisBackend::connect`] or a builder
/// ([`RedisBackend::builder`], [`RedisBackend::sentinel`],
/// [`RedisBackend::cluster`]), then hand it to
/// [`Locker::builder`](crate::Locker::builder) (or use
/// [`Locker::from_url`](crate::Locker::from_url)).
///
/// Cheap to share through an `Arc`; all lockers over one backend share its
/// command connection and its one subscription connection.
pub struct RedisBackend {
    pub(super) shared: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) source: Source,
    pub(super) described: String,
    pub(super) who: Who,
    pub(super) conn: Conn,
    pub(super) response_timeout: Duration,
    pub(super) connection_timeout: Duration,
    pub(super) maxmemory_policy: Option<String>,
    pub(super) channels: Arc<Channels>,
    pub(super) waiter_lease: Duration,
    /// Replica acknowledgement of grants and extends.
    pub(super) replicas: Replicas,
    /// The subscription supervisor's inbox, once started.
    pub(super) supervisor: OnceLock<UnboundedSender<String>>,
    /// Owners waiting in a key's queue, for the choice of acquire call.
    pub(super) queued: Queued,
    pub(super) shutdown: CancellationToken,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Builds a [`RedisBackend`].
#[must_use]
pub struct RedisBackendBuilder {
    target: Target,
    manager: Option<ConnectionManager>,
    connection_timeout: Duration,
    response_timeout: Duration,
    reconnect_retries: usize,
    waiter_lease: Duration,
    replicas: Option<usize>,
    replica_timeout: Duration,
}

impl fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackendBuilder")
            .field("target", &self.target.describe())
            .field("own_manager", &self.manager.is_none())
            .field("connection_timeout", &self.connection_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("reconnect_retries", &self.reconnect_retries)
            .field("waiter_lease", &self.waiter_lease)
            .field("replicas", &self.replicas)
            .field("replica_timeout", &self.replica_timeout)
            .finish()
    }
}

impl RedisBackendBuilder {
    /// Sends commands through the application's existing connection
    /// manager instead of opening one (one server only; ignored for
    /// Sentinel and Cluster). Its own timeouts and retries then apply (the
    /// locker still bounds every call by its operation timeout); the
    /// client is still used for the subscription connection.
    pub fn connection_manager(mut self, manager: ConnectionManager) -> Self {
        self.manager = Some(manager);
        self
    }

    /// Bounds one connection attempt (default
    /// [`DEFAULT_CONNECTION_TIMEOUT`]).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Bounds one command's reply (default [`DEFAULT_RESPONSE_TIMEOUT`]).
    /// A command that times out may still have run on the server. Must be
    /// longer than the [replica timeout](Self::replica_timeout) when
    /// replicas acknowledge grants: `WAIT` takes up to that long.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How many times a failed connection is retried in the background
    /// before the next command starts over (default
    /// [`DEFAULT_RECONNECT_RETRIES`]). Commands wait for the reconnection,
    /// always within the locker's operation timeout.
    pub fn reconnect_retries(mut self, retries: usize) -> Self {
        self.reconnect_retries = retries;
        self
    }

    /// How long a waiter keeps its place in a key's queue after its last
    /// attempt (default [`DEFAULT_WAITER_LEASE`]). Waiters try again at
    /// least every retry delay (100 ms by default), renewing it; a waiter
    /// that stops (its process died) holds up the waiters behind it for at
    /// most this long. A waiter whose retry delay is longer loses its
    /// place between attempts and queues again at the back.
    pub fn waiter_lease(mut self, lease: Duration) -> Self {
        self.waiter_lease = lease;
        self
    }

    /// How many replicas must acknowledge a grant or an extend (`WAIT`)
    /// before it is handed out; 0 turns acknowledgement off. By default 1
    /// when the master that takes the write has a replica in the
    /// topology's own view (the sentinels' replica list, the cluster's
    /// node table; on one server, a connected replica), counted every
    /// second and again when a write falls short, else 0. A grant not
    /// acknowledged within the [replica timeout](Self::replica_timeout) is
    /// released and reported as a transient [`Error::Backend`], which the
    /// engine retries like any other. See the [module docs](super#replication).
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = Some(replicas);
        self
    }

    /// How long a grant or an extend waits for its replicas (default
    /// [`DEFAULT_REPLICA_TIMEOUT`]); `WAIT`'s own timeout.
    pub fn replica_timeout(mut self, timeout: Duration) -> Self {
        self.replica_timeout = timeout;
        self
    }

    /// Connects (bounded by the connection timeout per attempt), loads the
    /// scripts, checks `maxmemory-policy` and counts the replicas.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOptions`] for a zero timeout or lease, or a replica
    /// timeout not shorter than the response timeout;
    /// [`Error::InvalidUrl`] for a database the server does not have or a
    /// master name no sentinel knows; [`Error::Refused`] for credentials
    /// the server turns down; [`Error::Timeout`] or [`Error::Backend`] when
    /// the servers cannot be reached.
    pub async fn build(self) -> Result<RedisBackend> {
        if self.connection_timeout.is_zero() || self.response_timeout.is_zero() {
            return Err(Error::invalid_options(
                "timeout",
                "the Redis connection and response timeouts must be greater than zero",
            ));
        }
        if self.waiter_lease < Duration::from_millis(1) {
            return Err(Error::invalid_options(
                "waiter_lease",
                "the Redis waiter lease must be at least one millisecond",
            ));
        }
        if self.replicas != Some(0)
            && (self.replica_timeout.is_zero() || self.replica_timeout >= self.response_timeout)
        {
            return Err(Error::invalid_options(
                "replica_timeout",
                format!(
                    "the Redis replica timeout ({:?}) must be greater than zero and shorter than \
                     the response timeout ({:?}): WAIT blocks for up to that long",
                    self.replica_timeout, self.response_timeout
                ),
            ));
        }
        install_crypto_provider();
        let described = self.target.describe();
        let who = self.target.who();
        let dial = Dial {
            connection_timeout: self.connection_timeout,
            response_timeout: self.response_timeout,
            reconnect_retries: self.reconnect_retries,
        };
        let (conn, source) = match (self.manager, self.target) {
            (Some(manager), Target::Single(client)) => {
                (Conn::Single(manager), Source::Single(client))
            }
            (_, target) => dial.connect(target).await?,
        };
        let conn_replicated = conn.topology() != Topology::Single;
        let mut backend = Shared {
            source,
            described,
            who,
            conn,
            response_timeout: self.response_timeout,
            connection_timeout: self.connection_timeout,
            maxmemory_policy: None,
            channels: Arc::new(Channels::default()),
            waiter_lease: self.waiter_lease,
            replicas: Replicas::new(self.replicas, self.replica_timeout, conn_replicated),
            supervisor: OnceLock::new(),
            queued: Queued::default(),
            shutdown: CancellationToken::new(),
        };
        backend.maxmemory_policy = backend.check_maxmemory_policy().await?;
        backend.load_scripts().await;
        backend.count_replicas().await;
        let shared = Arc::new(backend);
        keep_counting(&shared);
        Ok(RedisBackend { shared })
    }
}

/// redis-rs enables rustls without choosing a crypto provider; without one
/// a `rediss://` connection panics. Install ring unless the application
/// already installed a provider.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err means another thread installed one first: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl RedisBackend {
    /// Connects to what `url` names, with the default timeouts:
    /// `redis://` or `rediss://` (one server, as redis-rs reads it),
    /// `redis+sentinel://` or `redis+cluster://` (and their `rediss+`
    /// TLS variants), as the [module docs](super#urls) describe, with an
    /// optional `?replicas=N`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for a URL that cannot be read, and what
    /// [`RedisBackendBuilder::build`] reports.
    pub async fn connect(url: &str) -> Result<RedisBackend> {
        crate::url::redis_builder(url)?.build().await
    }

    /// A builder over an existing client (one server).
    pub fn builder(client: Client) -> RedisBackendBuilder {
        Self::builder_for(Target::Single(client))
    }

    /// A builder for the master that the sentinels at `sentinels` monitor
    /// as `master_name`. `node` holds the master's (and replicas')
    /// database, user and password; `tls` connects to them over TLS (the
    /// sentinels' own addresses say whether they speak TLS).
    pub fn sentinel(
        sentinels: Vec<ConnectionInfo>,
        master_name: impl Into<String>,
        node: RedisConnectionInfo,
        tls: bool,
    ) -> RedisBackendBuilder {
        Self::builder_for(Target::Sentinel {
            sentinels,
            master: master_name.into(),
            redis: node,
            tls,
        })
    }

    /// A builder for the Redis Cluster that `nodes` (some of its nodes)
    /// belong to; their user, password and TLS apply to every node.
    pub fn cluster(nodes: Vec<ConnectionInfo>) -> RedisBackendBuilder {
        Self::builder_for(Target::Cluster { nodes })
    }

    fn builder_for(target: Target) -> RedisBackendBuilder {
        RedisBackendBuilder {
            target,
            manager: None,
            connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            reconnect_retries: DEFAULT_RECONNECT_RETRIES,
            waiter_lease: DEFAULT_WAITER_LEASE,
            replicas: None,
            replica_timeout: DEFAULT_REPLICA_TIMEOUT,
        }
    }

    /// How many replicas a grant or an extend waits for now, at most (0:
    /// none are waited for; on a cluster, the shard with the most); see
    /// [`RedisBackendBuilder::replicas`].
    pub fn replicas(&self) -> usize {
        self.shared.replicas.wanted()
    }

    /// The server's `maxmemory-policy` as read on connect, or `None` when it
    /// could not be read (`CONFIG` denied or disabled). Anything but
    /// `noeviction` can evict a live lock.
    pub fn maxmemory_policy(&self) -> Option<&str> {
        self.shared.maxmemory_policy.as_deref()
    }

    /// The ACL rules a Redis user needs to use locks in `namespace`, in
    /// `ACL SETUSER` syntax.
    ///
    /// ```
    /// use distlock::Namespace;
    /// use distlock::backend::redis::RedisBackend;
    ///
    /// let rules = RedisBackend::required_acl(&Namespace::new("billing").unwrap());
    /// assert!(rules.starts_with("~billing:* &billing:* "));
    /// assert!(rules.contains("+evalsha"));
    /// ```
    pub fn required_acl(namespace: &Namespace) -> String {
        acl_rules(namespace.as_str())
    }

    /// The command connection, for the application's own use: `None`
    /// under Sentinel (the connection changes with the master) and Cluster.
    pub fn connection_manager(&self) -> Option<ConnectionManager> {
        match &self.shared.conn {
            Conn::Single(conn) => Some(conn.clone()),
            Conn::Sentinel(_) | Conn::Cluster(_) => None,
        }
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("target", &self.shared.described)
            .field("maxmemory_policy", &self.shared.maxmemory_policy)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(super) fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// The policy, when it can be read. Also the first command a new
    /// connection sends: a server that requires a password and got none
    /// says so here (`NOAUTH`), and that is an error.
    async fn check_maxmemory_policy(&self) -> Result<Option<String>> {
        let mut conn = self.conn();
        let mut cmd = ::redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        // On a cluster: the node of one slot (clusters are configured alike).
        let query = async {
            let reply = conn.query_at(ANY_KEY, cmd).await?;
            Ok::<_, RedisError>(::redis::from_redis_value::<HashMap<String, String>>(reply).ok())
        };
        let policy = match timeout(self.response_timeout, query).await {
            Ok(Ok(map)) => map.and_then(|mut map| map.remove("maxmemory-policy")),
            Ok(Err(e)) if is_auth_error(&e) => {
                return Err(map_err(
                    "connect",
                    None,
                    &self.who,
                    self.response_timeout,
                    e,
                ));
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "distlock: cannot read Redis maxmemory-policy");
                None
            }
            Err(_) => {
                tracing::debug!("distlock: reading Redis maxmemory-policy timed out");
                None
            }
        };
        if let Some(policy) = policy.as_deref().filter(|p| *p != "noeviction") {
            tracing::warn!(
                maxmemory_policy = policy,
                "distlock: Redis may evict keys (maxmemory-policy is {policy:?}): an evicted lock \
                 breaks mutual exclusion; set maxmemory-policy to noeviction"
            );
        }
        Ok(policy)
    }

    /// Loads the scripts up front so the first operations need no NOSCRIPT
    /// round trip; a failure only costs that round trip later.
    async fn load_scripts(&self) {
        for script in ALL {
            let mut conn = self.conn();
            match timeout(self.response_timeout, script.load_async(&mut conn)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "distlock: SCRIPT LOAD failed; scripts load on first use");
                    return;
                }
                Err(_) => return,
            }
        }
    }

    pub(super) fn err(&self, op: &'static str, key: &LockKey, e: RedisError) -> Error {
        map_err(
            op,
            Some(&key.namespace),
            &self.who,
            self.response_timeout,
            e,
        )
    }
}
