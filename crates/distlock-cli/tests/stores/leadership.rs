//! `distlock elect` and `distlock leader [--watch]`.

use std::fs::File;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::stderr;
use crate::{Store, wait_until};

/// The lines of `name` in the case's directory (none if it is missing).
fn lines(dir: &crate::common::TempDir, name: &str) -> Vec<String> {
    std::fs::read_to_string(dir.path(name))
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Two candidates: only the leader runs its command; when it exits, the
/// other takes over at once with a greater term, and `leader --watch` saw
/// both terms in order and then no leader.
pub fn elect_runs_only_the_leader_and_hands_over_when_it_exits(store: Store) {
    let case = store.case("elect");
    let dir = &case.dir;
    let watch_out = File::create(dir.path("watch")).unwrap();
    let mut watch = dir
        .distlock(&["leader", "sched", "--watch"])
        .stdout(watch_out)
        .spawn()
        .unwrap();
    wait_until("the watch printed the first state", || {
        lines(dir, "watch")
            .first()
            .is_some_and(|l| l.ends_with("has no leader"))
    });
    let candidate = |id: &str| {
        let script = format!(
            "echo \"{id} $DISTLOCK_TERM $DISTLOCK_FENCING_TOKEN\" >> terms; \
             while [ ! -e stop-{id} ]; do sleep 0.02; done"
        );
        dir.spawn(&[
            "elect", "sched", "--id", id, "--ttl", "3s", "--", "sh", "-c", &script,
        ])
    };
    let mut candidates = [("a", candidate("a")), ("b", candidate("b"))];
    wait_until("a leader runs", || lines(dir, "terms").len() == 1);
    // The other one waits: give it time to (wrongly) start.
    std::thread::sleep(Duration::from_millis(300));
    let first = lines(dir, "terms");
    assert_eq!(first.len(), 1, "two leaders ran: {first:?}");
    let fields: Vec<&str> = first[0].split(' ').collect();
    let (leader, term) = (fields[0].to_owned(), fields[1].parse::<u64>().unwrap());
    assert_eq!(fields[1], fields[2], "DISTLOCK_TERM is the fencing token");

    let out = dir.output(&["leader", "sched", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            json["leader"]["identity"].as_str(),
            json["leader"]["term"].as_u64()
        ),
        (Some(leader.as_str()), Some(term))
    );

    std::fs::write(dir.path(&format!("stop-{leader}")), "").unwrap();
    let resigned = Instant::now();
    // Well under the TTL (3 s), so the release woke the other candidate. On
    // a replicated store a grant withdrawn for want of acknowledgement
    // costs up to its replica timeout (500 ms) and a retry more.
    wait_until("the other candidate took over", || {
        lines(dir, "terms").len() == 2
    });
    let handover = resigned.elapsed();
    assert!(
        handover < Duration::from_secs(2),
        "took {handover:?} to hand over"
    );
    let second = lines(dir, "terms")[1].clone();
    let next_term: u64 = second.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(!second.starts_with(&leader) && next_term > term, "{second}");
    // Observing is notified or polled: a term seen by the watch is one that
    // lasted long enough (a poll, 250 ms, at most).
    wait_until("the watch saw the second leader", || {
        lines(dir, "watch")
            .iter()
            .any(|l| l.contains(&format!("term {next_term}")))
    });
    let other = if leader == "a" { "b" } else { "a" };
    std::fs::write(dir.path(&format!("stop-{other}")), "").unwrap();
    for (id, child) in &mut candidates {
        assert!(
            child.wait().unwrap().success(),
            "candidate {id} exits with its command's code"
        );
    }
    let out = dir.output(&["leader", "sched"]);
    assert_eq!(out.status.code(), Some(1));
    wait_until("the watch saw the end", || {
        lines(dir, "watch")
            .last()
            .is_some_and(|l| l.ends_with("has no leader"))
            && lines(dir, "watch").len() >= 3
    });
    kill(Pid::from_raw(watch.id() as i32), Signal::SIGINT).unwrap();
    assert_eq!(watch.wait().unwrap().code(), Some(0));
    let seen = lines(dir, "watch");
    let terms: Vec<u64> = seen
        .iter()
        .filter_map(|l| l.split(", term ").nth(1))
        .map(|t| t.split(',').next().unwrap().parse().unwrap())
        .collect();
    let ran: Vec<u64> = lines(dir, "terms")
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(ran, vec![term, next_term], "only two leaders ran");
    if let Err(e) = check_watched(&terms, &ran, store.withdraws_grants) {
        panic!("{e}: {seen:?}");
    }
    store.assert_clean(&case, "both candidates resigned");
}

/// What `leader --watch` may have printed, as `watched` terms, when the
/// leaders that ran had the terms `ran`: exactly those, or, where a grant
/// can be withdrawn after it was stored (`withdraws`), those in increasing
/// order with withdrawn ones among them: terms no leader ran with, and
/// none after the last leader (nobody campaigned after it).
fn check_watched(watched: &[u64], ran: &[u64], withdraws: bool) -> Result<(), String> {
    if !withdraws {
        return if watched == ran {
            Ok(())
        } else {
            Err(format!(
                "watched terms {watched:?}, not the leaders' {ran:?}"
            ))
        };
    }
    if !watched.windows(2).all(|w| w[0] < w[1]) {
        return Err(format!("watched terms {watched:?} do not increase"));
    }
    if let Some(missed) = ran.iter().find(|t| !watched.contains(t)) {
        return Err(format!("the watch missed term {missed} of {ran:?}"));
    }
    if watched.last() != ran.last() {
        return Err(format!(
            "watched terms {watched:?} go on after the last leader's, {ran:?}"
        ));
    }
    Ok(())
}

#[test]
fn watched_terms_are_checked_exactly_unless_grants_can_be_withdrawn() {
    let ran = [10, 20];
    assert_eq!(check_watched(&[10, 20], &ran, false), Ok(()));
    assert_eq!(check_watched(&[10, 20], &ran, true), Ok(()));
    // A withdrawn grant before either leader, or between them.
    assert_eq!(check_watched(&[5, 10, 20], &ran, true), Ok(()));
    assert_eq!(check_watched(&[10, 15, 20], &ran, true), Ok(()));
    for (watched, withdraws) in [
        (&[5, 10, 20][..], false),
        (&[10][..], false),
        (&[10, 20, 15][..], true),
        (&[10, 10, 20][..], true),
        (&[5, 20][..], true),
        (&[10, 20, 25][..], true),
    ] {
        assert!(
            check_watched(watched, &ran, withdraws).is_err(),
            "{watched:?} passed (withdraws: {withdraws})"
        );
    }
}

/// A leadership deleted behind the leader's back stops its command, and
/// `elect` exits 76 as `run` does.
pub fn a_lost_leadership_stops_the_command_with_exit_76(store: Store) {
    let case = store.case("elect_lost");
    let dir = &case.dir;
    let mut leader = dir.spawn(&[
        "elect",
        "sched",
        "--ttl",
        "3s",
        "--kill-grace",
        "200ms",
        "--",
        "sleep",
        "30",
    ]);
    wait_until("a leader", || {
        dir.output(&["leader", "sched"]).status.code() == Some(0)
    });
    store.delete_behind_back(&case, "sched");
    let status = leader.wait().unwrap();
    let mut message = String::new();
    std::io::Read::read_to_string(leader.stderr.as_mut().unwrap(), &mut message).unwrap();
    assert_eq!(status.code(), Some(76), "{message}");
    store.assert_clean(&case, "the leadership was lost");
}
