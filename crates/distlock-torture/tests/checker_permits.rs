//! The checker on small hand-written histories of semaphore permits and
//! read and write locks: each check fires on the history that breaks it,
//! and stays quiet on the same history made right.

mod common;

use common::{MS, Run, grant_as, invoke, write_as};
use distlock_torture::checker::ViolationKind;
use distlock_torture::history::{Event, Mode};
use distlock_torture::nemesis::FaultKind;
use distlock_torture::variant::Workload;

const P3: Mode = Mode::Permit { limit: 3 };

/// Permit grants of a semaphore of 3 on key k, one client each: (token,
/// obtained at, released at) in ms, valid for a second.
fn permits(run: &Run, mode: Mode, grants: &[(u64, i64, i64)]) {
    for (client, &(token, ok, release)) in grants.iter().enumerate() {
        run.client(
            client as u32,
            &grant_as(mode, 1, token, ok, ok + 1000, Some(release)),
        );
    }
}

#[test]
fn three_permits_at_once_pass_and_a_fourth_is_over_the_limit() {
    let run = Run::of("sem-three", Workload::Semaphore);
    permits(&run, P3, &[(1, 100, 400), (2, 110, 400), (3, 120, 400)]);
    let report = run.report();
    assert!(report.passed(), "{}", report.table());
    assert_eq!(report.max_concurrent, 3);
    assert_eq!(report.acquisitions_by_mode["permit of 3"], 3);

    let run = Run::of("sem-four", Workload::Semaphore);
    permits(
        &run,
        P3,
        &[(1, 100, 400), (2, 110, 400), (3, 120, 400), (4, 130, 400)],
    );
    assert_eq!(run.violations(), vec![ViolationKind::PermitsOverLimit]);

    // The first holder was killed before the fourth came: three at most.
    let run = Run::of("sem-four-dead", Workload::Semaphore);
    permits(
        &run,
        P3,
        &[(1, 100, 400), (2, 110, 400), (3, 120, 400), (4, 130, 400)],
    );
    run.fault(FaultKind::ClientKill, 0, 125 * MS, 125 * MS);
    assert_eq!(run.violations(), vec![]);

    // A permit's section ends at its validity deadline: its holder may not
    // rely on it after (it never released; the store let a fourth in).
    let run = Run::of("sem-expired", Workload::Semaphore);
    permits(&run, P3, &[(2, 110, 400), (3, 120, 400), (4, 130, 400)]);
    run.client(3, &grant_as(P3, 1, 1, 100, 125, None));
    assert_eq!(run.violations(), vec![]);

    // Sections end at release: a fourth after one left is fine.
    let run = Run::of("sem-handover", Workload::Semaphore);
    permits(
        &run,
        P3,
        &[(1, 100, 125), (2, 110, 400), (3, 120, 400), (4, 130, 400)],
    );
    assert_eq!(run.violations(), vec![]);
}

#[test]
fn permits_beyond_what_their_acts_allow_are_over_the_limit() {
    // Four permits of a semaphore of 4, each writing to a resource that
    // allows three (control 6's history).
    let run = Run::of("sem-capacity", Workload::Semaphore);
    let p4 = Mode::Permit { limit: 4 };
    for (client, token) in (1..=4).enumerate() {
        let mut events = grant_as(p4, 1, token, 100 + 10 * client as i64, 1100, Some(400));
        events[2] = write_as(P3, 2, 1, token, 150, 1100 * MS);
        run.client(client as u32, &events);
    }
    assert_eq!(run.violations(), vec![ViolationKind::PermitsOverLimit]);
}

#[test]
fn readers_share_but_a_writer_overlaps_nobody() {
    let run = Run::of("rw-readers", Workload::RwLock);
    permits(
        &run,
        Mode::Read,
        &[(1, 100, 400), (2, 110, 400), (3, 120, 400)],
    );
    run.client(3, &grant_as(Mode::Exclusive, 1, 4, 400, 1400, Some(500)));
    let report = run.report();
    assert!(report.passed(), "{}", report.table());
    assert_eq!(report.max_concurrent, 3);

    let run = Run::of("rw-writer-overlaps", Workload::RwLock);
    permits(&run, Mode::Read, &[(1, 100, 400), (2, 110, 400)]);
    run.client(3, &grant_as(Mode::Exclusive, 1, 4, 300, 1300, Some(500)));
    // The readers' releases after the writer's grant returned Ok, too.
    assert_eq!(
        run.violations(),
        vec![
            ViolationKind::OverlappingCs,
            ViolationKind::ReleaseByNonOwner
        ]
    );

    // A read lock that wrote as a writer (control 7's history).
    let run = Run::of("rw-read-locked-writer", Workload::RwLock);
    permits(&run, Mode::Read, &[(1, 100, 400), (2, 110, 400)]);
    let mut writer = grant_as(Mode::Read, 1, 3, 120, 1120, Some(400));
    writer[2] = write_as(Mode::Exclusive, 2, 1, 3, 130, 1120 * MS);
    run.client(3, &writer);
    assert_eq!(run.violations(), vec![ViolationKind::OverlappingCs]);
}

#[test]
fn the_register_must_refuse_permits_below_the_window_and_readers_below_a_writer() {
    // Permits 2..=5 of a semaphore of 3 (sequential grants, so that only
    // the register's log is in question).
    let sem = |case: &str, log: &[(u64, Mode, bool)]| {
        let run = Run::of(case, Workload::Semaphore);
        permits(
            &run,
            P3,
            &[(2, 100, 101), (3, 102, 103), (4, 104, 105), (5, 106, 107)],
        );
        run.register_acts(log);
        run.violations()
    };
    let newer_three = [(3, P3, true), (4, P3, true), (5, P3, true)];
    assert_eq!(
        sem(
            "fence-window-ok",
            &[(2, P3, true), (4, P3, true), (3, P3, true)]
        ),
        vec![]
    );
    assert_eq!(
        sem(
            "fence-window-refused",
            &[newer_three.as_slice(), &[(2, P3, false)]].concat()
        ),
        vec![]
    );
    assert_eq!(
        sem(
            "fence-window-accepted",
            &[newer_three.as_slice(), &[(2, P3, true)]].concat()
        ),
        vec![ViolationKind::StaleWriteAccepted]
    );

    let rw = |case: &str, log: &[(u64, Mode, bool)]| {
        let run = Run::of(case, Workload::RwLock);
        run.client(0, &grant_as(Mode::Read, 1, 1, 100, 1100, Some(200)));
        run.client(1, &grant_as(Mode::Exclusive, 1, 2, 210, 1210, Some(300)));
        run.client(2, &grant_as(Mode::Read, 1, 3, 310, 1310, Some(400)));
        run.register_acts(log);
        run.violations()
    };
    let (r, x) = (Mode::Read, Mode::Exclusive);
    assert_eq!(
        rw(
            "fence-rw-ok",
            &[(1, r, true), (2, x, true), (3, r, true), (1, r, false)]
        ),
        vec![]
    );
    assert_eq!(
        rw("fence-stale-reader", &[(2, x, true), (1, r, true)]),
        vec![ViolationKind::StaleWriteAccepted]
    );
    assert_eq!(
        rw("fence-stale-writer", &[(3, r, true), (2, x, true)]),
        vec![ViolationKind::StaleWriteAccepted]
    );
}

#[test]
fn a_permits_release_is_by_a_non_owner_only_after_an_exclusive_grant() {
    // Permit 1 released (Ok) after permit 2 was granted: they coexist.
    let run = Run::of("rel-permits", Workload::Semaphore);
    permits(&run, P3, &[(1, 100, 400), (2, 200, 500)]);
    assert_eq!(run.violations(), vec![]);

    // Read lock 1 released (Ok) after write lock 2 was granted: the write
    // lock proves the read lock was gone, so the store let a stale owner
    // release (and the sections overlap).
    let run = Run::of("rel-after-writer", Workload::RwLock);
    run.client(0, &grant_as(Mode::Read, 1, 1, 100, 1100, Some(400)));
    run.client(1, &grant_as(Mode::Exclusive, 1, 2, 300, 1300, Some(350)));
    assert_eq!(
        run.violations(),
        vec![
            ViolationKind::OverlappingCs,
            ViolationKind::ReleaseByNonOwner
        ]
    );
}

#[test]
fn a_limit_mismatch_nobody_asked_for_is_caught() {
    let refused = |limit: u32| {
        vec![
            invoke(1, Mode::Permit { limit }, Some(0), 200),
            Event::ObtainFail {
                op: 1,
                not_obtained: false,
                closed: false,
                limit_mismatch: true,
                error: "\"k\": asked for 3 permits, held as 4".into(),
                t: 201 * MS,
            },
        ]
    };
    let run = Run::of("mismatch-nobody", Workload::Semaphore);
    permits(&run, P3, &[(1, 100, 400)]);
    run.client(1, &refused(3));
    assert_eq!(run.violations(), vec![ViolationKind::LimitMismatch]);

    // Another client did ask for 4: the refusal is the store's duty.
    let run = Run::of("mismatch-asked", Workload::Semaphore);
    permits(&run, Mode::Permit { limit: 4 }, &[(1, 100, 400)]);
    run.client(1, &refused(3));
    assert_eq!(run.violations(), vec![]);
}
