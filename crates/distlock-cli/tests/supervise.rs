//! The supervision logic of `distlock run`, in-process, against a store
//! whose locks expire (the memory backend). The file backend's locks cannot
//! expire, so "killed before the validity deadline" can only be shown with
//! a TTL store; the binary tests cover loss through a deleted lock file.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use distlock::backend::memory::MemoryBackend;
use distlock::{LockKey, Locker, ObtainOptions};
use distlock_cli::{Ending, KillPolicy, become_subreaper, group_alive, supervise};
use distlock_testkit::Faulty;
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio::time::Instant;

mod common;

use common::running;

/// A memory store whose extends can be made to fail transiently, as a
/// Redis that stopped answering would: the lock is not proven lost, but it
/// cannot be refreshed either.
fn unreachable_store() -> Arc<Faulty> {
    Arc::new(Faulty::new(Arc::new(MemoryBackend::new())))
}

/// A command that ignores SIGTERM and leaves a second process in its group
/// (SIG_IGN is inherited), so only SIGKILL to the whole group stops it.
fn stubborn_command() -> tokio::process::Child {
    tokio::process::Command::new("sh")
        .args(["-c", "trap '' TERM; sleep 60 & sleep 60; wait"])
        .process_group(0)
        .spawn()
        .expect("spawn sh")
}

/// A command that exits 0 on SIGTERM; returns once its trap is set.
async fn polite_command() -> tokio::process::Child {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ready = std::env::temp_dir().join(format!(
        "distlock-supervise-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let child = tokio::process::Command::new("sh")
        .args([
            "-c",
            "trap 'exit 0' TERM; : > \"$0\"; while :; do sleep 0.02; done",
        ])
        .arg(&ready)
        .process_group(0)
        .spawn()
        .expect("spawn sh");
    let start = Instant::now();
    while !ready.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "sh never got ready"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = std::fs::remove_file(&ready);
    child
}

fn pgid(child: &tokio::process::Child) -> Pid {
    Pid::from_raw(child.id().unwrap() as i32)
}

#[tokio::test(flavor = "current_thread")]
async fn failing_refreshes_stop_the_group_before_the_validity_deadline() {
    become_subreaper();
    let store = unreachable_store();
    let locker = Locker::builder(store.clone()).build().unwrap();
    let ttl = Duration::from_millis(1500);
    let lock = locker
        .obtain_with("job", ObtainOptions::new().ttl(ttl))
        .await
        .unwrap();
    let refresher = lock.start_refresh(|_| {});
    let mut child = stubborn_command();
    let group = pgid(&child);
    tokio::time::sleep(Duration::from_millis(100)).await;
    store.fail_extends(u32::MAX);
    let (_tx, mut signals) = mpsc::unbounded_channel();
    let policy = KillPolicy::new(Duration::from_millis(300));
    let mut messages = Vec::new();
    let ending = supervise(&lock, &mut child, policy, &mut signals, &mut |m: &str| {
        messages.push(m.to_owned())
    })
    .await
    .unwrap();
    let deadline = lock.valid_until();
    match ending {
        Ending::LockLost {
            expiring,
            status,
            group_gone_at,
        } => {
            assert!(expiring, "the store never said the lock was gone");
            assert!(
                group_gone_at < deadline,
                "group gone {:?} after the deadline",
                group_gone_at - deadline
            );
            // Started no earlier than grace + margin before the deadline.
            assert!(
                deadline - group_gone_at <= policy.grace + policy.margin,
                "stopped {:?} before the deadline: too early",
                deadline - group_gone_at
            );
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(9),
                "SIGTERM was ignored; SIGKILL ended it"
            );
        }
        other => panic!("expected LockLost, got {other:?}"),
    }
    assert!(!group_alive(group), "processes of the group survived");
    assert!(
        messages
            .iter()
            .any(|m| m.contains("could not be refreshed")),
        "{messages:?}"
    );
    // The store still had the lock then (it expires only at the TTL, after
    // the deadline): nobody else could have held it while the command ran.
    assert!(locker.is_locked("job").await.unwrap());
    refresher.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_lock_deleted_behind_its_back_stops_the_group_at_once() {
    become_subreaper();
    let store = Arc::new(MemoryBackend::new());
    let locker = Locker::builder(store.clone()).build().unwrap();
    let ttl = Duration::from_secs(3);
    let lock = locker
        .obtain_with(
            "job",
            ObtainOptions::new()
                .ttl(ttl)
                .refresh_interval(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    let _refresher = lock.start_refresh(|_| {});
    let mut child = polite_command().await;
    let key = LockKey {
        namespace: locker.namespace().clone(),
        key: distlock::Key::new("job").unwrap(),
    };
    let evicted = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(store.evict(&key));
            Instant::now()
        })
    };
    let (_tx, mut signals) = mpsc::unbounded_channel();
    let ending = supervise(
        &lock,
        &mut child,
        KillPolicy::new(Duration::from_millis(500)),
        &mut signals,
        &mut |_: &str| {},
    )
    .await
    .unwrap();
    let evicted_at = evicted.await.unwrap();
    match ending {
        Ending::LockLost {
            expiring,
            status,
            group_gone_at,
        } => {
            assert!(!expiring);
            assert!(status.success(), "SIGTERM let it exit cleanly: {status:?}");
            assert!(
                group_gone_at - evicted_at < Duration::from_millis(400),
                "took {:?}",
                group_gone_at - evicted_at
            );
        }
        other => panic!("expected LockLost, got {other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn signals_are_forwarded_and_a_clean_exit_is_reported() {
    become_subreaper();
    let locker = Locker::memory();
    let lock = locker.obtain("job").await.unwrap();
    let mut child = polite_command().await;
    let (tx, mut signals) = mpsc::unbounded_channel();
    tx.send(nix::sys::signal::Signal::SIGTERM).unwrap();
    let ending = supervise(
        &lock,
        &mut child,
        KillPolicy::new(Duration::from_secs(1)),
        &mut signals,
        &mut |_: &str| {},
    )
    .await
    .unwrap();
    assert!(
        matches!(ending, Ending::Exited(status) if status.success()),
        "{ending:?}"
    );
    assert!(!lock.is_lost());
    lock.release().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn processes_left_in_the_group_are_stopped_before_returning() {
    become_subreaper();
    let locker = Locker::memory();
    let lock = locker.obtain("job").await.unwrap();
    // The leader exits at once, leaving a background sleep in its group.
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", "sleep 60 & exit 3"])
        .process_group(0)
        .spawn()
        .unwrap();
    let group = pgid(&child);
    let (_tx, mut signals) = mpsc::unbounded_channel();
    let mut messages = Vec::new();
    let start = Instant::now();
    let ending = supervise(
        &lock,
        &mut child,
        KillPolicy::new(Duration::from_secs(1)),
        &mut signals,
        &mut |m: &str| messages.push(m.to_owned()),
    )
    .await
    .unwrap();
    assert!(
        matches!(ending, Ending::Exited(status) if status.code() == Some(3)),
        "{ending:?}"
    );
    assert!(!group_alive(group));
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    assert!(
        messages.iter().any(|m| m.contains("left processes")),
        "{messages:?}"
    );
    lock.release().await.unwrap();
}

/// Nothing that stalls the runtime delays the last SIGKILL: here a task
/// blocks the runtime's only thread past the validity deadline (as a write
/// to a full stderr pipe would), and the group still dies before the
/// deadline, seen from another thread.
#[tokio::test(flavor = "current_thread")]
async fn a_stalled_runtime_cannot_delay_the_kill_past_the_deadline() {
    become_subreaper();
    let store = unreachable_store();
    let locker = Locker::builder(store.clone()).build().unwrap();
    let lock = locker
        .obtain_with("job", ObtainOptions::new().ttl(Duration::from_millis(1500)))
        .await
        .unwrap();
    let deadline = lock.valid_until().into_std();
    let mut child = stubborn_command();
    let group = pgid(&child);
    let leader = group.as_raw();
    let watcher = std::thread::spawn(move || {
        while running(leader) {
            assert!(
                std::time::Instant::now() < deadline + Duration::from_secs(10),
                "the command was never stopped"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::time::Instant::now()
    });
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::thread::sleep(deadline + Duration::from_millis(500) - std::time::Instant::now());
    });
    let (_tx, mut signals) = mpsc::unbounded_channel();
    let policy = KillPolicy::new(Duration::from_millis(300));
    supervise(&lock, &mut child, policy, &mut signals, &mut |_: &str| {})
        .await
        .unwrap();
    let died = watcher.join().unwrap();
    assert!(
        died < deadline,
        "the command died {:?} after the validity deadline",
        died - deadline
    );
    assert!(!group_alive(group), "processes of the group survived");
}
