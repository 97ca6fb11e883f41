//! Read-only looks at a key: who holds its lock, and waiting for that to
//! change.

use std::fs::File;
use std::io;
use std::time::Duration;

use tokio::time::Instant;

use super::disk::{KeyPaths, Record, open_lock_file, read_lock_file, read_record};
use super::errors::{Action, io_error};
use super::holders::Holder;
use super::{BUSY_RECHECKS, FileBackend, Held, RELEASE_POLL};
use crate::backend::AcquireRequest;
use crate::error::Result;
use crate::holder::HolderInfo;
use crate::key::{Key, LockKey};
use crate::lease::Share;

impl FileBackend {
    /// The holder of a lock `file` that someone holds, when its record is
    /// current: not left behind by an earlier holder (its token is older
    /// than the file's, or the system names another process as the holder).
    pub(super) fn busy_holder(
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

    pub(super) fn info(&self, h: &Held) -> HolderInfo {
        HolderInfo::new(h.fencing_token)
            .metadata(h.metadata.as_deref().map(str::to_owned))
            .process(std::process::id(), self.host.clone())
            .since(h.since)
    }

    pub(super) fn record_info(&self, r: Record) -> HolderInfo {
        HolderInfo::new(r.token)
            .metadata(r.metadata)
            .process(r.pid, r.host)
            .since(r.since)
    }

    /// One read-only look: `Some(step)` when decided, `None` to look again.
    pub(super) fn inspect_now(
        &self,
        key: &LockKey,
        last_try: bool,
    ) -> Result<Option<Option<HolderInfo>>> {
        if let Some(h) = self.held().locks.get(key) {
            return Ok(Some(Some(self.info(h))));
        }
        let paths = self.paths(key);
        let file = match open_lock_file(&paths.lock, false) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(None)),
            Err(e) => return Err(io_error("inspect", Action::ReadLockFile, &paths.lock, e)),
        };
        let pid = match self.holders.holder(&file) {
            Ok(Holder::Free | Holder::Shared) => return Ok(Some(None)),
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

    /// The lock's holder, if a lock (not permits) holds `key`.
    pub(super) async fn lock_holder(&self, key: &LockKey) -> Result<Option<HolderInfo>> {
        let mut tries = 0;
        loop {
            if let Some(found) = self.inspect_now(key, tries == BUSY_RECHECKS)? {
                return Ok(found);
            }
            tries += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Returns when `req`'s key may have become free for it, or at
    /// `until`: when a lock's holder record changes, else (nothing to
    /// watch: permits, or a holder without a current record) after one
    /// poll.
    pub(super) async fn wait_for_release(
        &self,
        req: &AcquireRequest,
        until: Instant,
    ) -> Result<()> {
        let paths = self.paths(&req.key);
        let watched = || match req.share {
            Share::Exclusive => self.current_token(&paths, &req.key.key),
            Share::Permit { .. } => None,
        };
        let seen = watched();
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            tokio::time::sleep_until(until.min(now + RELEASE_POLL)).await;
            if seen.is_none() || watched() != seen {
                return Ok(());
            }
        }
    }

    /// The token of the lock holder's record, if it is current (not left
    /// behind by an earlier holder: permits granted since moved the
    /// counter past it).
    fn current_token(&self, paths: &KeyPaths, key: &Key) -> Option<u64> {
        let record = read_record(&paths.holder)?;
        let file = open_lock_file(&paths.lock, false).ok()?;
        let counter = read_lock_file(&file, key, &paths.lock).ok()?;
        (record.token >= counter).then_some(record.token)
    }
}
