//! The clients of a run: their processes (or memory tasks), respawns,
//! signals and the clean stop at the end.

use std::fmt::Write as _;
use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::process::{ChildStdin, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

use super::waiters::{Tail, Waiting};
use super::{NAMESPACE, RunConfig};
use crate::client::{self, ClientConfig, Control, PauseOrder, client_seed};
use crate::clock;
use crate::history::{Fault, JsonLines};
use crate::store::ClientStore;
use crate::variant::Workload;

pub(super) enum Slot {
    Process {
        /// Also its process group's id: a CLI client's `distlock run`
        /// belongs to the group.
        pid: i32,
        incarnation: u32,
        // Held open: a client exits when the pipe closes (orchestrator gone).
        _stdin: Option<ChildStdin>,
        exit: oneshot::Receiver<io::Result<ExitStatus>>,
        tail: Tail,
    },
    Task {
        incarnation: u32,
        handle: JoinHandle<Result<(), String>>,
        stop: watch::Sender<bool>,
        pause: watch::Sender<PauseOrder>,
        hist: JsonLines,
        tail: Tail,
    },
}

impl Slot {
    pub(super) fn incarnation(&self) -> u32 {
        match self {
            Slot::Process { incarnation, .. } | Slot::Task { incarnation, .. } => *incarnation,
        }
    }

    /// Signals the client process only.
    fn signal(&self, signal: Signal) {
        if let Slot::Process { pid, .. } = self {
            let _ = kill(Pid::from_raw(*pid), signal);
        }
    }

    /// Signals the client's process group (SIGSTOP, SIGCONT, SIGKILL).
    pub(super) fn signal_group(&self, signal: Signal) {
        if let Slot::Process { pid, .. } = self {
            let _ = killpg(Pid::from_raw(*pid), signal);
        }
    }

    /// A task-level pause (memory).
    pub(super) fn pause(&self, duration: Duration) {
        if let Slot::Task { pause, .. } = self {
            pause.send_modify(|order| {
                order.seq += 1;
                order.duration = duration;
            });
        }
    }

    /// Whether the client holds a grant now, by its history.
    fn holds(&mut self) -> bool {
        let (Slot::Process { tail, .. } | Slot::Task { tail, .. }) = self;
        tail.update();
        tail.holds()
    }

    /// Whether obtain `op` is still unanswered in the client's history.
    pub(super) fn pending(&mut self, op: u64) -> bool {
        match self {
            Slot::Process { tail, .. } => {
                tail.update();
                tail.is_pending(op)
            }
            Slot::Task { .. } => false,
        }
    }

    /// Whether the client process is stopped (by SIGSTOP), from
    /// `/proc/<pid>/stat`: once it is, its history holds all it did before.
    pub(super) fn is_stopped(&self) -> bool {
        let Slot::Process { pid, .. } = self else {
            return false;
        };
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            // The state follows the command name, which may hold spaces.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| state == 'T')
        })
    }

    /// The obtain this client has been waiting on longest, invoked before
    /// `before` (ns).
    pub(super) fn waiting(&mut self, before: i64) -> Option<Waiting> {
        match self {
            Slot::Process { tail, .. } => {
                tail.update();
                tail.waiting(before)
            }
            Slot::Task { .. } => None,
        }
    }
}

/// A client SIGSTOPped by a waiter stop, until it is resumed.
struct HeldStop {
    client: usize,
    incarnation: u32,
    /// The obtain it was stopped waiting on, if any.
    waiting: Option<u64>,
    until: Instant,
    fault: Fault,
}

/// A resumed waiter stop whose obtain's answer is not read yet.
struct Unconfirmed {
    client: usize,
    incarnation: u32,
    op: u64,
    end: i64,
}

pub(super) struct Pool<'a> {
    pub(super) cfg: &'a RunConfig,
    pub(super) client_url: String,
    pub(super) client_store: ClientStore,
    pub(super) register: std::net::SocketAddr,
    pub(super) keys: Vec<String>,
    pub(super) slots: Vec<Slot>,
    pub(super) crashed: Vec<String>,
    /// Waiter stops still in force: they outlast the pause between faults.
    held: Vec<HeldStop>,
    /// Resumed waiter stops not yet known to have caught their obtain.
    unconfirmed: Vec<Unconfirmed>,
    /// Waiter stops whose obtain stayed unanswered until they ended.
    waiters_caught: u64,
}

impl<'a> Pool<'a> {
    pub(super) fn new(
        cfg: &'a RunConfig,
        client_url: String,
        client_store: ClientStore,
        register: std::net::SocketAddr,
        keys: Vec<String>,
    ) -> Self {
        Pool {
            cfg,
            client_url,
            client_store,
            register,
            keys,
            slots: Vec::new(),
            crashed: Vec::new(),
            held: Vec::new(),
            unconfirmed: Vec::new(),
            waiters_caught: 0,
        }
    }

    fn client_config(&self, client: u32, incarnation: u32) -> ClientConfig {
        ClientConfig {
            backend: self.cfg.backend,
            url: self.client_url.clone(),
            namespace: NAMESPACE.to_owned(),
            register: self.register,
            client,
            incarnation,
            seed: client_seed(self.cfg.seed, client, incarnation),
            keys: self.keys.clone(),
            ttl_ms: self.cfg.ttl.as_millis() as u64,
            workload: self.cfg.workload,
            limit: self.cfg.limit,
            variant: self.cfg.variant,
            profile: self.cfg.variant.profile(self.cfg.backend, client),
            history: self
                .cfg
                .out
                .join(format!("client-{client}-{incarnation}.jsonl")),
            cli: self.cfg.cli_bin.clone(),
            section_exe: Some(self.cfg.client_exe.clone()),
        }
    }

    fn spawn(&self, client: u32, incarnation: u32) -> io::Result<Slot> {
        let config = self.client_config(client, incarnation);
        if !self.cfg.backend.client_processes() {
            let hist = JsonLines::create(&config.history)?;
            let (stop, stop_rx) = watch::channel(false);
            let (pause, pause_rx) = watch::channel(PauseOrder::default());
            let control = Control::new(stop_rx, Some(pause_rx));
            let tail = Tail::new(config.history.clone());
            let handle = tokio::spawn(client::run(
                config,
                self.client_store.clone(),
                control,
                hist.clone(),
            ));
            return Ok(Slot::Task {
                incarnation,
                handle,
                stop,
                pause,
                hist,
                tail,
            });
        }
        let log = std::fs::File::create(
            self.cfg
                .out
                .join(format!("client-{client}-{incarnation}.log")),
        )?;
        let mut child = Command::new(&self.cfg.client_exe)
            .arg("client")
            .arg("--config")
            .arg(serde_json::to_string(&config).expect("configs serialize"))
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own group, which its `distlock run` (CLI profile) joins.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().expect("a running child has a pid") as i32;
        let stdin = child.stdin.take();
        let (tx, exit) = oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(child.wait().await);
        });
        Ok(Slot::Process {
            pid,
            incarnation,
            _stdin: stdin,
            exit,
            tail: Tail::new(config.history),
        })
    }

    pub(super) fn start_all(&mut self) -> io::Result<()> {
        for client in 0..self.cfg.clients {
            let slot = self.spawn(client, 0)?;
            self.slots.push(slot);
        }
        Ok(())
    }

    /// Notes clients that ended on their own (crashes) and starts new
    /// incarnations of them.
    pub(super) async fn reap_crashes(&mut self) -> io::Result<()> {
        for client in 0..self.slots.len() {
            let ended = match &mut self.slots[client] {
                Slot::Process { exit, .. } => match exit.try_recv() {
                    Ok(status) => Some(format!("exited with {status:?}")),
                    Err(oneshot::error::TryRecvError::Closed) => Some("vanished".into()),
                    Err(oneshot::error::TryRecvError::Empty) => None,
                },
                Slot::Task { handle, .. } if handle.is_finished() => {
                    let result = handle.await;
                    Some(format!("ended with {result:?}"))
                }
                Slot::Task { .. } => None,
            };
            if let Some(how) = ended {
                let inc = self.slots[client].incarnation();
                self.crashed.push(format!(
                    "client {client}/{inc} {how} (log: client-{client}-{inc}.log)"
                ));
                self.slots[client] = self.spawn(client as u32, inc + 1)?;
            }
        }
        Ok(())
    }

    /// Kills client `client` (SIGKILL, or a task abort) and starts its next
    /// incarnation. Returns the time of death and the incarnation killed.
    pub(super) async fn kill_and_respawn(&mut self, client: usize) -> io::Result<(i64, u32)> {
        let inc = self.slots[client].incarnation();
        let death = match &mut self.slots[client] {
            Slot::Process { pid, exit, .. } => {
                let death = clock::now_ns();
                let _ = killpg(Pid::from_raw(*pid), Signal::SIGKILL);
                let _ = timeout(Duration::from_secs(10), exit).await;
                death
            }
            Slot::Task { handle, hist, .. } => {
                // Nothing this task records after the seal counts, as for a
                // killed process.
                let death = hist.seal();
                handle.abort();
                let _ = handle.await;
                death
            }
        };
        self.slots[client] = self.spawn(client as u32, inc + 1)?;
        Ok((death, inc))
    }

    /// Stops every client cleanly (SIGCONT + SIGTERM, or the stop flag),
    /// waiting `grace`; returns the clients that had to be killed.
    pub(super) async fn stop_all(&mut self, grace: Duration) -> Vec<String> {
        for slot in &self.slots {
            match slot {
                Slot::Process { .. } => {
                    // SIGTERM to the client only: a CLI client lets its
                    // `distlock run` finish the round.
                    slot.signal_group(Signal::SIGCONT);
                    slot.signal(Signal::SIGTERM);
                }
                Slot::Task { stop, .. } => {
                    let _ = stop.send(true);
                }
            }
        }
        let deadline = Instant::now() + grace;
        let mut unstoppable = Vec::new();
        for (client, slot) in self.slots.drain(..).enumerate() {
            let inc = slot.incarnation();
            let left = deadline.saturating_duration_since(Instant::now());
            match slot {
                Slot::Process { pid, exit, .. } => match timeout(left, exit).await {
                    Ok(Ok(Ok(status))) => {
                        let by_term = std::os::unix::process::ExitStatusExt::signal(&status)
                            == Some(Signal::SIGTERM as i32);
                        if !status.success() && !by_term {
                            self.crashed
                                .push(format!("client {client}/{inc} stopped with {status:?}"));
                        }
                    }
                    Ok(other) => self
                        .crashed
                        .push(format!("client {client}/{inc}: waiting failed: {other:?}")),
                    Err(_) => {
                        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                        unstoppable.push(format!(
                            "client {client}/{inc} did not stop within {grace:?}"
                        ));
                    }
                },
                Slot::Task { handle, .. } => {
                    let abort = handle.abort_handle();
                    match timeout(left, handle).await {
                        Ok(Ok(Ok(()))) => {}
                        Ok(other) => self
                            .crashed
                            .push(format!("client {client}/{inc} ended with {other:?}")),
                        Err(_) => {
                            abort.abort();
                            unstoppable.push(format!(
                                "client {client}/{inc} did not stop within {grace:?}"
                            ));
                        }
                    }
                }
            }
        }
        unstoppable
    }

    /// The client a client fault planned for `planned` hits: the next one
    /// not held stopped by a waiter stop (whose stop would otherwise end
    /// early, or which a kill would outlive).
    pub(super) fn free_client(&self, planned: usize) -> usize {
        let n = self.slots.len().max(1);
        (0..n)
            .map(|i| (planned + i) % n)
            .find(|c| !self.held.iter().any(|h| h.client == *c))
            .unwrap_or(planned % n)
    }

    /// The client a fault planned for `planned` hits: in the leadership
    /// workload the next free client that leads (holds a grant), so that
    /// faults hit leaders in office; else, or if none leads, the next free
    /// one.
    pub(super) fn target(&mut self, planned: usize) -> usize {
        let n = self.slots.len().max(1);
        if self.cfg.workload == Workload::Leadership {
            for c in (0..n).map(|i| (planned + i) % n) {
                if self.free_client(c) == c && self.slots[c].holds() {
                    return c;
                }
            }
        }
        self.free_client(planned)
    }

    /// Keeps `client` stopped until `until`; `fault` is logged on resume.
    /// `waiting`: the obtain it was stopped on, confirmed once answered.
    pub(super) fn hold_stopped(
        &mut self,
        client: usize,
        waiting: Option<u64>,
        until: Instant,
        fault: Fault,
    ) {
        let incarnation = self.slots[client].incarnation();
        self.held.push(HeldStop {
            client,
            incarnation,
            waiting,
            until,
            fault,
        });
    }

    /// The waiter stops known to have caught a client waiting: its obtain
    /// was answered after the stop ended, as the checker counts them. The
    /// stop itself cannot tell: a client times an answer before writing
    /// it, so one answered as the stop landed looks pending while stopped.
    /// A client respawned before its answer was read is not counted.
    pub(super) fn waiters_caught(&mut self) -> u64 {
        let mut unconfirmed = std::mem::take(&mut self.unconfirmed);
        unconfirmed.retain(|u| {
            let slot = &mut self.slots[u.client];
            if slot.incarnation() != u.incarnation {
                return false;
            }
            let (Slot::Process { tail, .. } | Slot::Task { tail, .. }) = slot;
            tail.update();
            match tail.answered_at(u.op) {
                Some(t) => {
                    self.waiters_caught += u64::from(t > u.end);
                    false
                }
                None => true,
            }
        });
        self.unconfirmed = unconfirmed;
        self.waiters_caught
    }

    /// Resumes the held clients that are due (all with `all`), logging
    /// their faults with the moment they were resumed.
    pub(super) fn resume_due(&mut self, log: &JsonLines, all: bool) {
        let now = Instant::now();
        let (due, held) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| all || h.until <= now);
        self.held = held;
        for mut stop in due {
            // The end is taken before SIGCONT: a waiter answered the moment
            // it runs again must not look answered before its stop ended.
            stop.fault.end = clock::now_ns();
            let slot = &self.slots[stop.client];
            if slot.incarnation() == stop.incarnation {
                slot.signal_group(Signal::SIGCONT);
                if let Some(op) = stop.waiting {
                    self.unconfirmed.push(Unconfirmed {
                        client: stop.client,
                        incarnation: stop.incarnation,
                        op,
                        end: stop.fault.end,
                    });
                }
            }
            let _ = write!(
                stop.fault.detail,
                "; resumed after {} ms{}",
                (stop.fault.end - stop.fault.start) / 1_000_000,
                if stop.until > now {
                    ", as the run ended"
                } else {
                    ""
                }
            );
            log.append(&stop.fault);
        }
    }
}
