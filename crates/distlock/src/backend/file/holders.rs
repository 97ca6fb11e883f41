//! Whether a lock file is held, and by which process, asked without
//! touching the lock.
//!
//! A shared `flock` probe tells whether a file is locked, but holds a lock
//! itself for a moment, during which an acquirer's non-blocking exclusive
//! `flock` fails: inspection would change what acquirers see. Linux lists
//! every `flock` in `/proc/locks` with the holder's pid and the file's
//! device and inode, so inspection reads that instead and takes no lock.
//! Each backend checks once that the listing shows a lock of its own in its
//! directory (a file system that reports other device numbers there, as
//! some stacked ones may, fails the check); where the check fails, and on
//! other systems, the probe remains.

use std::fs::{File, TryLockError};
use std::io;
use std::path::Path;

/// Who holds a lock file.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Holder {
    /// No exclusive `flock` (where the system lists locks: none at all).
    Free,
    /// Only shared `flock`s: permit holders. Reported only where the system
    /// lists locks; a probe sees [`Free`](Holder::Free) instead.
    Shared,
    /// Held; by this process id (in our pid namespace) when the system says.
    Held(Option<u32>),
}

/// How this backend asks.
#[derive(Debug)]
pub(super) struct HolderLookup {
    /// Whether `/proc/locks` proved to list this directory's locks.
    listed: bool,
}

impl HolderLookup {
    /// Checks, with a lock of our own on a scratch file in `dir`, whether
    /// the kernel's list of locks can be trusted there.
    pub(super) fn for_dir(dir: &Path) -> Self {
        HolderLookup {
            listed: lists_locks_in(dir),
        }
    }

    /// Who holds the lock on `file`. The probe (where the kernel's list
    /// cannot be used) is a shared `flock`, so it never disturbs permit
    /// holders, and sees only an exclusive holder.
    pub(super) fn holder(&self, file: &File) -> io::Result<Holder> {
        if self.listed {
            return listed_holder(file);
        }
        match file.try_lock_shared() {
            Ok(()) => {
                file.unlock()?;
                Ok(Holder::Free)
            }
            Err(TryLockError::WouldBlock) => Ok(Holder::Held(None)),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}

#[cfg(target_os = "linux")]
fn lists_locks_in(dir: &Path) -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let scratch = dir.join(format!(
        ".distlock-probe-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let listed = File::create(&scratch).is_ok_and(|file| {
        file.try_lock().is_ok()
            && listed_holder(&file).is_ok_and(|h| h == Holder::Held(Some(std::process::id())))
    });
    let _ = std::fs::remove_file(&scratch);
    listed
}

#[cfg(not(target_os = "linux"))]
fn lists_locks_in(_dir: &Path) -> bool {
    false
}

/// The holder of an exclusive `flock` on `file`, from `/proc/locks`.
#[cfg(target_os = "linux")]
fn listed_holder(file: &File) -> io::Result<Holder> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    let dev = meta.dev();
    let id = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev),
        meta.ino()
    );
    let table = std::fs::read_to_string("/proc/locks")?;
    Ok(holder_in(&table, &id))
}

#[cfg(not(target_os = "linux"))]
fn listed_holder(_file: &File) -> io::Result<Holder> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// The holder of the granted exclusive `flock` on the file `id`
/// (`major:minor:inode`) in a `/proc/locks` listing, else whether shared
/// ones are granted. Waiting requests (`->` lines) and other kinds of locks
/// do not count.
fn holder_in(table: &str, id: &str) -> Holder {
    let mut shared = false;
    for line in table.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, "WRITE", pid, file, ..] if *file == id => {
                return Holder::Held(pid.parse().ok());
            }
            [_, "FLOCK", _, "READ", _, file, ..] if *file == id => shared = true,
            _ => {}
        }
    }
    if shared { Holder::Shared } else { Holder::Free }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_granted_exclusive_flock_on_the_file_counts() {
        let table = "\
1: POSIX  ADVISORY  WRITE 10 fe:00:42 0 EOF
2: FLOCK  ADVISORY  READ 11 fe:00:42 0 EOF
3: FLOCK  ADVISORY  WRITE 12 fe:00:43 0 EOF
3: -> FLOCK  ADVISORY  WRITE 13 fe:00:42 0 EOF
4: FLOCK  ADVISORY  WRITE 14 fe:00:42 0 EOF
";
        assert_eq!(holder_in(table, "fe:00:42"), Holder::Held(Some(14)));
        assert_eq!(holder_in(table, "fe:00:44"), Holder::Free);
        assert_eq!(
            holder_in(&table[..table.find("4:").unwrap()], "fe:00:42"),
            Holder::Shared
        );
        assert_eq!(
            holder_in(&table[..table.find("2:").unwrap()], "fe:00:42"),
            Holder::Free
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_kernels_list_names_this_process_as_the_holder() {
        let dir = std::env::temp_dir().join(format!("distlock-holders-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lookup = HolderLookup::for_dir(&dir);
        assert!(
            lookup.listed,
            "/proc/locks lists locks in {}",
            dir.display()
        );
        let path = dir.join("k.lock");
        let file = File::create(&path).unwrap();
        assert_eq!(lookup.holder(&file).unwrap(), Holder::Free);
        let other = File::open(&path).unwrap();
        other.try_lock().unwrap();
        assert_eq!(
            lookup.holder(&file).unwrap(),
            Holder::Held(Some(std::process::id()))
        );
        drop(other);
        assert_eq!(lookup.holder(&file).unwrap(), Holder::Free);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
