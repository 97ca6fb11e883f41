//! Errors: what retrying cannot fix is a refusal saying so, the rest is a
//! transient backend error.

use super::{NAME, explain};
use crate::error::Error;
use crate::key::LockKey;

pub(super) fn backend_error(op: &'static str, e: impl Into<crate::BoxError>) -> Error {
    Error::backend(NAME, op, e)
}

/// Maps an etcd client error during `op` on `key` (when there is one) by
/// `user`: what retrying cannot fix — credentials etcd turns down, a role
/// missing on the namespace, a server certificate the client does not
/// trust — to [`Error::Refused`] saying so, the rest to a transient
/// [`Error::Backend`].
pub(super) fn etcd_error(
    op: &'static str,
    user: Option<&str>,
    key: Option<&LockKey>,
    e: etcd_client::Error,
) -> Error {
    // etcd's rpctypes messages, which are its API (the gRPC codes add
    // nothing to them).
    let status = match &e {
        etcd_client::Error::GRpcStatus(status) => Some(status.message()),
        _ => None,
    };
    let said = |what: &str| status.is_some_and(|m| m.contains(what));
    let m = status.unwrap_or_default();
    let message = match user {
        // ErrGRPCAuthFailed: the password or the user is wrong.
        Some(user) if said("authentication failed") => format!(
            "etcd refused the credentials of user {user:?} (a wrong password or an unknown \
             user): {m}"
        ),
        // ErrGRPCUserEmpty; ErrGRPCInvalidAuthToken, with no user to log in as.
        None if said("user name is empty") || said("invalid auth token") => format!(
            "etcd has authentication enabled and needs a user (etcd://user:password@host): {m}"
        ),
        _ if said("permission denied") => {
            let prefix = key.map_or_else(
                || "/<namespace>/".to_owned(),
                |k| format!("/{}/", k.namespace),
            );
            format!(
                "etcd denied user {:?} access to {prefix} ({m}); the user needs a role with \
                 readwrite permission on the prefix {prefix} (etcdctl role grant-permission \
                 ROLE readwrite {prefix} --prefix)",
                user.unwrap_or_default()
            )
        }
        _ if explain::is_untrusted_certificate(&e) => {
            let m = status.map_or_else(|| e.to_string(), str::to_owned);
            format!(
                "the etcd server's TLS certificate is not trusted ({m}); etcds:// URLs trust the \
                 system's root certificates, a private CA is given with EtcdOptions::tls"
            )
        }
        _ => return backend_error(op, e),
    };
    Error::refused(NAME, op, explain::Explained { message, source: e })
}

pub(super) fn not_held(key: &LockKey) -> Error {
    Error::NotHeld {
        key: key.key.to_string(),
    }
}

pub(super) fn lease_not_found(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("lease not found"))
}
