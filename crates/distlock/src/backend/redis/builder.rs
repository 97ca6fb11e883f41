//! Building a [`RedisBackend`]: options, TLS, connecting, and what is
//! checked on connect.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{AsyncConnectionConfig, Client, RedisError};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::errors::{Who, acl_rules, is_auth_error, is_unknown_database, map_err, url_of};
use super::pubsub::Channels;
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

/// Locks in one Redis server. Build it with [`RedisBackend::connect`] or
/// [`RedisBackend::builder`], then hand it to
/// [`Locker::builder`](crate::Locker::builder) (or use
/// [`Locker::from_url`](crate::Locker::from_url)).
///
/// Cheap to share through an `Arc`; all lockers over one backend share its
/// command connection and its one subscription connection.
pub struct RedisBackend {
    pub(super) shared: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) client: Client,
    pub(super) who: Who,
    pub(super) conn: ConnectionManager,
    pub(super) response_timeout: Duration,
    pub(super) connection_timeout: Duration,
    pub(super) maxmemory_policy: Option<String>,
    pub(super) channels: Arc<Channels>,
    pub(super) waiter_lease: Duration,
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

/// Builds a [`RedisBackend`] from a [`redis::Client`].
#[must_use]
pub struct RedisBackendBuilder {
    client: Client,
    manager: Option<ConnectionManager>,
    connection_timeout: Duration,
    response_timeout: Duration,
    reconnect_retries: usize,
    waiter_lease: Duration,
}

impl fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackendBuilder")
            .field(
                "addr",
                &self.client.get_connection_info().addr().to_string(),
            )
            .field("own_manager", &self.manager.is_none())
            .field("connection_timeout", &self.connection_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("reconnect_retries", &self.reconnect_retries)
            .field("waiter_lease", &self.waiter_lease)
            .finish()
    }
}

impl RedisBackendBuilder {
    /// Sends commands through the application's existing connection
    /// manager instead of opening one. Its own timeouts and retries then
    /// apply (the locker still bounds every call by its operation timeout);
    /// the client is still used for the subscription connection.
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
    /// A command that times out may still have run on the server.
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

    /// Connects (bounded by the connection timeout per attempt), loads the
    /// scripts and checks `maxmemory-policy`.
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
        install_crypto_provider();
        let conn = match self.manager {
            Some(manager) => manager,
            None => {
                // The manager retries whatever fails, a certificate or a
                // password it can never get past included: one plain
                // attempt first reports those at once.
                self.refuse_hopeless().await?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.connection_timeout))
                    .set_response_timeout(Some(self.response_timeout))
                    .set_number_of_retries(self.reconnect_retries)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(Duration::from_millis(500))
                    .set_exponent_base(2.0);
                // The manager retries even a refused password; bound it all.
                let attempts = u32::try_from(self.reconnect_retries + 1).unwrap_or(u32::MAX);
                let bound = self.connection_timeout.saturating_mul(attempts)
                    + Duration::from_millis(500 * u64::from(attempts.min(100)));
                match timeout(
                    bound,
                    ConnectionManager::new_with_config(self.client.clone(), config),
                )
                .await
                {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(e)) => return Err(self.connect_error(e)),
                    Err(_) => {
                        return Err(Error::Timeout {
                            op: "connect",
                            after: bound,
                        });
                    }
                }
            }
        };
        let mut backend = Shared {
            who: Who::of(&self.client),
            client: self.client,
            conn,
            response_timeout: self.response_timeout,
            connection_timeout: self.connection_timeout,
            maxmemory_policy: None,
            channels: Arc::new(Channels::default()),
            waiter_lease: self.waiter_lease,
            supervisor: OnceLock::new(),
            queued: Queued::default(),
            shutdown: CancellationToken::new(),
        };
        backend.maxmemory_policy = backend.check_maxmemory_policy().await?;
        backend.load_scripts().await;
        Ok(RedisBackend {
            shared: Arc::new(backend),
        })
    }

    /// One connection attempt without retries: `Err` with the error when it
    /// failed for a reason no retry gets past (credentials, permissions,
    /// an untrusted certificate, a database the server lacks); `Ok` when
    /// it connected or failed in a way a retry may get past.
    async fn refuse_hopeless(&self) -> Result<()> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connection_timeout))
            .set_response_timeout(Some(self.response_timeout));
        let attempt = timeout(
            self.connection_timeout + self.response_timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        match attempt {
            Ok(Err(e)) => match self.connect_error(e) {
                hopeless @ (Error::Refused { .. } | Error::InvalidUrl { .. }) => Err(hopeless),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// What a failed connection attempt means.
    fn connect_error(&self, e: RedisError) -> Error {
        if is_unknown_database(&e) {
            let info = self.client.get_connection_info();
            return Error::InvalidUrl {
                url: url_of(info),
                reason: format!(
                    "database {} does not exist on the server: {}",
                    info.redis_settings().db(),
                    e.detail().unwrap_or_default()
                ),
            };
        }
        let who = Who::of(&self.client);
        map_err("connect", None, &who, self.response_timeout, e)
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
    /// Connects to the server a `redis://` or `rediss://` URL names, with
    /// the default timeouts.
    pub async fn connect(url: &str) -> Result<RedisBackend> {
        let client = Client::open(url).map_err(|e| Error::InvalidUrl {
            url: crate::url::without_password(url),
            reason: e.to_string(),
        })?;
        Self::builder(client).build().await
    }

    /// A builder over an existing client.
    pub fn builder(client: Client) -> RedisBackendBuilder {
        RedisBackendBuilder {
            client,
            manager: None,
            connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            reconnect_retries: DEFAULT_RECONNECT_RETRIES,
            waiter_lease: DEFAULT_WAITER_LEASE,
        }
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

    /// The command connection, for the application's own use.
    pub fn connection_manager(&self) -> ConnectionManager {
        self.shared.conn.clone()
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field(
                "addr",
                &self.shared.client.get_connection_info().addr().to_string(),
            )
            .field("maxmemory_policy", &self.shared.maxmemory_policy)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(super) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The policy, when it can be read. Also the first command a new
    /// connection sends: a server that requires a password and got none
    /// says so here (`NOAUTH`), and that is an error.
    async fn check_maxmemory_policy(&self) -> Result<Option<String>> {
        let mut conn = self.conn();
        let mut cmd = ::redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        let query = cmd.query_async::<HashMap<String, String>>(&mut conn);
        let policy = match timeout(self.response_timeout, query).await {
            Ok(Ok(mut map)) => map.remove("maxmemory-policy"),
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
