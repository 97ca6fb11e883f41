//! The checker on small hand-written leadership histories: terms handed
//! over by resign, by loss and by the leader's death are counted as such,
//! and a deposed leader writing on, or two leaders at once, are caught.

mod common;

use common::{MS, Run, grant, invoke, release_invoke, write};
use distlock_torture::checker::ViolationKind;
use distlock_torture::history::{Event, LostCause, Mode};
use distlock_torture::nemesis::FaultKind;
use distlock_torture::variant::Workload;

/// A term of grant 1 with `token`, from `ok` to its deadline `until` (ms),
/// lost at `lost` (Expired), then resigned (`NotHeld`) at `resign`.
fn lost_term(token: u64, ok: i64, until: i64, lost: i64, resign: i64) -> Vec<Event> {
    let mut events = grant(1, token, ok, until, None);
    events.push(common::lost(1, LostCause::Expired, lost));
    events.push(release_invoke(3, 1, until, resign));
    events.push(Event::ReleaseFail {
        op: 3,
        not_held: true,
        error: "not held".into(),
        t: (resign + 1) * MS,
    });
    events
}

#[test]
fn handovers_by_resign_loss_and_death_are_told_apart() {
    let run = Run::of("lead-handovers", Workload::Leadership);
    // Term 1 resigns at 200; term 2 is lost at its deadline (900); term 3,
    // from 1000, dies in office at 1300; term 4 leads from 2400 on.
    run.client(0, &grant(1, 1, 100, 1100, Some(200)));
    run.client(1, &lost_term(2, 300, 900, 900, 1200));
    run.client(2, &grant(1, 3, 1000, 2000, None));
    run.fault(FaultKind::ClientKill, 2, 1300 * MS, 1300 * MS);
    run.client(3, &grant(1, 4, 2400, 3400, Some(2500)));
    let report = run.report();
    assert!(report.passed(), "{}", report.table());
    let h = &report.handovers;
    assert_eq!((h.resigned, h.lost, h.died, h.other), (1, 1, 1, 0));
    assert!(report.table().contains("handovers after resign"));
}

#[test]
fn a_deposed_leader_writing_on_is_caught() {
    let run = Run::of("lead-deposed", Workload::Leadership);
    let mut deposed = lost_term(1, 100, 900, 900, 1500);
    // Ignores lost() and writes on after its deadline.
    deposed.push(write(4, 1, 1, 1000, 900 * MS));
    run.client(0, &deposed);
    run.client(1, &grant(1, 2, 950, 1950, Some(1100)));
    assert_eq!(run.violations(), vec![ViolationKind::WriteOutsideCs]);
}

#[test]
fn two_leaders_at_once_overlap() {
    let run = Run::of("lead-two", Workload::Leadership);
    run.client(0, &grant(1, 1, 100, 1100, Some(600)));
    run.client(1, &grant(1, 2, 300, 1300, Some(700)));
    // The first leader's resign, after the second took office, said Ok too.
    assert_eq!(
        run.violations(),
        vec![
            ViolationKind::OverlappingCs,
            ViolationKind::ReleaseByNonOwner
        ]
    );
    // A candidate that campaigned after a term was granted must get a
    // higher term.
    let run = Run::of("lead-term-order", Workload::Leadership);
    run.client(0, &grant(1, 5, 100, 1100, Some(200)));
    let mut late = vec![invoke(1, Mode::Exclusive, Some(0), 250)];
    late.extend(grant(1, 4, 300, 1300, Some(400)).into_iter().skip(1));
    run.client(1, &late);
    assert_eq!(run.violations(), vec![ViolationKind::TokenOrder]);
}
