//! The checker on small hand-written histories: each check fires on the
//! history that breaks it, and stays quiet on the same history made right.

use std::path::PathBuf;

use distlock_torture::checker::{ViolationKind, check};
use distlock_torture::history::{
    Event, Fault, JsonLines, LostCause, RegisterEntry, RunEnd, RunMeta, write_json,
};
use distlock_torture::nemesis::FaultKind;
use distlock_torture::variant::Variant;

const MS: i64 = 1_000_000;

struct Run {
    dir: PathBuf,
}

impl Run {
    fn new(case: &str) -> Run {
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

    fn client(&self, client: u32, events: &[Event]) {
        let log = JsonLines::create(&self.dir.join(format!("client-{client}-0.jsonl"))).unwrap();
        for e in events {
            log.append(e);
        }
    }

    fn register(&self, entries: &[(u64, bool)]) {
        let log = JsonLines::create(&self.dir.join("register.jsonl")).unwrap();
        for (i, &(token, accepted)) in entries.iter().enumerate() {
            log.append(&RegisterEntry {
                t: i as i64,
                key: "k".into(),
                token,
                client: 0,
                incarnation: 0,
                op: i as u64,
                accepted,
                highest_before: 0,
            });
        }
    }

    fn fault(&self, kind: FaultKind, client: u32, start: i64, end: i64) {
        JsonLines::create(&self.dir.join("nemesis.jsonl"))
            .unwrap()
            .append(&Fault {
                kind,
                client: Some(client),
                incarnation: Some(0),
                start,
                end,
                detail: String::new(),
            });
    }

    fn violations(&self) -> Vec<ViolationKind> {
        let report = check(&self.dir).unwrap();
        let mut kinds: Vec<_> = report.examples.iter().map(|v| v.kind).collect();
        kinds.dedup();
        std::fs::remove_dir_all(&self.dir).unwrap();
        kinds
    }
}

/// A grant `op` of key k with `token`: obtained at `ok` ms, valid until
/// `until` ms, one write at `ok + 1`, released at `release` ms (if any).
fn grant(op: u64, token: u64, ok: i64, until: i64, release: Option<i64>) -> Vec<Event> {
    let mut events = vec![
        Event::ObtainInvoke {
            op,
            key: "k".into(),
            ttl_ms: 1000,
            t: (ok - 1) * MS,
        },
        Event::ObtainOk {
            op,
            key: "k".into(),
            token,
            valid_until: until * MS,
            t: ok * MS,
        },
        Event::WriteInvoke {
            op: op + 1,
            grant: op,
            key: "k".into(),
            token,
            checked: (ok + 1) * MS,
            valid_until: until * MS,
            delay_ms: 0,
            t: (ok + 1) * MS,
        },
        Event::WriteOk {
            op: op + 1,
            accepted: true,
            t: (ok + 2) * MS,
        },
    ];
    if let Some(at) = release {
        events.push(Event::ReleaseInvoke {
            op: op + 2,
            grant: op,
            valid_until: until * MS,
            by_name: false,
            t: at * MS,
        });
        events.push(Event::ReleaseOk {
            op: op + 2,
            t: (at + 1) * MS,
        });
    }
    events
}

#[test]
fn sequential_holders_pass() {
    let run = Run::new("sequential");
    run.client(0, &grant(1, 5, 100, 1100, Some(200)));
    run.client(1, &grant(1, 6, 205, 1205, Some(300)));
    run.register(&[(5, true), (6, true), (5, false)]);
    assert_eq!(run.violations(), vec![]);
}

#[test]
fn overlapping_sections_are_caught_unless_the_first_holder_was_dead() {
    let run = Run::new("overlap");
    run.client(0, &grant(1, 5, 100, 1100, None));
    run.client(1, &grant(1, 6, 500, 1500, Some(600)));
    assert_eq!(run.violations(), vec![ViolationKind::OverlappingCs]);

    let run = Run::new("overlap-dead");
    run.client(0, &grant(1, 5, 100, 1100, None));
    run.client(1, &grant(1, 6, 500, 1500, Some(600)));
    run.fault(FaultKind::ClientKill, 0, 400 * MS, 400 * MS);
    assert_eq!(run.violations(), vec![]);
}

#[test]
fn a_section_ends_at_its_validity_deadline() {
    // Client 0 never released, but its deadline passed before client 1 got it.
    let run = Run::new("deadline");
    run.client(0, &grant(1, 5, 100, 400, None));
    run.client(1, &grant(1, 6, 500, 1500, Some(600)));
    assert_eq!(run.violations(), vec![]);
}

#[test]
fn stale_accepts_token_order_and_unknown_tokens_are_caught() {
    let run = Run::new("stale");
    run.client(0, &grant(1, 5, 100, 1100, Some(200)));
    run.client(1, &grant(1, 6, 205, 1205, Some(300)));
    run.register(&[(6, true), (5, true)]);
    assert_eq!(run.violations(), vec![ViolationKind::StaleWriteAccepted]);

    let run = Run::new("order");
    run.client(0, &grant(1, 7, 100, 1100, Some(200)));
    run.client(1, &grant(1, 6, 205, 1205, Some(300)));
    assert_eq!(run.violations(), vec![ViolationKind::TokenOrder]);

    let run = Run::new("unknown");
    run.client(0, &grant(1, 5, 100, 1100, Some(200)));
    run.register(&[(5, true), (9, true)]);
    assert_eq!(run.violations(), vec![ViolationKind::UnknownToken]);
}

#[test]
fn a_release_ok_after_a_newer_grant_is_caught() {
    let run = Run::new("release");
    let mut first = grant(1, 5, 100, 300, None);
    first.push(Event::ReleaseInvoke {
        op: 3,
        grant: 1,
        valid_until: 300 * MS,
        by_name: true,
        t: 700 * MS,
    });
    first.push(Event::ReleaseOk { op: 3, t: 701 * MS });
    run.client(0, &first);
    run.client(1, &grant(1, 6, 500, 1500, Some(900)));
    assert_eq!(run.violations(), vec![ViolationKind::ReleaseByNonOwner]);
}

#[test]
fn writes_outside_the_section_and_late_losses_are_caught() {
    let run = Run::new("write-outside");
    let mut events = grant(1, 5, 100, 300, Some(800));
    events.insert(
        4,
        Event::WriteInvoke {
            op: 10,
            grant: 1,
            key: "k".into(),
            token: 5,
            checked: 400 * MS,
            valid_until: 300 * MS,
            delay_ms: 0,
            t: 400 * MS,
        },
    );
    run.client(0, &events);
    assert_eq!(run.violations(), vec![ViolationKind::WriteOutsideCs]);

    let lost_at = |at: i64| {
        let mut events = grant(1, 5, 100, 300, None);
        events.push(Event::Lost {
            grant: 1,
            reason: LostCause::Expired,
            t: at * MS,
        });
        events.push(Event::ReleaseInvoke {
            op: 3,
            grant: 1,
            valid_until: 300 * MS,
            by_name: false,
            t: (at + 10) * MS,
        });
        events
    };
    let run = Run::new("lost-on-time");
    run.client(0, &lost_at(310));
    assert_eq!(run.violations(), vec![]);
    let run = Run::new("lost-late");
    run.client(0, &lost_at(400));
    assert_eq!(run.violations(), vec![ViolationKind::LostLate]);
    let run = Run::new("lost-late-stopped");
    run.client(0, &lost_at(400));
    run.fault(FaultKind::ClientStop, 0, 250 * MS, 390 * MS);
    assert_eq!(run.violations(), vec![]);
}
