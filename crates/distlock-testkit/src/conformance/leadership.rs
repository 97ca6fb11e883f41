//! Leadership: campaign, resign, observe (`locker.campaign(key, id)`).

use std::sync::Arc;
use std::time::Duration;

use distlock::{Error, Leader, Locker, LostReason, ObtainOptions, RetryStrategy};
use futures::{Stream, StreamExt};
use tokio::time::{Instant, sleep, timeout};

use super::{MS, SLACK, locker, next_holder_wait};
use crate::Faulty;
use crate::fixture::Fixture;

/// How long the observer cases read the key at the most apart.
const POLL: Duration = Duration::from_millis(100);

/// A campaign that waits as long as it takes, with the store's short TTL.
fn campaign_options(fx: &dyn Fixture) -> ObtainOptions {
    ObtainOptions::new()
        .ttl(fx.short_ttl())
        .wait_forever()
        .retry(RetryStrategy::linear(Duration::from_secs(3)))
}

/// A candidate whose store can be cut off (its calls hang), as a leader
/// whose process froze or lost the network.
async fn severable(fx: &dyn Fixture, ns: &str) -> (Locker, Arc<Faulty>) {
    let store = Arc::new(Faulty::new(fx.backend().await));
    let locker = Locker::builder(store.clone())
        .namespace(ns)
        .op_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    (locker, store)
}

/// The next change an observer reports, within `within`.
async fn next_change(
    changes: &mut (impl Stream<Item = distlock::Result<Option<Leader>>> + Unpin),
    within: Duration,
) -> Option<Leader> {
    timeout(within, changes.next())
        .await
        .expect("no change reported in time")
        .expect("the stream ended")
        .expect("observing failed")
}

/// 12 candidates over 3 lockers campaign at once: one leads, and nobody
/// else is told it leads while it does; each resignation makes exactly one
/// next leader, with a greater term.
pub async fn one_leader_among_racing_candidates(fx: &dyn Fixture) {
    let (first, ns) = locker(fx, "lead_race").await;
    let mut lockers = vec![first];
    for _ in 1..3 {
        lockers.push(fx.locker(&ns).await);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = campaign_options(fx).ttl(Duration::from_secs(10));
    for i in 0..12 {
        let locker = lockers[i % 3].clone();
        let (tx, opts) = (tx.clone(), opts.clone());
        tokio::spawn(async move {
            let leading = locker
                .campaign_with("k", format!("c{i}"), opts)
                .await
                .unwrap();
            let _ = tx.send(leading);
        });
    }
    let mut last_term = 0;
    for round in 0..12 {
        let leading = timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("round {round}: nobody leads"))
            .unwrap();
        assert!(leading.term() > last_term, "terms must increase");
        last_term = leading.term();
        // Nobody else may lead meanwhile.
        sleep(20 * MS).await;
        assert!(rx.try_recv().is_err(), "round {round}: two leaders at once");
        let seen = lockers[round % 3].leader("k").await.unwrap().unwrap();
        assert_eq!(
            (seen.term, seen.identity.as_str()),
            (leading.term(), leading.identity())
        );
        leading.resign().await.unwrap();
    }
}

/// Terms strictly increase over leaders, and equal the fencing token of
/// the grant (a plain lock on the key draws from the same counter).
pub async fn terms_increase_and_are_fencing_tokens(fx: &dyn Fixture) {
    let (a, _) = locker(fx, "lead_terms").await;
    let mut last = 0;
    for i in 0..5 {
        let leading = a.campaign("k", format!("n{i}")).await.unwrap();
        assert!(leading.term() > last);
        assert_eq!(leading.as_lock().fencing_token(), leading.term());
        last = leading.term();
        leading.resign().await.unwrap();
        let lock = a.obtain("k").await.unwrap();
        assert!(
            lock.fencing_token() > last,
            "a lock after a leader fences it out"
        );
        last = lock.fencing_token();
        lock.release().await.unwrap();
    }
}

/// A resignation hands over at once: the waiting candidate leads within a
/// notification, not a poll (its retry delay is 3 s).
pub async fn resign_hands_over_promptly(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "lead_resign").await;
    let b = fx.locker(&ns).await;
    let leading = a.campaign("k", "a").await.unwrap();
    let opts = campaign_options(fx).ttl(Duration::from_secs(10));
    let next = tokio::spawn(async move {
        let leading = b.campaign_with("k", "b", opts).await.unwrap();
        (Instant::now(), leading)
    });
    sleep(200 * MS).await; // b waits in its 3 s retry delay
    let resigned = Instant::now();
    leading.resign().await.unwrap();
    let (at, second) = next.await.unwrap();
    assert_eq!(second.identity(), "b");
    let handover = at - resigned;
    assert!(
        handover < Duration::from_millis(1500),
        "handover took {handover:?}"
    );
}

/// A leader dropped without resigning resigns in the background.
pub async fn a_dropped_leadership_resigns_in_the_background(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "lead_drop").await;
    let b = fx.locker(&ns).await;
    drop(
        a.campaign_with("k", "a", ObtainOptions::new().ttl(Duration::from_secs(30)))
            .await
            .unwrap(),
    );
    let start = Instant::now();
    let next = b
        .campaign_with("k", "b", ObtainOptions::new().wait(SLACK))
        .await
        .unwrap();
    assert!(start.elapsed() < SLACK);
    next.resign().await.unwrap();
}

/// `observe` reports the current state first, then every leader in order
/// (each leads for a few polls), then no leader.
pub async fn observe_reports_every_change_in_order(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "lead_observe").await;
    let b = fx.locker(&ns).await;
    let mut changes = Box::pin(a.observe_every("k", POLL).unwrap());
    assert_eq!(next_change(&mut changes, SLACK).await, None);
    let first = a.campaign("k", "a").await.unwrap();
    let seen = next_change(&mut changes, POLL + SLACK)
        .await
        .expect("a leader");
    assert_eq!((seen.identity.as_str(), seen.term), ("a", first.term()));
    let opts = campaign_options(fx).ttl(Duration::from_secs(10));
    let waiting = tokio::spawn(async move { b.campaign_with("k", "b", opts).await.unwrap() });
    sleep(3 * POLL).await;
    first.resign().await.unwrap();
    let second = waiting.await.unwrap();
    // A moment without a leader in between may or may not be seen.
    let mut seen = next_change(&mut changes, POLL + SLACK).await;
    if seen.is_none() {
        seen = next_change(&mut changes, POLL + SLACK).await;
    }
    let seen = seen.expect("the second leader");
    assert_eq!((seen.identity.as_str(), seen.term), ("b", second.term()));
    sleep(3 * POLL).await;
    second.resign().await.unwrap();
    assert_eq!(next_change(&mut changes, POLL + SLACK).await, None);
}

/// How fast an observer must see a change: within a second at a 30 s poll
/// on a store whose `capabilities().notifies_observers`; at its poll, and
/// not within a second of a change made right after a read, at a 3 s poll
/// on others. Either way the capability is checked against what the store
/// does.
struct Promptness {
    notifies: bool,
    poll: Duration,
    /// How long to wait for a report before failing.
    within: Duration,
}

impl Promptness {
    fn of(locker: &Locker) -> Self {
        let notifies = locker.backend().capabilities().notifies_observers;
        let poll = Duration::from_secs(if notifies { 30 } else { 3 });
        let within = if notifies { 2 * SECOND } else { poll + SLACK };
        Promptness {
            notifies,
            poll,
            within,
        }
    }

    fn check(&self, what: &str, took: Duration) {
        if self.notifies {
            assert!(took < SECOND, "{what} seen after {took:?}: not woken");
        } else {
            assert!(
                took >= SECOND,
                "{what} seen after {took:?}, before the poll: does the store notify?"
            );
        }
    }

    async fn next(
        &self,
        changes: &mut (impl Stream<Item = distlock::Result<Option<Leader>>> + Unpin),
    ) -> Option<Leader> {
        timeout(self.within, changes.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no change reported within {:?} (poll {:?})",
                    self.within, self.poll
                )
            })
            .expect("the stream ended")
            .expect("observing failed")
    }
}

const SECOND: Duration = Duration::from_secs(1);

/// `observe` is woken by a campaign and by a resignation on a store that
/// notifies, instead of reading at its poll (see `Promptness`); the
/// observer runs in a task of its own, as an application's would.
pub async fn observe_is_woken_by_a_campaign_and_a_resignation(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "lead_woken").await;
    let b = fx.locker(&ns).await;
    let prompt = Promptness::of(&b);
    let mut changes = Box::pin(b.observe_every("k", prompt.poll).unwrap());
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let observer = tokio::spawn(async move {
        while let Some(change) = changes.next().await {
            if tx.send((change, Instant::now())).is_err() {
                break;
            }
        }
    });
    let mut next = async || {
        let (change, at) = timeout(prompt.within, seen.recv())
            .await
            .expect("no change reported in time")
            .expect("the observer stopped");
        (change.expect("observing failed"), at)
    };
    assert_eq!(next().await.0, None);
    let campaigned = Instant::now();
    let leading = a.campaign("k", "a").await.unwrap();
    let (now, at) = next().await;
    assert_eq!(now.map(|l| l.term), Some(leading.term()));
    prompt.check("the campaign", at - campaigned);
    let resigned = Instant::now();
    leading.resign().await.unwrap();
    let (now, at) = next().await;
    assert_eq!(now, None);
    prompt.check("the resignation", at - resigned);
    observer.abort();
}

/// A change made while the stream's consumer was busy (not polling it)
/// is reported at once when it polls again, on a store that notifies: the
/// observer listened from before its last read, not from its next poll.
pub async fn observe_sees_a_change_made_while_its_consumer_was_busy(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "lead_busy").await;
    let b = fx.locker(&ns).await;
    let prompt = Promptness::of(&b);
    let mut changes = Box::pin(b.observe_every("k", prompt.poll).unwrap());
    assert_eq!(prompt.next(&mut changes).await, None);
    let campaigned = Instant::now();
    let leading = a.campaign("k", "a").await.unwrap();
    sleep(100 * MS).await; // the consumer is busy
    let seen = prompt.next(&mut changes).await.expect("a leader");
    assert_eq!(seen.term, leading.term());
    prompt.check("the campaign", campaigned.elapsed());
    let resigned = Instant::now();
    leading.resign().await.unwrap();
    sleep(100 * MS).await;
    assert_eq!(prompt.next(&mut changes).await, None);
    prompt.check("the resignation", resigned.elapsed());
}

/// An observer is not told anything while the leader stays the same, even
/// across its refreshes.
pub async fn observe_is_quiet_while_the_leader_stays(fx: &dyn Fixture) {
    let (a, _) = locker(fx, "lead_quiet").await;
    let leading = a
        .campaign_with("k", "a", campaign_options(fx))
        .await
        .unwrap();
    let mut changes = Box::pin(a.observe_every("k", POLL).unwrap());
    let seen = next_change(&mut changes, SLACK).await.expect("a leader");
    assert_eq!(seen.term, leading.term());
    // Several TTLs, so several refreshes.
    let quiet = timeout(fx.short_ttl() * 3, changes.next()).await;
    assert!(quiet.is_err(), "reported a change without one: {quiet:?}");
    leading.resign().await.unwrap();
}

/// `leader` reads, never writes: it creates nothing, and a campaign right
/// after it is not held up.
pub async fn leader_is_read_only(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "lead_readonly").await;
    let b = fx.locker(&ns).await;
    for _ in 0..3 {
        assert_eq!(b.leader("k").await.unwrap(), None);
    }
    assert!(!a.is_locked("k").await.unwrap());
    let leading = a
        .campaign_with("k", "a", ObtainOptions::new().try_once())
        .await
        .unwrap();
    let seen = b.leader("k").await.unwrap().unwrap();
    assert_eq!(seen.term, leading.term());
    leading.resign().await.unwrap();
    assert_eq!(b.leader("k").await.unwrap(), None);
}

/// The identity round-trips, whatever its characters, with the term, when
/// the leader took office and (on stores with TTLs) the time it has left.
pub async fn leader_reports_identity_term_since_and_time_left(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "lead_identity").await;
    let b = fx.locker(&ns).await;
    let identity = "node-7 ü 🚀 {\"x\": 1}";
    let before = std::time::SystemTime::now() - Duration::from_secs(1);
    let ttl = Duration::from_secs(10);
    let leading = a
        .campaign_with("k", identity, ObtainOptions::new().ttl(ttl))
        .await
        .unwrap();
    assert_eq!(leading.identity(), identity);
    let seen = b.leader("k").await.unwrap().unwrap();
    assert_eq!(seen.identity, identity);
    assert_eq!(seen.term, leading.term());
    let since = seen.since.expect("since");
    assert!(since >= before && since <= std::time::SystemTime::now() + Duration::from_secs(1));
    if b.backend().capabilities().ttl_expiry {
        let left = seen.expires_in.expect("time left");
        assert!(left <= ttl && left > ttl / 2, "{left:?}");
    }
    leading.resign().await.unwrap();
}

/// Empty and multi-line identities are refused at once, before the store
/// is asked.
pub async fn invalid_identities_are_rejected(fx: &dyn Fixture) {
    let (a, _) = locker(fx, "lead_invalid").await;
    for identity in ["", "a\nb", "a\r"] {
        match a.campaign("k", identity).await {
            Err(Error::InvalidOptions {
                option: "identity", ..
            }) => {}
            other => panic!("{identity:?}: {other:?}"),
        }
    }
    assert!(!a.is_locked("k").await.unwrap());
}

/// A campaign with a deadline gives up at it, leaving nothing behind: once
/// the leader resigns, the key is free.
pub async fn a_campaign_gives_up_at_its_deadline_and_leaves_nothing(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "lead_deadline").await;
    let b = fx.locker(&ns).await;
    let leading = a.campaign("k", "a").await.unwrap();
    let start = Instant::now();
    let err = b
        .campaign_with("k", "b", ObtainOptions::new().wait(300 * MS))
        .await
        .unwrap_err();
    assert!(err.is_not_obtained(), "{err}");
    assert!(start.elapsed() >= 300 * MS && start.elapsed() < 300 * MS + SLACK);
    leading.resign().await.unwrap();
    b.close().await.unwrap(); // finishes the background release of its queue entry
    let next = a
        .campaign_with("k", "c", ObtainOptions::new().wait(SLACK))
        .await
        .unwrap();
    next.resign().await.unwrap();
}

/// A campaign future dropped while waiting leaves no candidate behind:
/// after the leader resigns, nobody leads.
pub async fn a_dropped_campaign_leaves_no_candidate(fx: &dyn Fixture) {
    let (a, ns) = locker(fx, "lead_cancel").await;
    let b = fx.locker(&ns).await;
    let leading = a.campaign("k", "a").await.unwrap();
    let waiting = b.campaign_with("k", "b", campaign_options(fx));
    assert!(timeout(200 * MS, waiting).await.is_err());
    leading.resign().await.unwrap();
    b.close().await.unwrap();
    sleep(100 * MS).await;
    assert_eq!(
        a.leader("k").await.unwrap(),
        None,
        "a dropped campaign took office"
    );
    let next = a
        .campaign_with("k", "c", ObtainOptions::new().try_once())
        .await
        .unwrap();
    next.resign().await.unwrap();
}

/// A leader cut off from the store (its calls hang) is told at its validity
/// deadline, never later; another candidate takes over once the store
/// expires it, within its TTL and a retry.
pub async fn a_cut_off_leader_is_lost_at_its_deadline_and_replaced(fx: &dyn Fixture) {
    let (b, ns) = locker(fx, "lead_cutoff").await;
    let (a, cut) = severable(fx, &ns).await;
    let ttl = fx.short_ttl();
    let leading = a
        .campaign_with("k", "a", ObtainOptions::new().ttl(ttl))
        .await
        .unwrap();
    cut.hang(true);
    if !b.backend().capabilities().ttl_expiry {
        // Without TTL expiry (file locks) the leadership lasts while its
        // holder does, cut off or not.
        sleep(ttl + SLACK).await;
        assert!(!leading.is_lost());
        assert_eq!(
            b.leader("k").await.unwrap().map(|l| l.term),
            Some(leading.term())
        );
        cut.hang(false);
        return leading.resign().await.unwrap();
    }
    let deadline = leading.valid_until();
    let reason = timeout(ttl + SLACK, leading.lost())
        .await
        .expect("lost never fired");
    assert_eq!(reason, LostReason::Expired);
    assert!(
        Instant::now() <= deadline + 50 * MS,
        "lost fired after the deadline"
    );
    let start = Instant::now();
    let next = b
        .campaign_with(
            "k",
            "b",
            campaign_options(fx).retry(RetryStrategy::linear(100 * MS)),
        )
        .await
        .unwrap();
    assert!(next.term() > leading.term());
    assert!(
        start.elapsed() < next_holder_wait(fx),
        "took {:?}",
        start.elapsed()
    );
    next.resign().await.unwrap();
    cut.hang(false);
    drop(leading);
}

/// An observer reports a leader that was cut off gone within its TTL and a
/// poll.
pub async fn observe_reports_a_vanished_leader_within_a_poll(fx: &dyn Fixture) {
    let (b, ns) = locker(fx, "lead_vanish").await;
    let (a, cut) = severable(fx, &ns).await;
    let leading = a
        .campaign_with("k", "a", ObtainOptions::new().ttl(fx.short_ttl()))
        .await
        .unwrap();
    let mut changes = Box::pin(b.observe_every("k", POLL).unwrap());
    assert!(next_change(&mut changes, SLACK).await.is_some());
    cut.hang(true);
    if !b.backend().capabilities().ttl_expiry {
        // Without TTL expiry the leader stays, and so does what is observed.
        let quiet = timeout(fx.short_ttl() + SLACK, changes.next()).await;
        assert!(quiet.is_err(), "{quiet:?}");
        cut.hang(false);
        return leading.resign().await.unwrap();
    }
    let gone = next_change(&mut changes, next_holder_wait(fx) + POLL).await;
    assert_eq!(gone, None);
    cut.hang(false);
    drop(leading);
}
