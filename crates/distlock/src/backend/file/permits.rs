//! Permits: admission under the guard, slots, the writers' gate, and the
//! listing of holders (see the module docs of the file backend).

use std::collections::HashMap;
use std::fs::{File, TryLockError};
use std::hash::Hash;
use std::io;
use std::time::{Duration, SystemTime};

use super::disk::{
    KeyPaths, Record, is_current, open_lock_file, open_or_create, read_guard_limit, read_record_in,
    write_guard_limit, write_record_in,
};
use super::errors::{Action, io_error};
use super::{BUSY_RECHECKS, FileBackend, Opened, Step, bump_token, not_held};
use crate::backend::{AcquireRequest, Attempt};
use crate::error::{Error, Result};
use crate::holder::Holders;
use crate::key::LockKey;
use crate::lease::{LeaseRef, OwnerToken};

/// How often an admission looks at a guard another one holds. Admissions
/// hold it for tens of microseconds, so this is the timer's finest step.
const GUARD_POLL: Duration = Duration::from_millis(1);

/// A permit this backend holds: a shared `flock` on `.lock` (which keeps
/// locks out) and an exclusive one on its slot (which counts it).
#[derive(Debug)]
pub(super) struct Permit {
    lock: File,
    slot: File,
    index: u32,
    fencing_token: u64,
}

/// The guard's `flock`, held while it lives.
struct Guard {
    file: File,
}

/// Removes `owner`'s entry for `key` from a map of per-key entries, and the
/// key's map when that was the last.
pub(super) fn take<K: Eq + Hash, V>(
    map: &mut HashMap<K, HashMap<OwnerToken, V>>,
    key: &K,
    owner: OwnerToken,
) -> Option<V> {
    let entries = map.get_mut(key)?;
    let taken = entries.remove(&owner);
    if entries.is_empty() {
        map.remove(key);
    }
    taken
}

impl Permit {
    /// Whether both files are still the ones their names give.
    fn is_current(&self, paths: &KeyPaths) -> io::Result<bool> {
        Ok(
            is_current(&self.lock, &paths.lock)?
                && is_current(&self.slot, &paths.slot(self.index))?,
        )
    }

    /// Lets go of the permit, removing its slot first if the slot is still
    /// ours (never one someone took over after it was deleted behind our
    /// back). Returns whether it was.
    fn end(self, paths: &KeyPaths) -> bool {
        let path = paths.slot(self.index);
        let ours = is_current(&self.slot, &path).unwrap_or(false);
        if ours
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::debug!(path = %path.display(), error = %e, "removing a permit's slot failed");
        }
        ours // the files close as `self` drops: the OS locks are released
    }
}

impl FileBackend {
    /// Takes the guard of `paths`' key, waiting (polling) while another
    /// admission holds it. `None` when it does not exist and `create` is
    /// false: no permit was ever asked for on the key.
    async fn lock_guard(
        &self,
        op: &'static str,
        paths: &KeyPaths,
        create: bool,
    ) -> Result<Option<Guard>> {
        let path = paths.guard();
        for _ in 0..8 {
            let opened = if create {
                open_or_create(paths, &path)
            } else {
                open_lock_file(&path, false)
            };
            let file = match opened {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
                Err(e) => return Err(io_error(op, Action::OpenPermitFile, &path, e)),
            };
            let failed = |e| io_error(op, Action::UseLockFile, &path, e);
            loop {
                match file.try_lock() {
                    Ok(()) => break,
                    Err(TryLockError::WouldBlock) => tokio::time::sleep(GUARD_POLL).await,
                    Err(TryLockError::Error(e)) => return Err(failed(e)),
                }
            }
            if is_current(&file, &path).map_err(failed)? {
                return Ok(Some(Guard { file }));
            }
        }
        Err(Error::backend(
            "file",
            op,
            format!("{} keeps being replaced", path.display()),
        ))
    }

    /// One attempt at a permit of `limit`, with a few quick looks again
    /// while a lock's holder has not written its record yet.
    pub(super) async fn acquire_permit(&self, req: &AcquireRequest, limit: u32) -> Result<Attempt> {
        let paths = self.paths(&req.key);
        let mut rechecks = 0;
        loop {
            let step = {
                let guard = self.lock_guard("acquire", &paths, true).await?;
                let guard = guard.expect("created if missing");
                self.admit_now(req, limit, &guard, &paths)?
            };
            match step {
                Step::Granted(fencing_token) => return Ok(Attempt::Granted { fencing_token }),
                Step::Busy(None) if rechecks < BUSY_RECHECKS => {
                    rechecks += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Step::Busy(holder) | Step::Shared(holder) => {
                    return Ok(Attempt::Contended { holder });
                }
            }
        }
    }

    /// The admission proper, under the guard: limit, gate, lock, slot.
    fn admit_now(
        &self,
        req: &AcquireRequest,
        limit: u32,
        guard: &Guard,
        paths: &KeyPaths,
    ) -> Result<Step> {
        let mut held = self.held();
        if let Some(mine) = held.permits.get(&req.key).and_then(|p| p.get(&req.owner)) {
            return Ok(Step::Granted(mine.fencing_token));
        }
        let guard_path = paths.guard();
        let guard_failed = |e| io_error("acquire", Action::UseLockFile, &guard_path, e);
        let recorded = read_guard_limit(&guard.file).map_err(guard_failed)?;
        if recorded != Some(limit) {
            // The recorded limit counts only while a permit of it is live.
            if let Some(live) = self.live_slots("acquire", paths)?.first()
                && let Some(other) = live.limit.or(recorded).filter(|&l| l != limit)
            {
                return Err(Error::limit_mismatch(&req.key, limit, other));
            }
            write_guard_limit(&guard.file, limit).map_err(guard_failed)?;
        }
        if writer_waits(paths)? {
            return Ok(Step::Shared(None));
        }
        let lock = match self.lock_file(paths, &req.key.key, true)? {
            Opened::Locked(file) => file,
            Opened::Busy(step) => return Ok(step),
        };
        let Some((index, slot)) = take_slot(paths, limit)? else {
            return Ok(Step::Shared(None));
        };
        let permit = Permit {
            lock,
            slot,
            index,
            fencing_token: 0,
        };
        let granted = bump_token(&permit.lock, &req.key.key, &paths.lock).and_then(|token| {
            let record = Record {
                token,
                pid: std::process::id(),
                host: self.host.clone(),
                since: SystemTime::now(),
                limit: Some(limit),
                metadata: req.metadata.as_deref().map(str::to_owned),
            };
            write_record_in(&permit.slot, &record)
                .map_err(|e| io_error("acquire", Action::WriteHolder, &paths.slot(index), e))?;
            Ok(token)
        });
        match granted {
            Ok(fencing_token) => {
                let permit = Permit {
                    fencing_token,
                    ..permit
                };
                held.permits
                    .entry(req.key.clone())
                    .or_default()
                    .insert(req.owner, permit);
                Ok(Step::Granted(fencing_token))
            }
            Err(e) => {
                permit.end(paths);
                Err(e)
            }
        }
    }

    /// Takes a place at the gate for `req`, a refused exclusive request
    /// that will wait, unless it has one or no permit was ever asked for on
    /// its key (no guard file).
    pub(super) async fn enter_gate(&self, req: &AcquireRequest) -> Result<()> {
        if self
            .held()
            .gates
            .get(&req.key)
            .is_some_and(|g| g.contains_key(&req.owner))
        {
            return Ok(());
        }
        let paths = self.paths(&req.key);
        // Under the guard: admissions probe the gate under it, so a probe
        // never makes our shared `flock` fail.
        let Some(_guard) = self.lock_guard("acquire", &paths, false).await? else {
            return Ok(());
        };
        let path = paths.gate();
        let file = open_or_create(&paths, &path)
            .map_err(|e| io_error("acquire", Action::OpenPermitFile, &path, e))?;
        let failed = |e| io_error("acquire", Action::UseLockFile, &path, e);
        match file.try_lock_shared() {
            // Replaced under us, or a foreign probe: the next attempt enters.
            Ok(()) if !is_current(&file, &path).map_err(failed)? => {}
            Err(TryLockError::WouldBlock) => {}
            Ok(()) => {
                self.held()
                    .gates
                    .entry(req.key.clone())
                    .or_default()
                    .insert(req.owner, file);
            }
            Err(TryLockError::Error(e)) => return Err(failed(e)),
        }
        Ok(())
    }

    /// Checks that the permit of `lease` is still ours; lets go of it if
    /// its files were deleted or replaced behind our back.
    pub(super) fn extend_permit(&self, lease: &LeaseRef) -> Result<()> {
        let mut held = self.held();
        let Some(permit) = held
            .permits
            .get(&lease.key)
            .and_then(|p| p.get(&lease.owner))
        else {
            return Err(not_held(&lease.key));
        };
        let paths = self.paths(&lease.key);
        match permit.is_current(&paths) {
            Ok(true) => Ok(()),
            Ok(false) => {
                if let Some(permit) = take(&mut held.permits, &lease.key, lease.owner) {
                    permit.end(&paths);
                }
                Err(not_held(&lease.key))
            }
            Err(e) => Err(io_error("extend", Action::UseLockFile, &paths.lock, e)),
        }
    }

    pub(super) fn release_permit(&self, lease: &LeaseRef) -> Result<()> {
        let permit = take(&mut self.held().permits, &lease.key, lease.owner)
            .ok_or_else(|| not_held(&lease.key))?;
        let paths = self.paths(&lease.key);
        let lock_current = is_current(&permit.lock, &paths.lock).unwrap_or(false);
        if permit.end(&paths) && lock_current {
            Ok(())
        } else {
            Err(not_held(&lease.key))
        }
    }

    /// The permit holders of `key`, oldest grant first, with their limit.
    pub(super) async fn permit_holders(&self, key: &LockKey) -> Result<Holders> {
        let paths = self.paths(key);
        let Some(_guard) = self.lock_guard("inspect", &paths, false).await? else {
            return Ok(Holders::none());
        };
        let live = self.live_slots("inspect", &paths)?;
        Ok(match live.first().and_then(|r| r.limit) {
            Some(limit) => Holders::permits(
                limit,
                live.into_iter().map(|r| self.record_info(r)).collect(),
            ),
            None => Holders::none(),
        })
    }

    /// The records of the key's slots someone holds, oldest grant first.
    /// Called under the guard, so no admission is taking a slot meanwhile
    /// (the shared probe would make it look taken).
    fn live_slots(&self, op: &'static str, paths: &KeyPaths) -> Result<Vec<Record>> {
        let list_failed = |e| io_error(op, Action::ListDir, &paths.dir, e);
        let entries = match std::fs::read_dir(&paths.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(list_failed(e)),
        };
        let mut live = Vec::new();
        for entry in entries {
            let entry = entry.map_err(list_failed)?;
            if entry
                .file_name()
                .to_str()
                .and_then(|name| paths.slot_index(name))
                .is_none()
            {
                continue;
            }
            let path = entry.path();
            let file = match open_lock_file(&path, false) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // released
                Err(e) => return Err(io_error(op, Action::ReadLockFile, &path, e)),
            };
            match file.try_lock_shared() {
                Err(TryLockError::WouldBlock) => live.extend(read_record_in(&file)),
                Ok(()) => {} // a crashed holder's: free
                Err(TryLockError::Error(e)) => {
                    return Err(io_error(op, Action::UseLockFile, &path, e));
                }
            }
        }
        live.sort_by_key(|r| r.token);
        Ok(live)
    }
}

/// Whether a writer waits at the gate. Under the guard.
fn writer_waits(paths: &KeyPaths) -> Result<bool> {
    let path = paths.gate();
    let file = match open_lock_file(&path, false) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_error("acquire", Action::ReadLockFile, &path, e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(false), // unlocked as `file` drops
        Err(TryLockError::WouldBlock) => Ok(true),
        Err(TryLockError::Error(e)) => Err(io_error("acquire", Action::UseLockFile, &path, e)),
    }
}

/// The lowest slot below `limit` nobody holds, locked; `None` when all
/// are taken. Under the guard, so only releases change slots meanwhile.
fn take_slot(paths: &KeyPaths, limit: u32) -> Result<Option<(u32, File)>> {
    for index in 0..limit {
        let path = paths.slot(index);
        let failed = |e| io_error("acquire", Action::UseLockFile, &path, e);
        // A second round at most: its holder may delete the slot between
        // our opening and locking it; then the name is free for a new one.
        for _ in 0..2 {
            let file = open_or_create(paths, &path)
                .map_err(|e| io_error("acquire", Action::OpenPermitFile, &path, e))?;
            match file.try_lock() {
                Ok(()) if is_current(&file, &path).map_err(failed)? => {
                    return Ok(Some((index, file)));
                }
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => break,
                Err(TryLockError::Error(e)) => return Err(failed(e)),
            }
        }
    }
    Ok(None)
}
