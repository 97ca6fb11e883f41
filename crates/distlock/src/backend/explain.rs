//! What the network stores' refusals share: spotting an untrusted server
//! certificate, and an error that explains itself in one line.

use std::error::Error;
use std::fmt;

/// Whether `e`, or an error it wraps, says the server's TLS certificate
/// failed verification (an unknown CA, a wrong name, expired): retrying
/// cannot make it trusted. Matched by rustls's text, which every wrapper
/// repeats, because the clients hide the rustls error itself (redis-rs
/// behind an `Arc`, `io::Error::source` skipping it).
pub(super) fn is_untrusted_certificate(e: &(dyn Error + 'static)) -> bool {
    std::iter::successors(Some(e), |e| (*e).source())
        .any(|e| e.to_string().contains("invalid peer certificate"))
}

/// A store client's error explained in one line (what is wrong, what would
/// fix it), the client's error kept as the source: what an
/// [`Error::Refused`](crate::Error::Refused) carries.
#[derive(Debug)]
pub(super) struct Explained<E> {
    pub(super) message: String,
    pub(super) source: E,
}

impl<E> fmt::Display for Explained<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: Error + 'static> Error for Explained<E> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}
