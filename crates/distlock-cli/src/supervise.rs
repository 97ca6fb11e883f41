//! Running a command under a lock: signals are forwarded to the command's
//! process group, and the whole group is stopped in time when the lock is
//! lost or about to be.

use std::io;
use std::process::ExitStatus;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use distlock::Lock;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Instant, sleep, sleep_until};

/// When to stop the command once its lock is in danger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KillPolicy {
    /// Time between SIGTERM and SIGKILL to the command's process group.
    pub grace: Duration,
    /// How long before the validity deadline the group must already be
    /// SIGKILLed, so that it is gone (reaped) by the deadline.
    pub margin: Duration,
}

impl KillPolicy {
    /// The default [`margin`](Self::margin).
    pub const DEFAULT_MARGIN: Duration = Duration::from_millis(200);

    /// A policy with `grace` and the default margin.
    pub fn new(grace: Duration) -> Self {
        KillPolicy {
            grace,
            margin: Self::DEFAULT_MARGIN,
        }
    }
}

/// How a supervised command ended.
#[derive(Debug)]
pub enum Ending {
    /// The command exited by itself (possibly after a forwarded signal), and
    /// nothing of its process group is left.
    Exited(ExitStatus),
    /// The lock was lost, or could not be refreshed before its validity
    /// would run out: the command's group was stopped (SIGTERM, then
    /// SIGKILL after the grace period, SIGKILL at the latest `margin`
    /// before the validity deadline).
    LockLost {
        /// True when the store had not (yet) said the lock was gone, but
        /// refreshes kept failing until the deadline came near.
        expiring: bool,
        /// How the command's main process ended.
        status: ExitStatus,
        /// When the whole process group was seen gone.
        group_gone_at: Instant,
    },
}

/// Whether any process of group `pgid` still exists. Zombies count, so
/// reap first ([`become_subreaper`] makes the group's orphans ours to reap).
pub fn group_alive(pgid: Pid) -> bool {
    !matches!(killpg(pgid, None), Err(Errno::ESRCH))
}

/// Makes this process the reaper of its orphaned descendants (Linux), so
/// that processes a command leaves behind in its group are reparented to
/// distlock, which reaps them, instead of lingering as zombies under an init
/// that may reap slowly (as in many containers). Returns whether it worked.
pub fn become_subreaper() -> bool {
    #[cfg(target_os = "linux")]
    {
        nix::sys::prctl::set_child_subreaper(true).is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// The last-resort SIGKILL of the command's group, on a thread of its own:
/// nothing that can stall the runtime (a write to a full stderr pipe, a
/// busy task, a store call that does not yield) can delay it. It fires
/// half the margin before the validity deadline, after the runtime's own
/// SIGKILL (a whole margin before it) should already have done the job, so
/// it never races a refresh the runtime has seen.
struct Watchdog {
    shared: Arc<(Mutex<Watch>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Watch {
    kill_at: Option<std::time::Instant>,
    done: bool,
}

impl Watchdog {
    fn start(pgid: Pid) -> io::Result<Self> {
        let shared = Arc::new((Mutex::new(Watch::default()), Condvar::new()));
        let watched = shared.clone();
        let thread = std::thread::Builder::new()
            .name("distlock-watchdog".into())
            .spawn(move || {
                let (watch, wake) = &*watched;
                let mut watch = watch.lock().unwrap_or_else(|p| p.into_inner());
                while !watch.done {
                    let now = std::time::Instant::now();
                    watch = match watch.kill_at {
                        Some(at) if at <= now => {
                            let _ = killpg(pgid, Signal::SIGKILL);
                            watch.kill_at = None;
                            watch
                        }
                        // Capped, so a "never" deadline cannot overflow the wait.
                        Some(at) => {
                            let left = (at - now).min(Duration::from_secs(3600));
                            wake.wait_timeout(watch, left)
                                .unwrap_or_else(|p| p.into_inner())
                                .0
                        }
                        None => wake.wait(watch).unwrap_or_else(|p| p.into_inner()),
                    };
                }
            })?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
        })
    }

    fn update(&self, f: impl FnOnce(&mut Watch)) {
        let (watch, wake) = &*self.shared;
        f(&mut watch.lock().unwrap_or_else(|p| p.into_inner()));
        wake.notify_one();
    }

    /// Arms the SIGKILL for a lock valid until `valid_until`.
    fn arm(&self, valid_until: Instant, margin: Duration) {
        let at = valid_until.checked_sub(margin / 2).unwrap_or(valid_until);
        self.update(|watch| watch.kill_at = Some(at.into_std()));
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.update(|watch| watch.done = true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reaps the exited children of ours that belong to group `pgid`.
fn reap_group(pgid: Pid) {
    while let Ok(status) = waitpid(Pid::from_raw(-pgid.as_raw()), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            return;
        }
    }
}

/// Supervises `child`, the leader of its own process group, while `lock`
/// protects it, until the child and every process left in its group are
/// gone. Signals arriving on `signals` are forwarded to the group;
/// `notify` receives one-line messages about what is being done.
///
/// Besides the runtime, a watchdog thread SIGKILLs the group half the
/// margin before the validity deadline known when the runtime last looked,
/// so that the group is gone by then even if the runtime stalls.
///
/// The lock is left to the caller: release it after this returns.
pub async fn supervise(
    lock: &Lock,
    child: &mut Child,
    policy: KillPolicy,
    signals: &mut UnboundedReceiver<Signal>,
    notify: &mut (dyn FnMut(&str) + Send),
) -> io::Result<Ending> {
    let leader = child
        .id()
        .ok_or_else(|| io::Error::other("the command was already reaped"))?;
    let pgid = Pid::from_raw(i32::try_from(leader).map_err(io::Error::other)?);
    let watchdog = Watchdog::start(pgid)?;
    let mut lost = Box::pin(lock.lost());
    let mut lost_seen = false;
    let mut loss: Option<bool> = None;
    let mut kill_at: Option<Instant> = None;
    let mut killed = false;
    let terminate = |kill_at: &mut Option<Instant>, at: Instant| {
        let _ = killpg(pgid, Signal::SIGTERM);
        *kill_at = Some(at);
    };
    let status = loop {
        let valid_until = lock.valid_until();
        watchdog.arm(valid_until, policy.margin);
        let now = Instant::now();
        let term_at = valid_until
            .checked_sub(policy.grace + policy.margin)
            .unwrap_or(now);
        let last_kill = valid_until.checked_sub(policy.margin).unwrap_or(now);
        tokio::select! {
            biased;
            status = child.wait() => break status?,
            Some(signal) = signals.recv() => {
                let _ = killpg(pgid, signal);
            }
            reason = &mut lost, if !lost_seen => {
                lost_seen = true;
                if reason.is_loss() && loss.is_none() {
                    notify(&format!("lock lost ({}); stopping the command", match reason {
                        distlock::LostReason::Expired => "its validity ran out",
                        _ => "the store no longer has it",
                    }));
                    loss = Some(false);
                    terminate(&mut kill_at, (Instant::now() + policy.grace).min(last_kill));
                }
            }
            _ = sleep_until(term_at), if loss.is_none() => {
                if lock.valid_until() > valid_until {
                    continue; // refreshed meanwhile
                }
                notify(&format!(
                    "the lock could not be refreshed and its validity ends in {:?}; stopping the command",
                    valid_until.saturating_duration_since(Instant::now())
                ));
                loss = Some(true);
                terminate(&mut kill_at, last_kill);
            }
            _ = sleep_until(kill_at.unwrap_or(now)), if kill_at.is_some() && !killed => {
                killed = true;
                let _ = killpg(pgid, Signal::SIGKILL);
            }
        }
    };
    // The leader is gone; whatever else runs in its group must be gone too
    // before the lock is let go.
    reap_group(pgid);
    if group_alive(pgid) {
        if loss.is_none() {
            notify("the command exited but left processes in its group; stopping them");
            let last_kill = lock
                .valid_until()
                .checked_sub(policy.margin)
                .unwrap_or_else(Instant::now);
            terminate(&mut kill_at, (Instant::now() + policy.grace).min(last_kill));
        }
        let mut give_up_at = None;
        while group_alive(pgid) {
            watchdog.arm(lock.valid_until(), policy.margin);
            while let Ok(signal) = signals.try_recv() {
                let _ = killpg(pgid, signal);
            }
            let now = Instant::now();
            if !killed && kill_at.is_some_and(|at| now >= at) {
                killed = true;
                let _ = killpg(pgid, Signal::SIGKILL);
            }
            if killed {
                let give_up = *give_up_at.get_or_insert(now + Duration::from_secs(2));
                if now >= give_up {
                    notify("processes of the command's group survived SIGKILL");
                    break;
                }
            }
            sleep(Duration::from_millis(5)).await;
            reap_group(pgid);
        }
    }
    let group_gone_at = Instant::now();
    drop(watchdog);
    Ok(match loss {
        None => Ending::Exited(status),
        Some(expiring) => Ending::LockLost {
            expiring,
            status,
            group_gone_at,
        },
    })
}
