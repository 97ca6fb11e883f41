//! File system failures: which call on which path, what it needs, and
//! whether waiting can cure it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// What an I/O call on a path was doing: named in its error, with the
/// permission it needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Action {
    /// Creating a directory: the lock directory or a namespace's.
    CreateDir,
    /// Creating a `.lock` file in its namespace's directory.
    CreateLockFile,
    /// Opening a `.lock` file to lock it.
    OpenLockFile,
    /// Opening a `.lock` file to look at it (`inspect`).
    ReadLockFile,
    /// Locking, reading or updating a `.lock` file already open.
    UseLockFile,
    /// Writing a holder record (a temporary file renamed into place).
    WriteHolder,
    /// Opening, or creating, a permit's file: the guard, the writers'
    /// gate or a slot.
    OpenPermitFile,
    /// Listing a namespace's directory (for a key's permit slots).
    ListDir,
}

impl Action {
    fn what(self) -> &'static str {
        match self {
            Action::CreateDir => "create directory",
            Action::CreateLockFile => "create lock file",
            Action::OpenLockFile => "open lock file",
            Action::ReadLockFile => "read lock file",
            Action::UseLockFile => "use lock file",
            Action::WriteHolder => "write holder record",
            Action::OpenPermitFile => "open permit file",
            Action::ListDir => "list directory",
        }
    }

    /// The permissions doing it on `path` takes.
    fn needs(self, path: &Path) -> String {
        let dir = path.parent().unwrap_or(path).display();
        match self {
            Action::CreateDir | Action::CreateLockFile | Action::WriteHolder => {
                format!("write and search permission on {dir}")
            }
            Action::OpenLockFile => {
                format!("read and write permission on it and search permission on {dir}")
            }
            Action::ReadLockFile => {
                format!("read permission on it and search permission on {dir}")
            }
            Action::UseLockFile => "read and write permission on it".to_owned(),
            Action::ListDir => "read and search permission on it".to_owned(),
            Action::OpenPermitFile => format!(
                "read and write permission on it, or write and search permission on {dir} to create it"
            ),
        }
    }
}

/// An I/O call that failed: one [`Action`] on one path.
#[derive(Debug)]
struct FsError {
    action: Action,
    path: PathBuf,
    source: io::Error,
}

impl FsError {
    /// Why waiting cannot cure it, if it cannot: a permission is missing,
    /// the file system is read-only or full, or something not ours stands
    /// where a lock's directory or file belongs. Such a store fails every
    /// later attempt alike until someone fixes it.
    fn hopeless(&self) -> Option<String> {
        use nix::libc;
        Some(match self.source.raw_os_error()? {
            libc::EACCES => format!(
                "permission denied (needs {})",
                self.action.needs(&self.path)
            ),
            libc::EPERM => "operation not permitted".to_owned(),
            libc::EROFS => "read-only file system".to_owned(),
            libc::ENOSPC => "no space left on device".to_owned(),
            libc::EDQUOT => "disk quota exceeded".to_owned(),
            // `O_NOFOLLOW`: a link planted where a lock file belongs.
            libc::ELOOP => "it is a symbolic link, which distlock does not follow".to_owned(),
            libc::EISDIR => "it is a directory".to_owned(),
            libc::ENOTDIR => "a component of the path is not a directory".to_owned(),
            // `create_dir_all` reports a file in the way as "exists".
            libc::EEXIST if self.action == Action::CreateDir => {
                "something other than a directory is in the way".to_owned()
            }
            _ => return None,
        })
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, path) = (self.action.what(), self.path.display());
        match self.hopeless() {
            Some(why) => write!(f, "cannot {what} {path}: {why}"),
            None => write!(f, "cannot {what} {path}: {}", self.source),
        }
    }
}

impl std::error::Error for FsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// An I/O failure during `op`: [`Error::Refused`] when waiting cannot cure
/// it (see [`FsError::hopeless`]), else a transient [`Error::Backend`].
pub(super) fn io_error(op: &'static str, action: Action, path: &Path, source: io::Error) -> Error {
    let failure = FsError {
        action,
        path: path.to_owned(),
        source,
    };
    if failure.hopeless().is_some() {
        Error::refused("file", op, failure)
    } else {
        Error::backend("file", op, failure)
    }
}
