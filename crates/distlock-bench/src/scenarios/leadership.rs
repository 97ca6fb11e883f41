//! Scenario 6: leader election (issue 14): takeover after `resign`, next to
//! a plain lock's release-to-grant on the same store in the same run;
//! `observe` latency; takeover after the leader dies.

use std::sync::Arc;
use std::time::Duration;

use distlock::{Leadership, Lock, Locker, ObtainOptions, RetryStrategy};
use distlock_testkit::Faulty;
use futures::StreamExt;
use tokio::time::Instant;

use super::{over_faulty, report};
use crate::Env;
use crate::report::{Report, Target};
use crate::stats::{Summary, ratio, us};
use crate::stores::Store;

const NS: &str = "bench-leader";

/// The candidates' retry delay while they wait (the engine's default for
/// an unbounded wait, spelled out because the death target is TTL + it).
const RETRY: Duration = Duration::from_millis(100);

/// What a candidate got: a plain lock or a leadership.
enum Held {
    Lock(Lock),
    Leading(Leadership),
}

impl Held {
    fn term(&self) -> u64 {
        match self {
            Held::Lock(lock) => lock.fencing_token(),
            Held::Leading(leading) => leading.term(),
        }
    }

    async fn let_go(self) {
        match self {
            Held::Lock(lock) => lock.release().await.expect("release"),
            Held::Leading(leading) => leading.resign().await.expect("resign"),
        }
    }
}

/// A candidate: its own Locker (own connections, like a process) over a
/// [`Faulty`] that counts its attempts, so we know when it is waiting.
struct Side {
    faulty: Arc<Faulty>,
    locker: Locker,
    id: &'static str,
}

impl Side {
    /// A side over `base`'s backend (its connections).
    fn over(base: &Locker, id: &'static str) -> Side {
        let (faulty, locker) = over_faulty(base, NS);
        Side { faulty, locker, id }
    }

    /// Waits for `key` as a candidate (`leading`) or a plain waiter, with
    /// `ttl`; returns what it got and when.
    async fn take(&self, key: &str, leading: bool, ttl: Option<Duration>) -> (Held, Instant) {
        let mut opts = ObtainOptions::new()
            .wait_forever()
            .retry(RetryStrategy::linear(RETRY));
        if let Some(ttl) = ttl {
            opts = opts.ttl(ttl);
        }
        let held = if leading {
            Held::Leading(
                self.locker
                    .campaign_with(key, self.id, opts)
                    .await
                    .expect("campaign"),
            )
        } else {
            Held::Lock(self.locker.obtain_with(key, opts).await.expect("obtain"))
        };
        (held, Instant::now())
    }

    /// Until this side's next attempt on the store has been made and had
    /// time to be answered (it is then queued, or waiting on the holder).
    async fn attempted_since(&self, before: u64) {
        while self.faulty.acquires() == before {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `next` waits for `key` while `held` is held; once it is waiting,
/// `let_go` ends `held`. Returns the time from that call to `next`'s
/// grant, what `next` got, and when.
async fn takeover<F: Future<Output = ()>>(
    next: &Side,
    key: &str,
    leading: bool,
    let_go: impl FnOnce() -> F,
) -> (Duration, Held, Instant) {
    let before = next.faulty.acquires();
    let ending = async {
        next.attempted_since(before).await;
        let t0 = Instant::now();
        let_go().await;
        t0
    };
    let ((got, at), t0) = tokio::join!(next.take(key, leading, None), ending);
    (at - t0, got, at)
}

/// Scenario 6: Leader election: (1) one leader and one waiting candidate
/// (each its own Locker): from `resign()` to the candidate's `campaign`
/// returning, alternating with the same pair's plain lock (release to the
/// waiter's obtain); (2) from each new leader's `campaign` returning to a
/// third Locker's `observe` reporting its term; (3) a leader whose store
/// calls start to hang (a killed process: no more refreshes), to the
/// waiting candidate leading.
pub async fn leadership(env: &Env, store: Arc<dyn Store>) -> Report {
    let rounds = (env.handoffs / 10 / store.slowness()).max(4);
    let sides = [
        Side::over(&store.locker(NS).await, "a"),
        Side::over(&store.locker(NS).await, "b"),
    ];
    let observer = store.locker(NS).await;

    // The observer's reports (term, when), in a task of its own.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let mut changes = Box::pin(observer.observe("leader").expect("observe"));
    let watching = tokio::spawn(async move {
        while let Some(change) = changes.next().await {
            if let Some(leader) = change.expect("observe") {
                let _ = seen_tx.send((leader.term, Instant::now()));
            }
        }
    });

    let (mut plain, _) = sides[0].take("plain", false, None).await;
    let (mut leading, _) = sides[0].take("leader", true, None).await;
    let (mut plain_takeovers, mut resign_takeovers) = (Vec::new(), Vec::new());
    let (mut observed, mut observer_first) = (Vec::new(), 0);
    let mut last_term = leading.term();
    for round in 0..rounds {
        let next = &sides[1 - round % 2];
        let (took, got, _) = takeover(next, "plain", false, || plain.let_go()).await;
        plain_takeovers.push(took);
        plain = got;
        let (took, got, at) = takeover(next, "leader", true, || leading.let_go()).await;
        resign_takeovers.push(took);
        leading = got;
        let term = leading.term();
        assert!(term > last_term, "term {term} after {last_term}");
        last_term = term;
        // Every round waits for the observer, so no term goes unseen.
        loop {
            let (seen_term, when) = seen.recv().await.expect("observer running");
            assert!(seen_term <= term, "observed term {seen_term} beyond {term}");
            if seen_term == term {
                observer_first += usize::from(when < at);
                observed.push(when.saturating_duration_since(at));
                break;
            }
        }
    }
    plain.let_go().await;
    leading.let_go().await;
    watching.abort();

    let mut report = report(
        &*store,
        "leadership",
        format!(
            "{rounds} takeovers between two candidates with their own Lockers, a third observing; \
             {} killed leaders at ttl {:?}",
            env.lost_trials, env.lost_ttl
        ),
    );
    let plain_takeovers = Summary::of(plain_takeovers, None);
    let resign_takeovers = Summary::of(resign_takeovers, None);
    report.figure(
        "resign takeover / plain lock handoff: p50",
        ratio(resign_takeovers.p50, plain_takeovers.p50),
    );
    report.figure(
        "resign takeover / plain lock handoff: p99",
        ratio(resign_takeovers.p99, plain_takeovers.p99),
    );
    report.figure(
        "observer reported the term before campaign returned",
        observer_first as f64,
    );
    report.row("plain lock: release -> waiter's obtain", plain_takeovers);
    report.row("resign -> candidate's campaign returns", resign_takeovers);
    report.row(
        "campaign returned -> observe reports the term",
        Summary::of(observed, None),
    );
    report.notes.push(format!(
        "observe wakes on the store's notifications where it has them and reads the key every {:?} otherwise; \
         an observer that saw the term first counts as 0; \
         {}-handoff-processes in the same run has the plain handoff among 8 waiters",
        distlock::DEFAULT_OBSERVE_POLL,
        store.name()
    ));
    killed_leaders(env, &*store, &sides, &mut report).await;

    for side in &sides {
        side.locker.close().await.expect("close");
    }
    observer.close().await.expect("close");
    report
}

/// Part (3): leaders at a short TTL whose store calls start to hang at a
/// random point of a refresh interval, each with a candidate waiting.
async fn killed_leaders(env: &Env, store: &dyn Store, sides: &[Side; 2], report: &mut Report) {
    if store.name() == "file" {
        report
            .notes
            .push("killed leader: n/a: a file lock dies with its process".into());
        return;
    }
    let ttl = env.lost_ttl;
    let trials: Vec<(Duration, bool)> = futures::stream::iter(0..env.lost_trials)
        .map(|i| async move {
            let key = format!("killed-{i}");
            // Each its own Faulty, so one hanging leader stalls no other.
            let (doomed, heir) = (
                Side::over(&sides[0].locker, "doomed"),
                Side::over(&sides[1].locker, "heir"),
            );
            let (leading, _) = doomed.take(&key, true, Some(ttl)).await;
            let Held::Leading(leading) = leading else {
                unreachable!("campaigned")
            };
            let lost = leading.lost();
            let lost = tokio::spawn(async move {
                lost.await;
                Instant::now()
            });
            // Killed at a random point of its refresh interval.
            tokio::time::sleep((ttl / 3).mul_f64(fastrand::f64())).await;
            let (latency, got, at) = takeover(&heir, &key, true, || async {
                doomed.faulty.hang(true);
            })
            .await;
            // The dead leader must have stopped acting before the heir led.
            let stopped = lost.await.expect("lost") <= at;
            doomed.faulty.hang(false);
            drop(leading);
            got.let_go().await;
            (latency, stopped)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let still_leading = trials.iter().filter(|(_, stopped)| !stopped).count();
    let latencies = Summary::of(trials.into_iter().map(|(d, _)| d).collect(), None);
    let bound = ttl + RETRY;
    report.figure(
        "killed leader: max takeover / (ttl + retry)",
        ratio(latencies.max, bound),
    );
    report.figure(
        "killed leader: old leader not yet lost() when the heir led",
        still_leading as f64,
    );
    report.targets.push(Target::new(
        format!("{} takeover after a killed leader, max", store.name()),
        us(latencies.max) / 1e3,
        us(bound) / 1e3,
        " ms",
    ));
    report.row("leader's calls hang -> candidate leads", latencies);
    report.notes.push(format!(
        "a killed leader's key expires one ttl after its last refresh got through, up to a refresh interval \
         ({:?}) before its calls began to hang; the candidate retries every {RETRY:?} at most",
        ttl / 3
    ));
}
