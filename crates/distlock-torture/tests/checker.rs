//! The checker on small hand-written histories of locks: each check fires
//! on the history that breaks it, and stays quiet on the same history made
//! right. (Permits: `checker_permits.rs`.)

mod common;

use common::{MS, Run, grant, invoke, lost, release_invoke, write};
use distlock_torture::checker::ViolationKind;
use distlock_torture::history::{CloseWhy, Event, LostCause, Mode};
use distlock_torture::nemesis::FaultKind;

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

    // The store forgot the lock (a wipe at 400) before the release was sent:
    // an Ok then is the engine's guess after an attempt that timed out.
    let run = Run::new("release-after-loss");
    let mut first = grant(1, 5, 100, 1100, None);
    first.extend([
        release_invoke(3, 1, 1100, 700),
        Event::ReleaseOk { op: 3, t: 900 * MS },
    ]);
    run.client(0, &first);
    run.client(1, &grant(1, 6, 500, 1500, Some(600)));
    run.fault(FaultKind::WipeRestart, 0, 400 * MS, 450 * MS);
    let report = run.report();
    assert!(report.passed(), "{}", report.table());
    assert_eq!(report.data_loss.releases_excused, 1);
}

#[test]
fn writes_outside_the_section_and_late_losses_are_caught() {
    let run = Run::new("write-outside");
    let mut events = grant(1, 5, 100, 300, Some(800));
    events.insert(4, write(10, 1, 5, 400, 300 * MS));
    run.client(0, &events);
    assert_eq!(run.violations(), vec![ViolationKind::WriteOutsideCs]);

    let lost_at = |at: i64| {
        let mut events = grant(1, 5, 100, 300, None);
        events.push(lost(1, LostCause::Expired, at));
        events.push(release_invoke(3, 1, 300, at + 10));
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
    // Late, but seen while the release was under way (invoked at 200,
    // with a refresh maybe in flight): excused, and counted.
    let run = Run::new("lost-late-releasing");
    let mut events = grant(1, 5, 100, 300, None);
    events.push(release_invoke(3, 1, 300, 200));
    events.push(lost(1, LostCause::Expired, 400));
    run.client(0, &events);
    let report = run.report();
    assert!(report.passed(), "{}", report.table());
    assert_eq!(report.lost_in_release_excused, 1);
    // ... but not later than a refresh sent before the release could
    // carry it (the release's start plus the TTL).
    let run = Run::new("lost-late-after-releasing");
    let mut events = grant(1, 5, 100, 300, None);
    events.push(release_invoke(3, 1, 300, 200));
    events.push(lost(1, LostCause::Expired, 1300));
    run.client(0, &events);
    assert_eq!(run.violations(), vec![ViolationKind::LostLate]);
}

/// `events` of [`grant`], obtained on Locker `locker`.
fn on_locker(locker: u64, mut events: Vec<Event>) -> Vec<Event> {
    if let Event::ObtainInvoke { locker: l, .. } = &mut events[0] {
        *l = Some(locker);
    }
    events
}

fn close(locker: u64, at: i64) -> Event {
    Event::LockerClose {
        locker,
        why: CloseWhy::Race,
        backend: false,
        t: at * MS,
    }
}

#[test]
fn a_lockers_close_ends_its_own_sections_only() {
    // Client 0's Locker 3 is closed at 300: client 1 may take the key at 400.
    let run = Run::new("close-ends");
    let mut first = on_locker(3, grant(1, 5, 100, 1100, None));
    first.extend([close(3, 300), lost(1, LostCause::Closed, 302)]);
    run.client(0, &first);
    run.client(1, &grant(1, 6, 400, 1400, Some(500)));
    assert_eq!(run.violations(), vec![]);

    // Another close (the shared backend's) ended it: the store let client 1
    // in at 400, and client 0 saw it only at 450.
    let run = Run::new("closed-by-other");
    let mut first = on_locker(3, grant(1, 5, 100, 1100, None));
    first.extend([close(4, 300), lost(1, LostCause::Closed, 450)]);
    run.client(0, &first);
    run.client(1, &grant(1, 6, 400, 1400, Some(500)));
    assert_eq!(
        run.violations(),
        vec![ViolationKind::OverlappingCs, ViolationKind::ClosedByOther]
    );

    // An obtain that failed with Closed on a Locker nobody was closing.
    let refused = |closed_at: Option<i64>| {
        let mut events = vec![invoke(1, Mode::Exclusive, Some(3), 100)];
        events.extend(closed_at.map(|at| close(3, at)));
        events.push(Event::ObtainFail {
            op: 1,
            not_obtained: false,
            closed: true,
            limit_mismatch: false,
            error: "the locker is closed".into(),
            t: 300 * MS,
        });
        events
    };
    let run = Run::new("obtain-closed-by-other");
    run.client(0, &refused(None));
    assert_eq!(run.violations(), vec![ViolationKind::ClosedByOther]);
    let run = Run::new("obtain-closed-by-own");
    run.client(0, &refused(Some(290)));
    assert_eq!(run.violations(), vec![]);

    // A write decided after its Locker's close began is outside the section.
    let run = Run::new("write-after-close");
    let mut first = on_locker(3, grant(1, 5, 100, 1100, None));
    first.extend([close(3, 300), write(10, 1, 5, 350, 1100 * MS)]);
    run.client(0, &first);
    assert_eq!(run.violations(), vec![ViolationKind::WriteOutsideCs]);
}

#[test]
fn a_data_loss_excuses_its_overlaps_but_not_a_stale_write_or_a_token_regression() {
    // The store forgot client 0's lock at 300; client 1 got the key at 400
    // while client 0 worked on until the store said NotHeld at 500.
    let forgotten = || {
        let mut first = grant(1, 5, 100, 1100, None);
        first.push(lost(1, LostCause::NotHeld, 500));
        first
    };
    let run = Run::new("loss");
    run.client(0, &forgotten());
    run.client(1, &grant(1, 6, 400, 1400, Some(600)));
    run.fault(FaultKind::Flushall, 0, 300 * MS, 301 * MS);
    run.register(&[(5, true), (6, true), (5, false)]);
    let report = run.report();
    assert!(report.passed(), "{}", report.table());
    assert_eq!(
        (
            report.data_loss.grants_cut,
            report.data_loss.overlaps_excused
        ),
        (1, 1)
    );

    let run = Run::new("no-loss");
    run.client(0, &forgotten());
    run.client(1, &grant(1, 6, 400, 1400, Some(600)));
    assert_eq!(run.violations(), vec![ViolationKind::OverlappingCs]);

    let run = Run::new("loss-stale");
    run.client(0, &forgotten());
    run.client(1, &grant(1, 6, 400, 1400, Some(600)));
    run.fault(FaultKind::WipeRestart, 0, 300 * MS, 350 * MS);
    run.register(&[(6, true), (5, true)]);
    assert_eq!(run.violations(), vec![ViolationKind::StaleWriteAccepted]);

    // Tokens floored by the clock before the loss; a counter starting over
    // after it would hand out 1.
    let run = Run::new("loss-regression");
    run.client(0, &grant(1, 1_700_000_000_000_000, 100, 1100, Some(200)));
    run.client(1, &grant(1, 1, 400, 1400, Some(500)));
    run.fault(FaultKind::WipeRestart, 0, 300 * MS, 350 * MS);
    assert_eq!(run.violations(), vec![ViolationKind::TokenOrder]);
}

/// A CLI round: obtain `op` invoked at `start - 1`, the section started at
/// `start`, one write at each of `writes`, its end at `end` (if it got
/// there), `distlock run` exiting with `code` 5 ms later.
fn cli_round(
    op: u64,
    token: u64,
    start: i64,
    writes: &[i64],
    end: Option<i64>,
    code: i32,
) -> Vec<Event> {
    let mut events = vec![
        invoke(op, Mode::Exclusive, None, start - 1),
        Event::SectionStart {
            op,
            key: "k".into(),
            token,
            pid: 1,
            t: start * MS,
        },
    ];
    for (i, &at) in writes.iter().enumerate() {
        let w = op + 1 + i as u64;
        events.push(write(w, op, token, at, i64::MAX));
        events.push(Event::WriteOk {
            op: w,
            accepted: true,
            t: (at + 1) * MS,
        });
    }
    let last = end.or(writes.last().copied()).unwrap_or(start);
    if let Some(at) = end {
        events.push(Event::SectionEnd { op, t: at * MS });
    }
    events.push(Event::CliExit {
        op,
        code: Some(code),
        signal: None,
        t: (last + 5) * MS,
    });
    events
}

#[test]
fn a_cli_section_lasts_as_long_as_it_acted() {
    let run = Run::new("cli-sequential");
    run.client(0, &cli_round(1, 5, 100, &[110, 120], Some(130), 0));
    run.client(1, &cli_round(1, 6, 140, &[150], Some(160), 0));
    let report = run.report();
    assert!(report.passed(), "{}", report.table());
    assert_eq!(report.acquisitions, 2);

    // Stopped mid-way (no end): it acted until its last write's answer.
    let run = Run::new("cli-overlap");
    run.client(0, &cli_round(1, 5, 100, &[110, 300], None, 76));
    run.client(1, &cli_round(1, 6, 200, &[210], Some(220), 0));
    assert_eq!(run.violations(), vec![ViolationKind::OverlappingCs]);

    // An internal error of distlock is a crash; not obtained is not.
    let run = Run::new("cli-exit");
    run.client(0, &cli_round(1, 5, 100, &[110], Some(120), 70));
    let mut refused = cli_round(1, 6, 300, &[], None, 75);
    refused.remove(1);
    run.client(1, &refused);
    let report = run.report();
    assert_eq!(report.obtain_not_obtained, 1);
    assert_eq!(
        report.violations.keys().collect::<Vec<_>>(),
        vec![&ViolationKind::ClientCrash]
    );
}

#[test]
fn waiter_stops_count_the_obtains_they_froze() {
    let run = Run::new("waiter-stop");
    let mut waiter = grant(1, 5, 2500, 3500, Some(2600));
    if let Event::ObtainInvoke { t, .. } = &mut waiter[0] {
        *t = 100 * MS;
    }
    run.client(0, &waiter);
    run.fault(FaultKind::WaiterStop, 0, 200 * MS, 2000 * MS);
    let report = run.report();
    assert!(report.passed(), "{}", report.table());
    let w = &report.waiter_stops;
    assert_eq!((w.stops, w.waiting, w.obtained), (1, 1, 1));
}
