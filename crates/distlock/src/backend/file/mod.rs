//! The file backend: locks shared by the processes of one host, with no
//! server. A lock is an OS file lock (`flock`) on one file per key, so the
//! kernel frees it the moment its holder exits, crashes or is SIGKILLed.
//!
//! # Layout
//!
//! Inside the directory, each namespace has a folder `ns-<namespace>`, and
//! each key up to these files in it. The ones ending in `.lock` are only
//! ever `flock`ed and are never deleted by distlock: deleting a file others
//! may be locking would let two processes lock two different files of the
//! same name. Unlocked, they hold nothing of a lease. The others are
//! records, removed when their lease ends.
//!
//! * `<name>.lock` — the file that is `flock`ed: exclusively by a lock's
//!   holder, shared by each permit holder, so a lock excludes permits and
//!   permits a lock. It holds the key's fencing counter and the full key,
//!   and is created once (atomically, complete).
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
//! * `<name>.permit-<i>` — permit slot `i`, for keys taken by permits (see
//!   below): its holder keeps an exclusive `flock` on it, and its record
//!   (as the `.holder` one, plus the limit) in it. Removed on release; a
//!   crashed holder's stays behind unlocked, which makes it free (the next
//!   permit takes it over) and not a holder.
//! * `<name>.guard.lock` — `flock`ed for the moment of each permit's
//!   admission, and by [`holders`] while it reads the slots; it records the
//!   limit of the key's permits.
//! * `<name>.gate.lock` — each writer waiting for permits to go keeps a
//!   shared `flock` on it, which holds back the permits asked for after it.
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
//! # Permits
//!
//! A permit of limit `n` (a semaphore's; a reader's is one of `u32::MAX`)
//! is admitted under the guard's `flock`, so admissions of a key happen one
//! at a time across processes: refused at once with
//! [`Error::LimitMismatch`] when a live slot's holder has another limit
//! (the guard's recorded limit spares looking at the slots while it stays
//! the same; a crashed holder's slot is unlocked, so it never counts);
//! refused (`Contended`) while a writer waits at the gate; then it takes a
//! shared `flock` on `.lock` (refused while a lock holds it) and the lowest
//! slot below `n` nobody has locked (refused when there is none), bumps
//! the key's fencing counter, and writes its record into its slot.
//!
//! A lock request refused, from an obtain that will wait, keeps a shared
//! `flock` on the gate until it is granted or released
//! ([`Capabilities::queues_waiters`]: the engine releases it when the
//! obtain gives up); the kernel drops it when the process exits. Permits
//! therefore cannot starve a writer. A key on which no permit was ever
//! asked for gets no gate (nothing to hold back, one failed `open` per
//! refusal), and a lock request does not check the gate (lock requests
//! are not served in order among themselves, as before). A permit's lease is its two `flock`s: it too lives as long as
//! its holder, and comes back the moment its process exits.
//!
//! [`holders`] lists the holders of live slots, oldest grant first, read
//! under the guard (so it never makes a slot look taken to an admission),
//! and [`inspect`] the newest of them. A process stopped (SIGSTOP) during
//! the microseconds it holds the guard holds up the key's admissions until
//! it resumes; each attempt is bounded by the engine's timeouts.
//!
//! # What differs from a TTL store
//!
//! [`Capabilities::ttl_expiry`] is false: a lock lives exactly as long as
//! its holder keeps it, whatever its TTL. The engine therefore gives such
//! locks no validity deadline; extending only checks that the lock is still
//! ours. Deleting or replacing a `.lock` file (or a permit's slot) behind
//! its holder's back is detected by the next extend ([`Error::NotHeld`],
//! so [`Lock::lost`](crate::Lock::lost) fires). Ownership is checked against
//! the owner token inside this process; other processes cannot release a
//! lock they do not hold, since the OS lock belongs to the holder's open
//! file.
//!
//! A [`Lock`](crate::Lock) dropped where no tokio runtime can release it
//! stays held until the backend itself is dropped or the process exits
//! (there is no TTL to end it sooner); so does a waiting writer's place at
//! the gate when its obtain is dropped there.
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
//! [`holders`]: crate::Locker::holders
//! [`Capabilities::ttl_expiry`]: crate::backend::Capabilities::ttl_expiry
//! [`Capabilities::queues_waiters`]: crate::backend::Capabilities::queues_waiters

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
use crate::holder::{HolderInfo, Holders};
use crate::key::{Key, LockKey};
use crate::lease::{LeaseRef, OwnerToken, Share};

mod disk;
mod errors;
mod holders;
mod inspect;
mod permits;

use disk::{
    KeyPaths, LOCK_HEADER, Record, TOKEN_DIGITS, create_lock_file, file_name, is_current,
    micros_since_epoch, namespace_dir, open_lock_file, read_lock_file, write_record,
};
use errors::{Action, io_error};

use holders::{Holder, HolderLookup};
use permits::{Permit, take};

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
    held: Mutex<Leases>,
    holders: HolderLookup,
}

/// What this backend holds: each entry's open files carry its OS locks.
#[derive(Debug, Default)]
struct Leases {
    locks: HashMap<LockKey, Held>,
    permits: HashMap<LockKey, HashMap<OwnerToken, Permit>>,
    /// Waiting writers' shared `flock`s on the gate.
    gates: HashMap<LockKey, HashMap<OwnerToken, File>>,
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
    /// Held by someone else exclusively (as far as we can tell); `None`
    /// when the holder's record is not (yet) there: look again.
    Busy(Option<HolderInfo>),
    /// Held by permits; or, for a permit, none left or a writer waiting.
    /// Final.
    Shared(Option<HolderInfo>),
}

/// `.lock` opened and `flock`ed as asked, or who is in the way.
enum Opened {
    Locked(File),
    Busy(Step),
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
            held: Mutex::new(Leases::default()),
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
            name,
        }
    }

    fn held(&self) -> MutexGuard<'_, Leases> {
        // Every update is one insert or remove: a poisoned map is consistent.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One synchronous attempt. Never blocks on the lock: `try_lock` only.
    fn try_acquire_now(&self, req: &AcquireRequest) -> Result<Step> {
        let mut held = self.held();
        if let Some(h) = held.locks.get(&req.key) {
            return Ok(if h.owner == req.owner {
                Step::Granted(h.fencing_token)
            } else {
                Step::Busy(Some(self.info(h)))
            });
        }
        let paths = self.paths(&req.key);
        let file = match self.lock_file(&paths, &req.key.key, false)? {
            Opened::Locked(file) => file,
            Opened::Busy(step) => return Ok(step),
        };
        let fencing_token = bump_token(&file, &req.key.key, &paths.lock)?;
        let since = SystemTime::now();
        let record = Record {
            token: fencing_token,
            pid: std::process::id(),
            host: self.host.clone(),
            since,
            limit: None,
            metadata: req.metadata.as_deref().map(str::to_owned),
        };
        write_record(&paths, &record)
            .map_err(|e| io_error("acquire", Action::WriteHolder, &paths.holder, e))?;
        held.locks.insert(
            req.key.clone(),
            Held {
                owner: req.owner,
                file,
                fencing_token,
                since,
                metadata: req.metadata.clone(),
            },
        );
        // Granted: a writer's place at the gate has served its purpose.
        if !held.gates.is_empty() {
            take(&mut held.gates, &req.key, req.owner);
        }
        Ok(Step::Granted(fencing_token))
    }

    /// Opens `.lock` (creating it if missing) and takes a non-blocking
    /// `flock` on it, exclusive or `shared`.
    fn lock_file(&self, paths: &KeyPaths, key: &Key, shared: bool) -> Result<Opened> {
        // A few rounds: the file may be deleted or replaced between opening
        // and locking it (an operator cleaning up); then lock the new one.
        for _ in 0..8 {
            let file = match open_lock_file(&paths.lock, true) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    create_lock_file(paths, key)?;
                    continue;
                }
                Err(e) => return Err(io_error("acquire", Action::OpenLockFile, &paths.lock, e)),
            };
            let failed = |e| io_error("acquire", Action::UseLockFile, &paths.lock, e);
            let locked = if shared {
                file.try_lock_shared()
            } else {
                file.try_lock()
            };
            match locked {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let pid = match self.holders.holder(&file) {
                        Ok(Holder::Shared) => return Ok(Opened::Busy(Step::Shared(None))),
                        Ok(Holder::Held(pid)) => pid,
                        _ => None,
                    };
                    let holder = self.busy_holder(paths, &file, key, pid)?;
                    return Ok(Opened::Busy(Step::Busy(holder)));
                }
                Err(TryLockError::Error(e)) => return Err(failed(e)),
            }
            if is_current(&file, &paths.lock).map_err(failed)? {
                return Ok(Opened::Locked(file));
            } // else unlocked when `file` drops
        }
        Err(Error::backend(
            "file",
            "acquire",
            format!("{} keeps being replaced", paths.lock.display()),
        ))
    }

    /// Locks (one attempt, with a few quick looks again while a holder's
    /// record is missing); a request that will wait takes its place at the
    /// gate, holding back the permits asked for after it.
    async fn acquire_lock(&self, req: &AcquireRequest) -> Result<Attempt> {
        let mut rechecks = 0;
        loop {
            let holder = match self.try_acquire_now(req)? {
                Step::Granted(fencing_token) => return Ok(Attempt::Granted { fencing_token }),
                Step::Busy(None) if rechecks < BUSY_RECHECKS => {
                    rechecks += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                Step::Busy(holder) | Step::Shared(holder) => holder,
            };
            if req.will_wait {
                self.enter_gate(req).await?;
            }
            return Ok(Attempt::Contended { holder });
        }
    }

    fn extend_now(&self, lease: &LeaseRef) -> Result<()> {
        let mut held = self.held();
        let Some(h) = held
            .locks
            .get(&lease.key)
            .filter(|h| h.owner == lease.owner)
        else {
            return Err(not_held(&lease.key));
        };
        let path = self.paths(&lease.key).lock;
        match is_current(&h.file, &path) {
            Ok(true) => Ok(()),
            Ok(false) => {
                // Deleted or replaced behind our back: someone else may lock
                // the new file now. Let go of ours.
                held.locks.remove(&lease.key);
                Err(not_held(&lease.key))
            }
            Err(e) => Err(io_error("extend", Action::UseLockFile, &path, e)),
        }
    }

    /// Releases the lock, or the place at the gate of a request that gave
    /// up (answered `NotHeld`: it held nothing).
    fn release_now(&self, lease: &LeaseRef) -> Result<()> {
        let mut held = self.held();
        if !held
            .locks
            .get(&lease.key)
            .is_some_and(|h| h.owner == lease.owner)
        {
            take(&mut held.gates, &lease.key, lease.owner);
            return Err(not_held(&lease.key));
        }
        let h = held.locks.remove(&lease.key).expect("checked above");
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
}

/// Bumps the fencing counter of the `.lock` file we hold a `flock` on
/// (exclusive, or shared under the guard, so no one else writes it) and
/// returns the new token.
fn bump_token(file: &File, key: &Key, path: &Path) -> Result<u64> {
    let last = read_lock_file(file, key, path)?;
    let fencing_token = (last + 1).max(micros_since_epoch());
    file.write_all_at(
        format!("{fencing_token:0TOKEN_DIGITS$}").as_bytes(),
        LOCK_HEADER.len() as u64,
    )
    .map_err(|e| io_error("acquire", Action::UseLockFile, path, e))?;
    Ok(fencing_token)
}

impl Backend for FileBackend {
    fn name(&self) -> &'static str {
        "file"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_ttl_expiry(false)
            .with_queues_waiters(true)
            .with_permits(true)
    }

    fn try_acquire<'a>(&'a self, req: &'a AcquireRequest) -> BoxFuture<'a, Result<Attempt>> {
        // Each attempt is synchronous between its awaits (a non-blocking
        // `try_lock` and a few small reads and writes), so dropping this
        // future never leaves a lock behind that nobody knows about.
        Box::pin(async move {
            match req.share {
                Share::Exclusive => self.acquire_lock(req).await,
                Share::Permit { limit } => self.acquire_permit(req, limit).await,
            }
        })
    }

    fn extend<'a>(&'a self, renewal: &'a Renewal) -> BoxFuture<'a, Result<()>> {
        // A file lock has no TTL: extending checks it is still ours.
        Box::pin(async move {
            match renewal.lease.share {
                Share::Exclusive => self.extend_now(&renewal.lease),
                Share::Permit { .. } => self.extend_permit(&renewal.lease),
            }
        })
    }

    fn release<'a>(&'a self, lease: &'a LeaseRef) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            match lease.share {
                Share::Exclusive => self.release_now(lease),
                Share::Permit { .. } => self.release_permit(lease),
            }
        })
    }

    fn inspect<'a>(&'a self, key: &'a LockKey) -> BoxFuture<'a, Result<Option<HolderInfo>>> {
        Box::pin(async move {
            match self.lock_holder(key).await? {
                Some(holder) => Ok(Some(holder)),
                None => Ok(self.permit_holders(key).await?.holders.pop()),
            }
        })
    }

    fn holders<'a>(&'a self, key: &'a LockKey) -> BoxFuture<'a, Result<Holders>> {
        Box::pin(async move {
            match self.lock_holder(key).await? {
                Some(holder) => Ok(Holders::exclusive(holder)),
                None => self.permit_holders(key).await,
            }
        })
    }

    fn wait<'a>(&'a self, req: &'a AcquireRequest, until: Instant) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.wait_for_release(req, until))
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
