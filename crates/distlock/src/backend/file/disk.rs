//! What is on disk: file names, lock files with their token, holder
//! records, and the small helpers that read and write them.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::errors::{Action, io_error};
use crate::error::{Error, Result};
use crate::key::{Key, Namespace};

/// The longest percent-encoded key kept readable in a file name.
pub(super) const MAX_ENCODED: usize = 200;

/// The start of every `.lock` file, followed by the 20-digit token.
pub(super) const LOCK_HEADER: &[u8] = b"distlock file lock v1\ntoken ";
pub(super) const TOKEN_DIGITS: usize = 20;
const KEY_LINE: &[u8] = b"\nkey ";

const HOLDER_HEADER: &str = "distlock holder v1";

/// The start of a `.guard.lock` file, followed by the 10-digit limit the
/// live permits share (or `none`).
const GUARD_HEADER: &str = "distlock guard v1\nlimit ";

/// Where one key's files live.
#[derive(Debug)]
pub(super) struct KeyPaths {
    pub(super) dir: PathBuf,
    pub(super) lock: PathBuf,
    pub(super) holder: PathBuf,
    /// The file name stem of the key ([`file_name`]).
    pub(super) name: String,
}

impl KeyPaths {
    /// The file whose `flock` serialises permit admissions and which
    /// records the limit of the live permits.
    pub(super) fn guard(&self) -> PathBuf {
        self.dir.join(format!("{}.guard.lock", self.name))
    }

    /// The file waiting writers hold a shared `flock` on.
    pub(super) fn gate(&self) -> PathBuf {
        self.dir.join(format!("{}.gate.lock", self.name))
    }

    /// Permit slot `index`: its holder's `flock` and record.
    pub(super) fn slot(&self, index: u32) -> PathBuf {
        self.dir.join(format!("{}.permit-{index}", self.name))
    }

    /// The slot index a file name in [`dir`](Self::dir) names, if it is one
    /// of this key's slots. Stems contain no `.`, so no other key's file
    /// matches.
    pub(super) fn slot_index(&self, file_name: &str) -> Option<u32> {
        let digits = file_name
            .strip_prefix(self.name.as_str())?
            .strip_prefix(".permit-")?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }
}

/// The holder record, as stored in `<name>.holder`.
#[derive(Debug, PartialEq)]
pub(super) struct Record {
    pub(super) token: u64,
    pub(super) pid: u32,
    pub(super) host: String,
    pub(super) since: SystemTime,
    /// The permit limit, in a permit's record; `None` for a lock's.
    pub(super) limit: Option<u32>,
    pub(super) metadata: Option<String>,
}

pub(super) fn micros_since_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The folder of a namespace. Namespaces may be `.` or `..`; the prefix
/// keeps them inside the directory.
pub(super) fn namespace_dir(namespace: &Namespace) -> String {
    format!("ns-{namespace}")
}

/// The injective, directory-safe file name stem of a key.
pub(super) fn file_name(key: &Key) -> String {
    let mut encoded = String::with_capacity(key.as_str().len() + 2);
    encoded.push_str("k-");
    for b in key.as_str().bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            encoded.push(char::from(b));
        } else {
            let _ = write!(encoded, "%{b:02X}");
        }
        if encoded.len() > MAX_ENCODED {
            let digest = Sha256::digest(key.as_str().as_bytes());
            let mut hashed = String::with_capacity(2 + 64);
            hashed.push_str("h-");
            for b in digest {
                let _ = write!(hashed, "{b:02x}");
            }
            return hashed;
        }
    }
    encoded
}

pub(super) fn open_lock_file(path: &Path, write: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// Creates the `.lock` file complete, or leaves an existing one alone: the
/// content is written to a temporary file first and hard-linked into place,
/// which fails if the name exists.
pub(super) fn create_lock_file(paths: &KeyPaths, key: &Key) -> Result<()> {
    std::fs::create_dir_all(&paths.dir)
        .map_err(|e| io_error("acquire", Action::CreateDir, &paths.dir, e))?;
    let failed = |e| io_error("acquire", Action::CreateLockFile, &paths.lock, e);
    let mut content = Vec::with_capacity(LOCK_HEADER.len() + 32 + key.as_str().len());
    content.extend_from_slice(LOCK_HEADER);
    content.extend_from_slice(format!("{:0TOKEN_DIGITS$}", 0).as_bytes());
    content.extend_from_slice(KEY_LINE);
    content.extend_from_slice(key.as_str().as_bytes());
    content.push(b'\n');
    let tmp = write_temp(&paths.dir, &content).map_err(failed)?;
    let linked = std::fs::hard_link(&tmp, &paths.lock);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(failed(e)),
        _ => Ok(()),
    }
}

/// Writes `content` to a new temporary file in `dir` and returns its path.
/// Temporary names start with a dot, which no lock or holder file does.
fn write_temp(dir: &Path, content: &[u8]) -> io::Result<PathBuf> {
    let tmp = dir.join(format!(
        ".tmp-{}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)?;
    if let Err(e) = file.write_all(content) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// Whether `path` still names the file `file` has open.
pub(super) fn is_current(file: &File, path: &Path) -> io::Result<bool> {
    let open = file.metadata()?;
    match std::fs::symlink_metadata(path) {
        Ok(named) => Ok(named.dev() == open.dev() && named.ino() == open.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The whole content of `file`, read from offset 0 whatever its position.
fn read_from_start(file: &File) -> io::Result<Vec<u8>> {
    let mut content = vec![0; 2048];
    let mut len = 0;
    loop {
        if len == content.len() {
            content.resize(len * 2, 0);
        }
        match file.read_at(&mut content[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    content.truncate(len);
    Ok(content)
}

/// Reads a `.lock` file: returns the last fencing token, after checking the
/// file belongs to `key` (a hashed name shared by two keys is an error).
pub(super) fn read_lock_file(file: &File, key: &Key, path: &Path) -> Result<u64> {
    let content =
        read_from_start(file).map_err(|e| io_error("read", Action::UseLockFile, path, e))?;
    // Neither a foreign file nor a collision goes away by waiting.
    let corrupt = || {
        Error::refused(
            "file",
            "read",
            format!(
                "{} is not a distlock lock file; remove it only when no process uses that lock",
                path.display()
            ),
        )
    };
    let rest = content.strip_prefix(LOCK_HEADER).ok_or_else(corrupt)?;
    if rest.len() < TOKEN_DIGITS {
        return Err(corrupt());
    }
    let (digits, rest) = rest.split_at(TOKEN_DIGITS);
    let token = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<u64>().ok())
        .ok_or_else(corrupt)?;
    let stored = rest
        .strip_prefix(KEY_LINE)
        .and_then(|k| k.strip_suffix(b"\n"))
        .ok_or_else(corrupt)?;
    if stored != key.as_str().as_bytes() {
        return Err(Error::refused(
            "file",
            "read",
            format!(
                "{} belongs to key {:?}, not {:?} (a SHA-256 collision of long keys)",
                path.display(),
                String::from_utf8_lossy(stored),
                key.as_str()
            ),
        ));
    }
    Ok(token)
}

pub(super) fn encode_record(r: &Record) -> Vec<u8> {
    let since = r.since.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut out = format!(
        "{HOLDER_HEADER}\ntoken {}\npid {}\nhost {}\nsince {}.{:09}\n",
        r.token,
        r.pid,
        r.host,
        since.as_secs(),
        since.subsec_nanos()
    )
    .into_bytes();
    if let Some(limit) = r.limit {
        out.extend_from_slice(format!("limit {limit}\n").as_bytes());
    }
    match &r.metadata {
        Some(m) => {
            out.extend_from_slice(format!("metadata {}\n", m.len()).as_bytes());
            out.extend_from_slice(m.as_bytes());
        }
        None => out.extend_from_slice(b"metadata none\n"),
    }
    out
}

pub(super) fn decode_record(bytes: &[u8]) -> Option<Record> {
    let mut rest = bytes;
    let mut line = |prefix: &str| -> Option<String> {
        let end = rest.iter().position(|&b| b == b'\n')?;
        let text = std::str::from_utf8(&rest[..end]).ok()?;
        rest = &rest[end + 1..];
        text.strip_prefix(prefix).map(str::to_owned)
    };
    if !line(HOLDER_HEADER)?.is_empty() {
        return None;
    }
    let token = line("token ")?.parse().ok()?;
    let pid = line("pid ")?.parse().ok()?;
    let host = line("host ")?;
    let since = line("since ")?;
    let (secs, nanos) = since.split_once('.')?;
    let since = UNIX_EPOCH + Duration::new(secs.parse().ok()?, nanos.parse().ok()?);
    // Only a permit's record has a limit line; a lock's goes on to metadata.
    let mut next = line("")?;
    let limit = match next.strip_prefix("limit ") {
        Some(limit) => {
            let limit = limit.parse().ok()?;
            next = line("")?;
            Some(limit)
        }
        None => None,
    };
    let metadata = match next.strip_prefix("metadata ")? {
        "none" => None,
        len => {
            let len: usize = len.parse().ok()?;
            Some(String::from_utf8(rest.get(..len)?.to_vec()).ok()?)
        }
    };
    Some(Record {
        token,
        pid,
        host,
        since,
        limit,
        metadata,
    })
}

/// The current holder record, if there is a readable one.
pub(super) fn read_record(path: &Path) -> Option<Record> {
    decode_record(&std::fs::read(path).ok()?)
}

/// Replaces the content of `file`, which its writer holds an exclusive
/// `flock` on (a permit's slot: renaming would replace the locked file).
pub(super) fn write_record_in(file: &File, record: &Record) -> io::Result<()> {
    file.set_len(0)?;
    file.write_all_at(&encode_record(record), 0)
}

/// The record in an open file, if it holds a readable one.
pub(super) fn read_record_in(file: &File) -> Option<Record> {
    decode_record(&read_from_start(file).ok()?)
}

/// Opens a permit file (guard, gate or slot) for reading and writing,
/// creating it (and the namespace's directory) if missing. Never follows a
/// symbolic link.
pub(super) fn open_or_create(paths: &KeyPaths, path: &Path) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&paths.dir)?;
            open()
        }
        opened => opened,
    }
}

/// The limit a guard file records, if any.
pub(super) fn read_guard_limit(file: &File) -> io::Result<Option<u32>> {
    let content = read_from_start(file)?;
    Ok(content
        .strip_prefix(GUARD_HEADER.as_bytes())
        .and_then(|rest| std::str::from_utf8(rest.get(..10)?).ok()?.parse().ok()))
}

/// Records `limit` in a guard file (fixed width, so it overwrites in place).
pub(super) fn write_guard_limit(file: &File, limit: u32) -> io::Result<()> {
    file.write_all_at(format!("{GUARD_HEADER}{limit:010}\n").as_bytes(), 0)
}

pub(super) fn write_record(paths: &KeyPaths, record: &Record) -> io::Result<()> {
    let tmp = write_temp(&paths.dir, &encode_record(record))?;
    std::fs::rename(&tmp, &paths.holder).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
