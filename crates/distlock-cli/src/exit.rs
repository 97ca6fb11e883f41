//! The exit codes of `distlock`. Its own codes come from `sysexits.h`
//! (64–78), away from the small codes commands usually use; a command's own
//! exit code is passed through unchanged.

use distlock::Error;

/// Bad usage: unknown option, missing argument, bad duration, key, option
/// combination or backend URL (including a backend not compiled in), or a
/// `--limit` other than the one the key's holders share.
pub const USAGE: u8 = 64;

/// The backend could not be reached or failed (a directory that cannot be
/// created, a server that does not answer).
pub const UNAVAILABLE: u8 = 69;

/// An internal error (it should not happen; please report it).
pub const SOFTWARE: u8 = 70;

/// Default for `--conflict-exit-code`: the lock is held by someone else and
/// was not obtained (at once with `--no-wait`, or within `--wait`).
pub const NOT_OBTAINED: u8 = 75;

/// The lock was lost (or could not be refreshed before its validity ran
/// out) while the command ran: the command's process group was stopped.
pub const LOCK_LOST: u8 = 76;

/// The command could not be executed (not executable).
pub const CANNOT_EXECUTE: u8 = 126;

/// The command was not found.
pub const NOT_FOUND: u8 = 127;

/// `distlock status`: the lock is held.
pub const HELD: u8 = 0;

/// `distlock status`: the lock is free.
pub const FREE: u8 = 1;

/// The code of a process ended by signal `signal`, as shells report it.
pub fn signal_code(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(u8::MAX)
}

/// The exit-code table, as `--help` shows it.
pub const HELP: &str = "\
Exit codes:
  distlock run      the command's own exit code (128+N if it died of signal N),
                    or one of distlock's own:
  64  bad usage: unknown option, bad duration, key or backend URL,
      or a --limit (or --shared) that disagrees with how KEY is held
  69  backend unavailable: the lock directory or server cannot be used, or refuses us (permissions)
  70  internal error
  75  lock not obtained: held by someone else (change with --conflict-exit-code)
  76  lock lost while the command ran; the command was stopped
  126 the command is not executable; 127 the command was not found
  130/143  interrupted (SIGINT/SIGTERM) while waiting for the lock
  distlock elect    as distlock run (76: the leadership was lost)
  distlock status   0 held, 1 free, or 64/69 as above
  distlock leader   0 led, 1 no leader, or 64/69 as above (--watch: 0 when interrupted)";

/// An error that ends distlock: one line on stderr and an exit code.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// The line, without the `distlock: ` prefix.
    pub message: String,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// The exit code class of a library error.
impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::InvalidKey { .. }
            | Error::InvalidOptions { .. }
            | Error::InvalidUrl { .. }
            | Error::LimitMismatch { .. } => USAGE,
            Error::Backend { .. } | Error::Refused { .. } | Error::Timeout { .. } => UNAVAILABLE,
            Error::NotObtained { .. } => NOT_OBTAINED,
            _ => SOFTWARE,
        };
        Failure::new(code, e.to_string())
    }
}
