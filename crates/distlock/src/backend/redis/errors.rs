//! Mapping redis-rs errors to distlock's, and explaining refusals.

use std::fmt;
use std::time::Duration;

use ::redis::{ConnectionAddr, ErrorKind, RedisError, ServerErrorKind};

use super::NAME;
use crate::backend::explain;
use crate::error::Error;
use crate::key::Namespace;

/// Maps a redis-rs error to distlock's: timeouts to [`Error::Timeout`]; an
/// ACL refusal to [`Error::Refused`] with a [`PermissionDenied`] explaining
/// what the user needs, and credentials or a certificate the client cannot
/// use to [`Error::Refused`] saying which (not retried: waiting will not
/// change them); everything else to [`Error::Backend`] with the source kept.
pub(super) fn map_err(
    op: &'static str,
    namespace: Option<&Namespace>,
    who: &Who,
    response_timeout: Duration,
    e: RedisError,
) -> Error {
    if e.is_timeout() {
        return Error::Timeout {
            op,
            after: response_timeout,
        };
    }
    if is_permission_error(&e) {
        return Error::refused(
            NAME,
            op,
            PermissionDenied {
                namespace: namespace.map(Namespace::to_string),
                source: e,
            },
        );
    }
    let message = if is_auth_error(&e) {
        who.refused(&e)
    } else if explain::is_untrusted_certificate(&e) {
        format!(
            "the Redis server's TLS certificate is not trusted ({e}); rediss:// URLs trust the \
             system's root certificates, or those of the file SSL_CERT_FILE names"
        )
    } else {
        return Error::backend(NAME, op, e);
    };
    Error::refused(NAME, op, explain::Explained { message, source: e })
}

/// Who a client authenticates as, for errors about its credentials.
#[derive(Clone, Debug)]
pub(super) struct Who {
    user: String,
    password_given: bool,
}

impl Who {
    pub(super) fn of(settings: &::redis::RedisConnectionInfo) -> Self {
        Who {
            user: settings.username().unwrap_or("default").to_owned(),
            password_given: settings.password().is_some(),
        }
    }

    /// The default user, without a password.
    pub(super) fn nobody() -> Self {
        Who {
            user: "default".to_owned(),
            password_given: false,
        }
    }

    /// What to say when the server turned these credentials down with `e`.
    pub(super) fn refused(&self, e: &RedisError) -> String {
        let user = &self.user;
        if self.password_given {
            format!(
                "the Redis server refused the credentials of user {user:?} (a wrong password, or \
                 an unknown or disabled user): {e}"
            )
        } else {
            format!(
                "the Redis server requires a password and none was given for user {user:?} \
                 (redis://user:password@host/): {e}"
            )
        }
    }
}

pub(super) fn is_auth_error(e: &RedisError) -> bool {
    e.kind() == ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
        // Redis 7 answers an unauthenticated client's longer commands (an
        // EVALSHA) with this protocol error, and hangs up, instead of NOAUTH.
        || e.detail().is_some_and(|d| d.contains("unauthenticated"))
}

/// `SELECT` of a database the server does not have.
pub(super) fn is_unknown_database(e: &RedisError) -> bool {
    e.detail()
        .is_some_and(|d| d.contains("DB index is out of range"))
}

/// A client's server as a URL (without user or password), for errors.
pub(super) fn url_of(info: &::redis::ConnectionInfo) -> String {
    let db = info.redis_settings().db();
    match info.addr() {
        ConnectionAddr::Unix(path) => format!("redis+unix://{}?db={db}", path.display()),
        addr @ ConnectionAddr::TcpTls { .. } => format!("rediss://{addr}/{db}"),
        addr => format!("redis://{addr}/{db}"),
    }
}

/// Every topology's needs: on a cluster the scripts publish with
/// `SPUBLISH` and waiters subscribe with `SSUBSCRIBE`, and the cluster
/// client reads `CLUSTER SLOTS`, and the backend `CLUSTER NODES` (the
/// replica count) and `CLUSTER MYID` (where a write ran); under Sentinel
/// redis-rs asks the master its `ROLE`; `INFO replication` counts one
/// server's replicas and `WAIT` waits for them.
pub(super) fn acl_rules(namespace: &str) -> String {
    format!(
        "~{namespace}:* &{namespace}:* +evalsha +script|load +get +mget +set +pexpire +pttl \
         +del +publish +time +zrange +zadd +zrem +hget +hset +hdel +exists +subscribe \
         +unsubscribe +ping +pexpireat +zcard +zscore +zcount +hvals +spublish +ssubscribe \
         +sunsubscribe +wait +info +role +cluster|slots +cluster|nodes +cluster|myid"
    )
}

pub(super) fn is_permission_error(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoPerm)
        || e.code() == Some("NOPERM")
        || e.to_string().contains("NOPERM")
}

/// The Redis user lacks a permission distlock needs (an ACL `NOPERM`).
#[derive(Debug)]
pub struct PermissionDenied {
    namespace: Option<String>,
    source: RedisError,
}

impl fmt::Display for PermissionDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let namespace = self.namespace.as_deref().unwrap_or("<namespace>");
        write!(
            f,
            "the Redis ACL denied a command distlock needs ({}); the user needs: {}",
            self.source,
            acl_rules(namespace)
        )
    }
}

impl std::error::Error for PermissionDenied {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}
