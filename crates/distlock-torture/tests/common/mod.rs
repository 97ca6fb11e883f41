//! Hand-written run directories for the checker's tests: one key `k`,
//! clients' histories, the register's log and faults, in milliseconds.
#![allow(dead_code)] // each test file uses some of these

use std::path::PathBuf;

use distlock_torture::checker::{Report, ViolationKind, check};
use distlock_torture::history::{
    Event, Fault, JsonLines, LostCause, Mode, RegisterEntry, RunEnd, RunMeta, write_json,
};
use distlock_torture::nemesis::FaultKind;
use distlock_torture::variant::{Variant, Workload};

pub const MS: i64 = 1_000_000;

pub struct Run {
    dir: PathBuf,
}

impl Run {
    /// A lock workload's run.
    pub fn new(case: &str) -> Run {
        Run::of(case, Workload::Lock)
    }

    /// A `workload` run (a semaphore's of 3 permits).
    pub fn of(case: &str, workload: Workload) -> Run {
        let dir = std::env::temp_dir().join(format!(
            "distlock-torture-checker-{}-{case}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        write_json(
            &dir.join("run.json"),
            &RunMeta {
                backend: "redis".into(),
                workload,
                limit: (workload == Workload::Semaphore).then_some(3),
                variant: Variant::Correct,
                seed: 1,
                clients: 2,
                keys: vec!["k".into()],
                ttl_ms: 1000,
                ttl_expiry: true,
                duration_ms: 1000,
                faults: true,
                fenced: true,
                lost_tolerance_ms: 50,
                command: "test".into(),
            },
        )
        .unwrap();
        write_json(&dir.join("end.json"), &RunEnd::default()).unwrap();
        Run { dir }
    }

    pub fn client(&self, client: u32, events: &[Event]) {
        let log = JsonLines::create(&self.dir.join(format!("client-{client}-0.jsonl"))).unwrap();
        for e in events {
            log.append(e);
        }
    }

    /// The register's log: exclusive writes (token, accepted).
    pub fn register(&self, entries: &[(u64, bool)]) {
        let acts: Vec<_> = entries
            .iter()
            .map(|&(token, accepted)| (token, Mode::Exclusive, accepted))
            .collect();
        self.register_acts(&acts);
    }

    /// The register's log: (token, the act's mode, accepted).
    pub fn register_acts(&self, entries: &[(u64, Mode, bool)]) {
        let log = JsonLines::create(&self.dir.join("register.jsonl")).unwrap();
        for (i, &(token, mode, accepted)) in entries.iter().enumerate() {
            log.append(&RegisterEntry {
                t: i as i64,
                key: "k".into(),
                token,
                mode,
                client: 0,
                incarnation: 0,
                op: i as u64,
                accepted,
                highest_before: 0,
            });
        }
    }

    pub fn fault(&self, kind: FaultKind, client: u32, start: i64, end: i64) {
        JsonLines::create(&self.dir.join("nemesis.jsonl"))
            .unwrap()
            .append(&Fault {
                kind,
                client: kind.targets_client().then_some(client),
                incarnation: kind.targets_client().then_some(0),
                start,
                end,
                detail: String::new(),
            });
    }

    pub fn violations(&self) -> Vec<ViolationKind> {
        let report = self.report();
        let mut kinds: Vec<_> = report.examples.iter().map(|v| v.kind).collect();
        kinds.dedup();
        kinds
    }

    pub fn report(&self) -> Report {
        let report = check(&self.dir).unwrap();
        std::fs::remove_dir_all(&self.dir).unwrap();
        report
    }
}

/// Obtain `op` of key k in `mode` on `locker`, invoked at `at` ms.
pub fn invoke(op: u64, mode: Mode, locker: Option<u64>, at: i64) -> Event {
    Event::ObtainInvoke {
        op,
        key: "k".into(),
        ttl_ms: 1000,
        mode,
        locker,
        t: at * MS,
    }
}

/// Write `op` under grant `grant` of key k, decided at `at` ms, with the
/// grant's deadline `valid_until` (ns).
pub fn write(op: u64, grant: u64, token: u64, at: i64, valid_until: i64) -> Event {
    write_as(Mode::Exclusive, op, grant, token, at, valid_until)
}

/// [`write`], an act that needs `mode` of the key.
pub fn write_as(mode: Mode, op: u64, grant: u64, token: u64, at: i64, valid_until: i64) -> Event {
    Event::WriteInvoke {
        op,
        grant,
        key: "k".into(),
        token,
        mode,
        checked: at * MS,
        valid_until,
        delay_ms: 0,
        t: at * MS,
    }
}

/// Release `op` of grant `grant` (by its owner), whose deadline is
/// `until` ms, invoked at `at` ms.
pub fn release_invoke(op: u64, grant: u64, until: i64, at: i64) -> Event {
    Event::ReleaseInvoke {
        op,
        grant,
        valid_until: until * MS,
        by_name: false,
        t: at * MS,
    }
}

/// Grant `grant` reported lost for `reason` at `at` ms.
pub fn lost(grant: u64, reason: LostCause, at: i64) -> Event {
    Event::Lost {
        grant,
        reason,
        t: at * MS,
    }
}

/// A grant `op` of key k with `token`: obtained at `ok` ms, valid until
/// `until` ms, one write at `ok + 1`, released at `release` ms (if any).
pub fn grant(op: u64, token: u64, ok: i64, until: i64, release: Option<i64>) -> Vec<Event> {
    grant_as(Mode::Exclusive, op, token, ok, until, release)
}

/// [`grant`] of `mode`, whose write needs `mode` too.
pub fn grant_as(
    mode: Mode,
    op: u64,
    token: u64,
    ok: i64,
    until: i64,
    release: Option<i64>,
) -> Vec<Event> {
    let mut events = vec![
        invoke(op, mode, Some(0), ok - 1),
        Event::ObtainOk {
            op,
            key: "k".into(),
            token,
            valid_until: until * MS,
            t: ok * MS,
        },
        write_as(mode, op + 1, op, token, ok + 1, until * MS),
        Event::WriteOk {
            op: op + 1,
            accepted: true,
            t: (ok + 2) * MS,
        },
    ];
    if let Some(at) = release {
        events.push(release_invoke(op + 2, op, until, at));
        events.push(Event::ReleaseOk {
            op: op + 2,
            t: (at + 1) * MS,
        });
    }
    events
}
