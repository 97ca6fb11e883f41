//! Who is waiting for a lock right now, and who holds one: the
//! orchestrator follows each client's history file as it grows (its
//! obtains invoked and not yet answered, its grants not yet let go), so a
//! waiter stop can pick a client that is waiting, and a client fault in
//! the leadership workload a leader.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use crate::history::Event;

/// The unanswered obtains of one client incarnation, from its history.
#[derive(Debug)]
pub(super) struct Tail {
    path: PathBuf,
    offset: u64,
    /// A line not yet complete at the last read.
    partial: Vec<u8>,
    /// Obtain id → (key, invoked at, ns).
    pending: HashMap<u64, (String, i64)>,
    /// Grants neither released, lost nor ended (CLI: `distlock` exited).
    holding: HashSet<u64>,
    /// Obtain id → when it was answered (ns), as the checker times it.
    answered: HashMap<u64, i64>,
}

/// An obtain in progress.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Waiting {
    pub(super) op: u64,
    pub(super) key: String,
    pub(super) since: i64,
}

impl Tail {
    pub(super) fn new(path: PathBuf) -> Self {
        Tail {
            path,
            offset: 0,
            partial: Vec::new(),
            pending: HashMap::new(),
            holding: HashSet::new(),
            answered: HashMap::new(),
        }
    }

    /// Reads what was appended since the last call.
    pub(super) fn update(&mut self) {
        let Ok(mut file) = File::open(&self.path) else {
            return;
        };
        let mut fresh = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut fresh).is_err()
        {
            return;
        }
        self.offset += fresh.len() as u64;
        self.partial.extend_from_slice(&fresh);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        for line in complete.split(|&b| b == b'\n') {
            let Ok(event) = serde_json::from_slice::<Event>(line) else {
                continue;
            };
            match event {
                Event::ObtainInvoke { op, key, t, .. } => {
                    self.pending.insert(op, (key, t));
                }
                Event::ObtainOk { op, t, .. } | Event::SectionStart { op, t, .. } => {
                    self.answer(op, t);
                    self.holding.insert(op);
                }
                Event::ObtainFail { op, t, .. } | Event::CliExit { op, t, .. } => {
                    self.answer(op, t);
                    self.holding.remove(&op);
                }
                Event::ReleaseInvoke { grant, .. } | Event::Lost { grant, .. } => {
                    self.holding.remove(&grant);
                }
                _ => {}
            }
        }
    }

    /// Obtain `op`'s first answer, at `t`.
    fn answer(&mut self, op: u64, t: i64) {
        if self.pending.remove(&op).is_some() {
            self.answered.insert(op, t);
        }
    }

    /// When obtain `op` was answered (ns), if its history says so yet. A
    /// client times its answer before writing it, so an answer may turn up
    /// later with an earlier time.
    pub(super) fn answered_at(&self, op: u64) -> Option<i64> {
        self.answered.get(&op).copied()
    }

    /// Whether the client holds a grant (as far as its history tells).
    pub(super) fn holds(&self) -> bool {
        !self.holding.is_empty()
    }

    /// Whether obtain `op` is invoked and not yet answered.
    pub(super) fn is_pending(&self, op: u64) -> bool {
        self.pending.contains_key(&op)
    }

    /// The longest-waiting obtain invoked before `before` (ns), if any.
    pub(super) fn waiting(&self, before: i64) -> Option<Waiting> {
        self.pending
            .iter()
            .filter(|(_, (_, since))| *since < before)
            .min_by_key(|(op, (_, since))| (*since, **op))
            .map(|(&op, (key, since))| Waiting {
                op,
                key: key.clone(),
                since: *since,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::JsonLines;

    #[test]
    fn follows_obtains_as_the_history_grows() {
        let dir =
            std::env::temp_dir().join(format!("distlock-torture-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("client-0-0.jsonl");
        let _ = std::fs::remove_file(&path);
        let hist = JsonLines::create(&path).unwrap();
        let mut tail = Tail::new(path.clone());
        let invoke = |op, t| Event::ObtainInvoke {
            op,
            key: format!("k{op}"),
            ttl_ms: 1000,
            mode: Default::default(),
            locker: None,
            t,
        };
        hist.append(&invoke(1, 10));
        hist.append(&invoke(2, 20));
        tail.update();
        assert_eq!(tail.waiting(100).map(|w| w.op), Some(1));
        assert_eq!(tail.waiting(15).map(|w| w.op), Some(1));
        assert_eq!(tail.waiting(5), None, "invoked too recently");
        hist.append(&Event::CliExit {
            op: 1,
            code: Some(75),
            signal: None,
            t: 30,
        });
        // Half a line: not read until it is complete.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, b"{\"ev\":\"obtain_fail\",\"op\":2,")
            })
            .unwrap();
        tail.update();
        assert_eq!(tail.waiting(100).map(|w| w.op), Some(2));
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| {
                std::io::Write::write_all(
                    &mut f,
                    b"\"not_obtained\":true,\"error\":\"x\",\"t\":40}\n",
                )
            })
            .unwrap();
        tail.update();
        assert_eq!(tail.waiting(100), None);
        assert_eq!(
            tail.answered_at(1),
            Some(30),
            "a CLI exit answers its obtain"
        );
        assert_eq!(tail.answered_at(2), Some(40));
        assert_eq!(tail.answered_at(3), None, "never invoked");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
