//! The backend's options, with the seed's `EtcdOptions` defaults.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};

/// The seed's `DialTimeout`: how long connecting may take.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// The seed's `SessionTTL`: the shortest lease TTL this backend uses.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(5);
/// The seed's `SessionTimeout`: how long creating a lease may take.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one of the backend's own background calls may take.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The TTL asked for the waiters' lease; etcd raises it to its minimum,
/// `⌈1.5 × election timeout⌉` (2 s with etcd's default timings).
pub const DEFAULT_WAITER_LEASE: Duration = Duration::from_secs(1);
/// How long a lease kept for longer lock TTLs may go unused before it is
/// revoked.
pub const DEFAULT_LEASE_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Connection and session options, with the seed's `EtcdOptions` defaults.
///
/// ```
/// use std::time::Duration;
/// use distlock::backend::etcd::EtcdOptions;
///
/// let options = EtcdOptions::new()
///     .user("app", "secret")
///     .dial_timeout(Duration::from_secs(2))
///     .session_ttl(Duration::from_secs(10));
/// assert!(!format!("{options:?}").contains("secret"));
/// ```
#[derive(Clone)]
pub struct EtcdOptions {
    pub(super) user: Option<(String, String)>,
    pub(super) tls: Option<etcd_client::TlsOptions>,
    pub(super) dial_timeout: Duration,
    pub(super) session_ttl: Duration,
    pub(super) session_timeout: Duration,
    pub(super) request_timeout: Duration,
    pub(super) lease_idle_timeout: Duration,
    pub(super) waiter_lease: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            user: None,
            tls: None,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            session_ttl: DEFAULT_SESSION_TTL,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            lease_idle_timeout: DEFAULT_LEASE_IDLE_TIMEOUT,
            waiter_lease: DEFAULT_WAITER_LEASE,
        }
    }
}

impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("tls", &self.tls.is_some())
            .field("dial_timeout", &self.dial_timeout)
            .field("session_ttl", &self.session_ttl)
            .field("session_timeout", &self.session_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("lease_idle_timeout", &self.lease_idle_timeout)
            .field("waiter_lease", &self.waiter_lease)
            .finish()
    }
}

impl EtcdOptions {
    /// The defaults: dial timeout 5 s, session TTL 5 s, session timeout
    /// 5 s, request timeout 5 s, no auth, no TLS.
    pub fn new() -> Self {
        Self::default()
    }

    /// Authenticates as `name` with `password`.
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// Connects with TLS (endpoints without a scheme become `https://`).
    /// The default config trusts the system's root certificates; add a
    /// private CA or a client identity through `etcd_client::TlsOptions`.
    pub fn tls(mut self, tls: etcd_client::TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Bounds connecting (and authenticating) to etcd (default 5 s).
    pub fn dial_timeout(mut self, timeout: Duration) -> Self {
        self.dial_timeout = timeout;
        self
    }

    /// The shortest lease TTL (default 5 s, rounded up to whole seconds):
    /// how long locks outlive a process that died or lost etcd. Locks with
    /// longer TTLs use longer leases (see the module docs).
    pub fn session_ttl(mut self, ttl: Duration) -> Self {
        self.session_ttl = ttl;
        self
    }

    /// Bounds creating a lease (default 5 s).
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Bounds each of the backend's own background calls: keepalives,
    /// cleanup of expired entries, revoking leases on close (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long a lease for locks whose TTL needs more than the session
    /// TTL may go unused (no lock or waiter on it) before it is revoked
    /// (default 5 min). The session-TTL lease itself stays until close.
    pub fn lease_idle_timeout(mut self, timeout: Duration) -> Self {
        self.lease_idle_timeout = timeout;
        self
    }

    /// The TTL of the lease queued waiters' entries live on until their
    /// grant (default [`DEFAULT_WAITER_LEASE`], rounded up to whole
    /// seconds; etcd raises it to its minimum, 2 s with its default
    /// timings): about how long a waiter whose process died or lost etcd
    /// holds up the waiters behind it. Kept alive while the backend lives.
    pub fn waiter_lease(mut self, ttl: Duration) -> Self {
        self.waiter_lease = ttl;
        self
    }

    /// The user name to authenticate as, if any.
    pub(super) fn user_name(&self) -> Option<&str> {
        self.user.as_ref().map(|(name, _)| name.as_str())
    }

    pub(super) fn validate(&self) -> Result<()> {
        for (option, value) in [
            ("dial_timeout", self.dial_timeout),
            ("session_ttl", self.session_ttl),
            ("session_timeout", self.session_timeout),
            ("request_timeout", self.request_timeout),
            ("lease_idle_timeout", self.lease_idle_timeout),
            ("waiter_lease", self.waiter_lease),
        ] {
            if value.is_zero() {
                return Err(Error::invalid_options(option, "must be greater than zero"));
            }
        }
        if self.session_ttl > crate::MAX_TTL * 2 {
            return Err(Error::invalid_options(
                "session_ttl",
                "longer than 48 hours",
            ));
        }
        Ok(())
    }
}
