//! The history of a run: what every client did, what the register decided
//! and what the nemesis broke, as JSON lines with monotonic timestamps
//! ([`crate::clock`], nanoseconds).
//!
//! A run directory holds:
//!
//! * `run.json` — the [`RunMeta`] (backend, variant, seed, parameters);
//! * `client-<id>-<incarnation>.jsonl` — one file per client process (or
//!   task), one [`Event`] per line, written with one `write` each so a
//!   SIGKILL loses at most the event in flight;
//! * `register.jsonl` — every write the fenced register saw ([`RegisterEntry`]);
//! * `nemesis.jsonl` — every fault ([`Fault`]);
//! * `end.json` — what the orchestrator found after the run ([`RunEnd`]).
//!
//! Operation ids are unique within one client incarnation (its sections
//! and its CLI sections included: they write to the same file); a grant is
//! named by the id of the obtain that produced it.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::nemesis::FaultKind;
use crate::variant::{ClientProfile, Variant, Workload};

/// One line of a client's history. Times (`t`, `checked`, `valid_until`)
/// are monotonic nanoseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// The client started.
    Start {
        /// Client number (stable across respawns).
        client: u32,
        /// How many times this client was respawned before.
        incarnation: u32,
        /// Its process id.
        pid: u32,
        /// The behaviour it runs.
        variant: Variant,
        /// How it uses distlock.
        #[serde(default)]
        profile: ClientProfile,
        /// Its RNG seed (derived from the run seed).
        seed: u64,
        /// When.
        t: i64,
    },
    /// An obtain was called.
    ObtainInvoke {
        /// Operation id; also the grant's id if it succeeds.
        op: u64,
        /// The key.
        key: String,
        /// The lock's TTL in milliseconds.
        ttl_ms: u64,
        /// What it asks for: the whole key, a permit, or a read lock.
        #[serde(default, skip_serializing_if = "Mode::is_exclusive")]
        mode: Mode,
        /// The Locker it was called on (none for a CLI client's obtain,
        /// which `distlock run` makes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        locker: Option<u64>,
        /// When.
        t: i64,
    },
    /// The obtain returned a lock.
    ObtainOk {
        /// The obtain's id (= the grant).
        op: u64,
        /// The key.
        key: String,
        /// The grant's fencing token.
        token: u64,
        /// The validity deadline the client relies on.
        valid_until: i64,
        /// When the client learned it holds the lock.
        t: i64,
    },
    /// The obtain failed.
    ObtainFail {
        /// The obtain's id.
        op: u64,
        /// Whether it was `NotObtained` (held by others until the deadline).
        not_obtained: bool,
        /// Whether it was `Closed` (its Locker, or the backend under it).
        #[serde(default)]
        closed: bool,
        /// Whether it was `LimitMismatch`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        limit_mismatch: bool,
        /// The error.
        error: String,
        /// When.
        t: i64,
    },
    /// The client deliberately stalled inside a critical section.
    Pause {
        /// The grant.
        grant: u64,
        /// For how long, in milliseconds.
        ms: u64,
        /// Why.
        why: PauseKind,
        /// When it began.
        t: i64,
    },
    /// A write to the fenced register was decided (and sent, after
    /// `delay_ms`).
    WriteInvoke {
        /// Operation id.
        op: u64,
        /// The grant it writes under.
        grant: u64,
        /// The key.
        key: String,
        /// The fencing token it carries.
        token: u64,
        /// What the act needs of the key (the register fences it so): a
        /// write alone, a write by one of N permit holders, or a read.
        #[serde(default, skip_serializing_if = "Mode::is_exclusive")]
        mode: Mode,
        /// When the client last checked that its lock was valid (the
        /// decision to write).
        checked: i64,
        /// The grant's validity deadline when it checked.
        valid_until: i64,
        /// A network delay injected before the write is sent.
        delay_ms: u64,
        /// When.
        t: i64,
    },
    /// The register answered.
    WriteOk {
        /// The write's id.
        op: u64,
        /// Accepted (`true`) or rejected as stale.
        accepted: bool,
        /// When.
        t: i64,
    },
    /// The write did not reach the register or got no answer.
    WriteFail {
        /// The write's id.
        op: u64,
        /// The error.
        error: String,
        /// When.
        t: i64,
    },
    /// `lock.lost()` resolved.
    Lost {
        /// The grant.
        grant: u64,
        /// The reason.
        reason: LostCause,
        /// When the watcher saw it.
        t: i64,
    },
    /// A release was called.
    ReleaseInvoke {
        /// Operation id.
        op: u64,
        /// The grant.
        grant: u64,
        /// The grant's final validity deadline (read after the refresher
        /// stopped, so it no longer moves).
        valid_until: i64,
        /// A release that deletes the key by name, without an owner check
        /// (negative control only).
        by_name: bool,
        /// When.
        t: i64,
    },
    /// The release returned `Ok`.
    ReleaseOk {
        /// The release's id.
        op: u64,
        /// When.
        t: i64,
    },
    /// The release returned an error.
    ReleaseFail {
        /// The release's id.
        op: u64,
        /// Whether it was `NotHeld`.
        not_held: bool,
        /// The error.
        error: String,
        /// When.
        t: i64,
    },
    /// The release's outcome is unknown to the client (a reply it never
    /// got; negative control only).
    ReleaseUnknown {
        /// The release's id.
        op: u64,
        /// When.
        t: i64,
    },
    /// A Locker's close was called; its grants' sections end here.
    LockerClose {
        /// The Locker (ids are unique within the incarnation).
        locker: u64,
        /// Why it was closed.
        why: CloseWhy,
        /// Whether the backend it shares was closed with it (control 5).
        backend: bool,
        /// When (after the section's writes were told to stop).
        t: i64,
    },
    /// A Locker's close returned.
    LockerClosed {
        /// The Locker.
        locker: u64,
        /// Its error, if any.
        error: Option<String>,
        /// When.
        t: i64,
    },
    /// A CLI section started: `distlock run` holds the lock and started
    /// the section's process (which records this). The grant's start.
    SectionStart {
        /// The obtain's id (the parent's `ObtainInvoke`) = the grant.
        op: u64,
        /// The key (`$DISTLOCK_KEY`).
        key: String,
        /// `$DISTLOCK_FENCING_TOKEN`.
        token: u64,
        /// The section's pid.
        pid: u32,
        /// When.
        t: i64,
    },
    /// A CLI section is done writing and exits: the grant's end.
    SectionEnd {
        /// The grant.
        op: u64,
        /// When.
        t: i64,
    },
    /// `distlock run` exited (recorded by the client that ran it).
    CliExit {
        /// The obtain's id.
        op: u64,
        /// Its exit code, if it exited.
        code: Option<i32>,
        /// The signal that ended it, if one did.
        signal: Option<i32>,
        /// When the client saw it exit.
        t: i64,
    },
    /// The client stopped cleanly.
    Stop {
        /// When.
        t: i64,
    },
}

/// What a grant holds of its key, or what an act on the register needs of
/// it: the key alone, one of `limit` permits (a semaphore's), or a read
/// (a permit among any number of readers).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The whole key: a lock, a write lock.
    #[default]
    Exclusive,
    /// One of `limit` permits.
    Permit {
        /// How many holders the key may have at once.
        limit: u32,
    },
    /// A read lock: a permit among any number of readers.
    Read,
}

impl Mode {
    /// How many holders (or acts) of this mode may share the key at once.
    pub fn limit(self) -> u32 {
        match self {
            Mode::Exclusive => 1,
            Mode::Permit { limit } => limit,
            Mode::Read => u32::MAX,
        }
    }

    /// Whether this is the whole key.
    pub fn is_exclusive(&self) -> bool {
        *self == Mode::Exclusive
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Exclusive => f.write_str("exclusive"),
            Mode::Permit { limit } => write!(f, "permit of {limit}"),
            Mode::Read => f.write_str("read"),
        }
    }
}

/// Why a client stalled inside a critical section on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseKind {
    /// Sleeps past the TTL with the refresher stopped, between deciding a
    /// write and sending it.
    Overdue,
    /// A long section with the refresher running.
    Slow,
    /// A task-level pause of the nemesis (memory).
    Nemesis,
}

impl PauseKind {
    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            PauseKind::Overdue => "overdue",
            PauseKind::Slow => "slow",
            PauseKind::Nemesis => "nemesis",
        }
    }
}

/// What `lock.lost()` resolved with (distlock's `LostReason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LostCause {
    /// The validity deadline passed without a refresh.
    Expired,
    /// The store said the lock is gone.
    NotHeld,
    /// Released.
    Released,
    /// Its Locker, or the backend under it, was closed.
    Closed,
    /// A reason this harness does not know yet.
    Other,
}

impl From<distlock::LostReason> for LostCause {
    fn from(reason: distlock::LostReason) -> Self {
        match reason {
            distlock::LostReason::Expired => LostCause::Expired,
            distlock::LostReason::NotHeld => LostCause::NotHeld,
            distlock::LostReason::Released => LostCause::Released,
            distlock::LostReason::Closed => LostCause::Closed,
            _ => LostCause::Other,
        }
    }
}

/// Why a client closed one of its Lockers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseWhy {
    /// Between two rounds, to build a new Locker (shared profile).
    Cycle,
    /// From another task, at a random moment of a round: while its section
    /// waits, holds or releases (shared profile).
    Race,
    /// The client is stopping.
    Stop,
}

impl CloseWhy {
    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            CloseWhy::Cycle => "cycle",
            CloseWhy::Race => "race",
            CloseWhy::Stop => "stop",
        }
    }
}

/// One write as the fenced register saw it, in the order it decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterEntry {
    /// When it decided (monotonic ns).
    pub t: i64,
    /// The key written.
    pub key: String,
    /// The fencing token the write carried.
    pub token: u64,
    /// What the act needed of the key (see [`Mode`]).
    #[serde(default, skip_serializing_if = "Mode::is_exclusive")]
    pub mode: Mode,
    /// The writing client.
    pub client: u32,
    /// Its incarnation.
    pub incarnation: u32,
    /// The client's write operation id.
    pub op: u64,
    /// Whether the write was accepted.
    pub accepted: bool,
    /// The highest token accepted for the key (any act) before this one.
    pub highest_before: u64,
}

/// One fault the nemesis injected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// What.
    pub kind: FaultKind,
    /// The client it hit, if any.
    pub client: Option<u32>,
    /// The client's incarnation it hit, if any.
    pub incarnation: Option<u32>,
    /// When it began (for kills: just before the signal was sent).
    pub start: i64,
    /// When it was healed (equal to `start` for instant faults).
    pub end: i64,
    /// Free-form details.
    pub detail: String,
}

/// What the orchestrator found once the clients were stopped and the TTLs
/// had passed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunEnd {
    /// Keys still held, as `key (holder details)`.
    pub leftover_keys: Vec<String>,
    /// Clients that exited on their own with a failure (crashes).
    pub crashed_clients: Vec<String>,
    /// Clients that had to be killed because they did not stop.
    pub unstoppable_clients: Vec<String>,
    /// When the run's workload started and ended (monotonic ns).
    pub started: i64,
    /// See `started`.
    pub ended: i64,
}

/// How a run was configured, as recorded in `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    /// The backend's name.
    pub backend: String,
    /// What the clients take: locks, semaphore permits, or read and
    /// write locks.
    #[serde(default)]
    pub workload: Workload,
    /// The semaphore workload's permits per key: what the resource (the
    /// register) allows at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The behaviour the clients ran.
    pub variant: Variant,
    /// The run seed.
    pub seed: u64,
    /// Clients.
    pub clients: u32,
    /// Keys contended for.
    pub keys: Vec<String>,
    /// Lock TTL, milliseconds.
    pub ttl_ms: u64,
    /// Whether the store expires locks by TTL (file locks do not).
    pub ttl_expiry: bool,
    /// Planned workload duration, milliseconds.
    pub duration_ms: u64,
    /// Whether the nemesis ran.
    pub faults: bool,
    /// Whether the register checked fencing tokens.
    pub fenced: bool,
    /// Allowed lateness of `lost()` past the validity deadline, ms.
    pub lost_tolerance_ms: u64,
    /// The command line that produced the run.
    pub command: String,
}

/// Appends JSON lines to a file, one `write` per line. Cheap to clone;
/// clones share the file.
#[derive(Clone, Debug)]
pub struct JsonLines {
    file: Arc<Mutex<Sink>>,
}

#[derive(Debug)]
struct Sink {
    file: File,
    sealed: bool,
}

impl JsonLines {
    /// Creates (or appends to) `path`.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(JsonLines {
            file: Arc::new(Mutex::new(Sink {
                file,
                sealed: false,
            })),
        })
    }

    /// Appends one record.
    pub fn append<T: Serialize>(&self, record: &T) {
        let mut line = serde_json::to_vec(record).expect("history records serialize");
        line.push(b'\n');
        let mut sink = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if sink.sealed {
            return;
        }
        // A failed history write makes the run meaningless: stop loudly.
        sink.file.write_all(&line).expect("append to the history");
    }

    /// Ends the history: later appends are dropped, as a killed process's
    /// would be. Returns the (monotonic) time of death, taken under the
    /// same lock, so every recorded event happened before it.
    pub fn seal(&self) -> i64 {
        let mut sink = self.file.lock().unwrap_or_else(|p| p.into_inner());
        sink.sealed = true;
        crate::clock::now_ns()
    }
}

/// Reads a JSON-lines file. A last line cut short (a process killed
/// mid-write) is ignored; any other bad line is an error.
pub fn read_lines<T: DeserializeOwned>(path: &Path) -> io::Result<Vec<T>> {
    let reader = BufReader::new(File::open(path)?);
    let lines: Vec<String> = reader.lines().collect::<io::Result<_>>()?;
    let mut out = Vec::with_capacity(lines.len());
    let last = lines.len().saturating_sub(1);
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(record) => out.push(record),
            Err(_) if i == last => {}
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}:{}: {e}", path.display(), i + 1),
                ));
            }
        }
    }
    Ok(out)
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let text = serde_json::to_string_pretty(value).expect("records serialize");
    std::fs::write(path, text + "\n")
}

/// Reads a JSON file written by [`write_json`].
pub fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<T> {
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_last_line_is_ignored_but_a_bad_middle_line_is_not() {
        let dir =
            std::env::temp_dir().join(format!("distlock-torture-hist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.jsonl");
        let w = JsonLines::create(&path).unwrap();
        w.append(&Event::Stop { t: 1 });
        w.append(&Event::Stop { t: 2 });
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"ev\":\"sto")
            .unwrap();
        let events: Vec<Event> = read_lines(&path).unwrap();
        assert_eq!(events, vec![Event::Stop { t: 1 }, Event::Stop { t: 2 }]);
        std::fs::write(
            &path,
            "{\"ev\":\"stop\",\"t\":1}\ngarbage\n{\"ev\":\"stop\",\"t\":2}\n",
        )
        .unwrap();
        assert!(read_lines::<Event>(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
