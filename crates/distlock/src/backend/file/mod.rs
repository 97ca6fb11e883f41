//! The file backend: locks shared by the processes of one host, with no
//! server. A lock is an OS file lock (`flock`) on one file per key, so the
//! kernel frees it the moment its holder exits, crashes or is SIGKILLed.
//!
//! # Layout
//!
//! Inside the directory, each namespace has a folder `ns-<namespace>`, and
//! each key two files in it:
//!
//! * `<name>.lock` — the file that is `flock`ed. It holds the key's fencing
//!   counter and the full key. It is created once (atomically, complete) and
//!   never deleted by distlock: deleting a file others may be locking would
//!   let two processes lock two different files of the same name.
//! * `<name>.holder` — who holds the lock: fencing token, pid, host, since
//!   and metadata. Written atomically (temporary file + rename) right after
//!   the lock is taken, removed right before it is released. [`inspect`]
//!   reads it only after checking that the lock really is held, and (on
//!   Linux) by the process the record names, so a crashed holder's stale
//!   record is ignored. On Linux that check reads the kernel's list of locks
//!   and takes no lock, so inspecting never makes a free lock look busy to
//!   an acquirer; elsewhere it is a non-blocking shared `flock` probe, which
//!   an acquirer meeting it may take for the holder for a moment (it looks
//!   again, 1 ms apart, a few times).
//!
//! `<name>` is `k-` followed by the key with every byte other than ASCII
//! letters, digits, `_` and `-` percent-encoded, when that fits in 200
//! bytes; longer keys use `h-` followed by the SHA-256 of the key in hex,
//! and the `.lock` file's copy of the key guards against (never expected)
//! hash collisions. The encoding is injective, never produces `.`, `..` or
//! `/`, and always fits within `NAME_MAX` (255), so no key escapes the
//! directory or shares a lock with another.
//!
//! # Fencing tokens
//!
//! Each grant stores `max(previous token + 1, microseconds since the Unix
//! epoch)` in the `.lock` file while holding the lock. Tokens therefore
//! strictly increase per key across processes and restarts, and keep
//! increasing even if the directory is wiped (a tmpfs after a reboot) as
//! long as the wall clock is not stepped back past the last token.
//!
//! # What differs from a TTL store
//!
//! [`Capabilities::ttl_expiry`] is false: a lock lives exactly as long as
//! its holder keeps it, whatever its TTL. The engine therefore gives such
//! locks no validity deadline; extending only checks that the lock is still
//! ours. Deleting or replacing a `.lock` file behind its holder's back is
//! detected by the next extend ([`Error::NotHeld`], so
//! [`Lock::lost`](crate::Lock::lost) fires). Ownership is checked against
//! the owner token inside this process; other processes cannot release a
//! lock they do not hold, since the OS lock belongs to the holder's open
//! file.
//!
//! A [`Lock`](crate::Lock) dropped where no tokio runtime can release it
//! stays held until the backend itself is dropped or the process exits
//! (there is no TTL to end it sooner).
//!
//! The directory must be on a local file system: `flock` over NFS is not
//! reliable. Unix only.
//!
//! # Errors
//!
//! What waiting cannot cure is an [`Error::Refused`] at once, naming the
//! path and what is missing: a permission (creating lock files takes write
//! and search permission on the namespace's directory, locking one read
//! and write permission on it), a read-only or full file system, a
//! symbolic link or a foreign file where a lock file belongs. Other I/O
//! failures are transient [`Error::Backend`]s.
//!
//! [`inspect`]: crate::Locker::inspect
//! [`Capabilities::ttl_expiry`]: crate::backend::Capabilities::ttl_expiry

use std::collections::HashMap;
use std::fs::{File, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::backend::{AcquireRequest, Attempt, Backend, Capabilities, Renewal};
use crate::error::{Error, Result};
use crate::holder::HolderInfo;
use crate::key::{Key, LockKey};
use crate::lease::{LeaseRef, OwnerToken};

mod disk;
mod errors;
mod holders;

use disk::{
    KeyPaths, LOCK_HEADER, Record, TOKEN_DIGITS, create_lock_file, file_name, is_current,
    micros_since_epoch, namespace_dir, open_lock_file, read_lock_file, read_record, write_record,
};
use errors::{Action, io_error};

use holders::{Holder, HolderLookup};

/// How often a waiter re-reads the holder record for a release.
const RELEASE_POLL: Duration = Duration::from_millis(10);

/// How many times a busy lock without a (current) holder record is looked
/// at again, 1 ms apart, before it is reported without details. The record
/// is missing only for the microseconds between taking the lock and writing
/// it, or (where the kernel's list of locks cannot be read) while another
/// process's `inspect` probes the lock.
const BUSY_RECHECKS: u32 = 3;

/// Locks on one host, as `flock`s on files in a directory.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> distlock::Result<()> {
/// use std::sync::Arc;
/// use distlock::{Locker, backend::file::FileBackend};
///
/// let dir = std::env::temp_dir().join(format!("distlock-doc-{}", std::process::id()));
/// // Two backends on one directory behave like two processes.
/// let a = Locker::builder(Arc::new(FileBackend::open(&dir)?)).build()?;
/// let b = Locker::from_url(&format!("file://{}", dir.display())).await?;
/// let lock = a.obtain("nightly-report").await?;
/// let holder = b.inspect("nightly-report").await?.expect("held");
/// assert_eq!(holder.fencing_token, lock.fencing_token());
/// assert_eq!(holder.pid, Some(std::process::id()));
/// assert!(b.try_obtain("nightly-report").await.unwrap_err().is_not_obtained());
/// lock.release().await?;
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FileBackend {
    dir: PathBuf,
    host: String,
    held: Mutex<HashMap<LockKey, Held>>,
    holders: HolderLookup,
}

/// A lock this backend holds: the open file carries the OS lock.
#[derive(Debug)]
struct Held {
    owner: OwnerToken,
    file: File,
    fencing_token: u64,
    since: SystemTime,
    metadata: Option<Arc<str>>,
}

/// The outcome of one synchronous look at a lock.
enum Step {
    Granted(u64),
    /// Held by someone else; `None` when the holder's record is not (yet)
    /// there.
    Busy(Option<HolderInfo>),
}

impl FileBackend {
    /// A backend keeping its lock files in `dir`, which is created if
    /// missing. Use a directory on a local file system.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let failed = |e| io_error("open", Action::CreateDir, &dir, e);
        std::fs::create_dir_all(&dir).map_err(failed)?;
        if !std::fs::metadata(&dir).map_err(failed)?.is_dir() {
            return Err(failed(io::Error::from_raw_os_error(nix::libc::EEXIST)));
        }
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().replace(['\n', '\r'], " "))
            .unwrap_or_default();
        Ok(FileBackend {
            holders: HolderLookup::for_dir(&dir),
            dir,
            host,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// The directory holding the lock files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that is `flock`ed for `key` (it may not exist yet).
    pub fn lock_path(&self, key: &LockKey) -> PathBuf {
        self.paths(key).lock
    }

    /// The file describing the current holder of `key`, if any.
    pub fn holder_path(&self, key: &LockKey) -> PathBuf {
        self.paths(key).holder
    }

    fn paths(&self, key: &LockKey) -> KeyPaths {
        let dir = self.dir.join(namespace_dir(&key.namespace));
        let name = file_name(&key.key);
        KeyPaths {
            lock: dir.join(format!("{name}.lock")),
            holder: dir.join(format!("{name}.holder")),
            dir,
        }
    }

    fn held(&self) -> MutexGuard<'_, HashMap<LockKey, Held>> {
        // Every update is one insert or remove: a poisoned map is consistent.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One synchronous attempt. Never blocks on the lock: `try_lock` only.
    fn try_acquire_now(&self, req: &AcquireRequest) -> Result<Step> {
        let mut held = self.held();
        if let Some(h) = held.get(&req.key) {
            return Ok(if h.owner == req.owner {
                Step::Granted(h.fencing_token)
            } else {
                Step::Busy(Some(self.info(h)))
            });
        }
        let paths = self.paths(&req.key);
        // A few rounds: the file may be deleted or replaced between opening
        // and locking it (an operator cleaning up); then lock the new one.
        for _ in 0..8 {
            let file = match open_lock_file(&paths.lock, true) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    create_lock_file(&paths, &req.key.key)?;
                    continue;
                }
                Err(e) => return Err(io_error("acquire", Action::OpenLockFile, &paths.lock, e)),
            };
            let failed = |e| io_error("acquire", Action::UseLockFile, &paths.lock, e);
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let pid = match self.holders.holder(&file) {
                        Ok(Holder::Held(pid)) => pid,
                        _ => None,
                    };
                    return Ok(Step::Busy(self.busy_holder(
                        &paths,
                        &file,
                        &req.key.key,
                        pid,
                    )?));
                }
                Err(TryLockError::Error(e)) => return Err(failed(e)),
            }
            if !is_current(&file, &paths.lock).map_err(failed)? {
                continue; // unlocked when `file` drops
            }
            let last = read_lock_file(&file, &req.key.key, &paths.lock)?;
            let fencing_token = (last + 1).max(micros_since_epoch());
            file.write_all_at(
                format!("{fencing_token:0TOKEN_DIGITS$}").as_bytes(),
                LOCK_HEADER.len() as u64,
            )
            .map_err(failed)?;
            let since = SystemTime::now();
            let record = Record {
                token: fencing_token,
                pid: std::process::id(),
                host: self.host.clone(),
                since,
                metadata: req.metadata.as_deref().map(str::to_owned),
            };
            write_record(&paths, &record)
                .map_err(|e| io_error("acquire", Action::WriteHolder, &paths.holder, e))?;
            held.insert(
                req.key.clone(),
                Held {
                    owner: req.owner,
                    file,
                    fencing_token,
                    since,
                    metadata: req.metadata.clone(),
                },
            );
            return Ok(Step::Granted(fencing_token));
        }
        Err(Error::backend(
            "file",
            "acquire",
            format!("{} keeps being replaced", paths.lock.display()),
        ))
    }

    /// The holder of a lock `file` that someone holds, when its record is
    /// current: not left behind by an earlier holder (its token is older
    /// than the file's, or the system names another process as the holder).
    fn busy_holder(
        &self,
        paths: &KeyPaths,
        file: &File,
        key: &Key,
        pid: Option<u32>,
    ) -> Result<Option<HolderInfo>> {
        let current = read_lock_file(file, key, &paths.lock)?;
        Ok(read_record(&paths.holder)
            .filter(|r| r.token >= current)
            .filter(|r| pid.is_none_or(|pid| r.pid == pid && r.host == self.host))
            .map(|r| self.record_info(r)))
    }

    fn info(&self, h: &Held) -> HolderInfo {
        HolderInfo::new(h.fencing_token)
            .metadata(h.metadata.as_deref().map(str::to_owned))
            .process(std::process::id(), self.host.clone())
            .since(h.since)
    }

    fn record_info(&self, r: Record) -> HolderInfo {
        HolderInfo::new(r.token)
            .metadata(r.metadata)
            .process(r.pid, r.host)
            .since(r.since)
    }

    /// One read-only look: `Some(step)` when decided, `None` to look again.
    fn inspect_now(&self, key: &LockKey, last_try: bool) -> Result<Option<Option<HolderInfo>>> {
        if let Some(h) = self.held().get(key) {
            return Ok(Some(Some(self.info(h))));
        }
        let paths = self.paths(key);
        let file = match open_lock_file(&paths.lock, false) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(None)),
            Err(e) => return Err(io_error("inspect", Action::ReadLockFile, &paths.lock, e)),
        };
        let pid = match self.holders.holder(&file) {
            Ok(Holder::Free) => return Ok(Some(None)),
            Ok(Holder::Held(pid)) => pid,
            Err(e) => return Err(io_error("inspect", Action::UseLockFile, &paths.lock, e)),
        };
        match self.busy_holder(&paths, &file, &key.key, pid)? {
            Some(info) => Ok(Some(Some(info))),
            None if last_try => {
                let token = read_lock_file(&file, &key.key, &paths.lock)?;
                let info = HolderInfo::new(token);
                Ok(Some(Some(match pid {
                    Some(pid) => info.process(pid, self.host.clone()),
                    None => info,
                })))
            }
            None => Ok(None),
        }
    }

    fn extend_now(&self, lease: &LeaseRef) -> Result<()> {
        let mut held = self.held();
        let Some(h) = held.get(&lease.key).filter(|h| h.owner == lease.owner) else {
            return Err(not_held(&lease.key));
        };
        let path = self.paths(&lease.key).lock;
        match is_current(&h.file, &path) {
            Ok(true) => Ok(()),
            Ok(false) => {
                // Deleted or replaced behind our back: someone else may lock
                // the new file now. Let go of ours.
                held.remove(&lease.key);
                Err(not_held(&lease.key))
            }
            Err(e) => Err(io_error("extend", Action::UseLockFile, &path, e)),
        }
    }

    fn release_now(&self, lease: &LeaseRef) -> Result<()> {
        let mut held = self.held();
        if !held.get(&lease.key).is_some_and(|h| h.owner == lease.owner) {
            return Err(not_held(&lease.key));
        }
        let h = held.remove(&lease.key).expect("checked above");
        let paths = self.paths(&lease.key);
        let current = is_current(&h.file, &paths.lock).unwrap_or(false);
        if current {
            // Still under the lock: the record is ours. Removed before the
            // lock is let go, so it never describes a released lock.
            if let Err(e) = std::fs::remove_file(&paths.holder)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::debug!(path = %paths.holder.display(), error = %e, "removing the holder record failed");
            }
        }
        drop(h); // closes the file: the OS lock is released
        if current {
            Ok(())
        } else {
            Err(not_held(&lease.key))
        }
    }

    /// Returns when `key` may have become free, or at `until`.
    async fn wait_for_release(&self, key: &LockKey, until: Instant) -> Result<()> {
        let holder = self.paths(key).holder;
        let seen = read_record(&holder).map(|r| r.token);
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            tokio::time::sleep_until(until.min(now + RELEASE_POLL)).await;
            // No record to watch: look again after one poll.
            if seen.is_none() || read_record(&holder).map(|r| r.token) != seen {
                return Ok(());
            }
        }
    }
}

impl Backend for FileBackend {
    fn name(&self) -> &'static str {
        "file"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new().with_ttl_expiry(false)
    }

    fn try_acquire<'a>(&'a self, req: &'a AcquireRequest) -> BoxFuture<'a, Result<Attempt>> {
        // Each attempt is synchronous (a non-blocking `try_lock` and a few
        // small reads and writes), so dropping this future never leaves a
        // lock behind that nobody knows about.
        Box::pin(async move {
            let mut rechecks = 0;
            loop {
                match self.try_acquire_now(req)? {
                    Step::Granted(fencing_token) => return Ok(Attempt::Granted { fencing_token }),
                    Step::Busy(None) if rechecks < BUSY_RECHECKS => {
                        rechecks += 1;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Step::Busy(holder) => return Ok(Attempt::Contended { holder }),
                }
            }
        })
    }

    fn extend<'a>(&'a self, renewal: &'a Renewal) -> BoxFuture<'a, Result<()>> {
        // A file lock has no TTL: extending checks it is still ours.
        Box::pin(async move { self.extend_now(&renewal.lease) })
    }

    fn release<'a>(&'a self, lease: &'a LeaseRef) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.release_now(lease) })
    }

    fn inspect<'a>(&'a self, key: &'a LockKey) -> BoxFuture<'a, Result<Option<HolderInfo>>> {
        Box::pin(async move {
            let mut tries = 0;
            loop {
                if let Some(found) = self.inspect_now(key, tries == BUSY_RECHECKS)? {
                    return Ok(found);
                }
                tries += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    }

    fn wait<'a>(&'a self, req: &'a AcquireRequest, until: Instant) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.wait_for_release(&req.key, until))
    }

    // `close` keeps the default no-op: lockers sharing this backend may
    // still hold locks, and each `Locker::close` releases its own. Files
    // still held are unlocked when the backend is dropped.
}

fn not_held(key: &LockKey) -> Error {
    Error::NotHeld {
        key: key.key.to_string(),
    }
}

#[cfg(test)]
mod tests;
