//! The orchestrator: starts the store, the fenced register and the
//! clients, runs the nemesis for the planned duration, stops everything,
//! looks for leftover keys once the TTLs passed, and checks the history.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{ChildStdin, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

use crate::checker::{self, Report};
use crate::client::{self, ClientConfig, Control, client_seed};
use crate::clock;
use crate::history::{Fault, JsonLines, RunEnd, RunMeta, write_json};
use crate::nemesis::{FaultKind, Nemesis, PlannedFault};
use crate::register::Register;
use crate::store::{BackendKind, ClientStore, Store};
use crate::variant::Variant;

/// The namespace of every run's locks.
pub const NAMESPACE: &str = "torture";

/// One run's parameters.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The store.
    pub backend: BackendKind,
    /// The clients' behaviour.
    pub variant: Variant,
    /// The run seed: client RNGs and the fault schedule derive from it.
    pub seed: u64,
    /// How many clients.
    pub clients: u32,
    /// How many keys they contend for.
    pub keys: u32,
    /// Lock TTL.
    pub ttl: Duration,
    /// How long the workload runs at least.
    pub duration: Duration,
    /// After `duration`, the run goes on until the register has seen this
    /// many grants write and the nemesis injected `min_faults` faults, up to
    /// `max_duration` in all (then it stops; the campaign judges the numbers).
    pub min_acquisitions: u64,
    /// See `min_acquisitions`.
    pub min_faults: u64,
    /// See `min_acquisitions`.
    pub max_duration: Duration,
    /// Whether the nemesis injects faults.
    pub faults: bool,
    /// Pause between two faults, drawn uniformly from this range.
    pub fault_interval: (Duration, Duration),
    /// Allowed lateness of `lost()` past the validity deadline.
    pub lost_tolerance: Duration,
    /// The run directory (created; must not exist or be empty).
    pub out: PathBuf,
    /// The binary to start client processes from (`<exe> client ...`).
    pub client_exe: PathBuf,
    /// The command line, recorded in `run.json`.
    pub command: String,
}

enum Slot {
    Process {
        pid: i32,
        incarnation: u32,
        // Held open: a client exits when the pipe closes (orchestrator gone).
        _stdin: Option<ChildStdin>,
        exit: oneshot::Receiver<io::Result<ExitStatus>>,
    },
    Task {
        incarnation: u32,
        handle: JoinHandle<Result<(), String>>,
        stop: watch::Sender<bool>,
        pause: mpsc::UnboundedSender<Duration>,
        hist: JsonLines,
    },
}

impl Slot {
    fn incarnation(&self) -> u32 {
        match self {
            Slot::Process { incarnation, .. } | Slot::Task { incarnation, .. } => *incarnation,
        }
    }

    fn signal(&self, signal: Signal) {
        if let Slot::Process { pid, .. } = self {
            let _ = kill(Pid::from_raw(*pid), signal);
        }
    }
}

struct Pool<'a> {
    cfg: &'a RunConfig,
    client_url: String,
    client_store: ClientStore,
    register: std::net::SocketAddr,
    keys: Vec<String>,
    slots: Vec<Slot>,
    crashed: Vec<String>,
}

impl Pool<'_> {
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
            variant: self.cfg.variant,
            history: self
                .cfg
                .out
                .join(format!("client-{client}-{incarnation}.jsonl")),
        }
    }

    fn spawn(&self, client: u32, incarnation: u32) -> io::Result<Slot> {
        let config = self.client_config(client, incarnation);
        if !self.cfg.backend.client_processes() {
            let hist = JsonLines::create(&config.history)?;
            let (stop, stop_rx) = watch::channel(false);
            let (pause, pause_rx) = mpsc::unbounded_channel();
            let control = Control {
                stop: stop_rx,
                pause: Some(pause_rx),
            };
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
        })
    }

    fn start_all(&mut self) -> io::Result<()> {
        for client in 0..self.cfg.clients {
            let slot = self.spawn(client, 0)?;
            self.slots.push(slot);
        }
        Ok(())
    }

    /// Notes clients that ended on their own (crashes) and starts new
    /// incarnations of them.
    async fn reap_crashes(&mut self) -> io::Result<()> {
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
    async fn kill_and_respawn(&mut self, client: usize) -> io::Result<(i64, u32)> {
        let inc = self.slots[client].incarnation();
        let death = match &mut self.slots[client] {
            Slot::Process { pid, exit, .. } => {
                let death = clock::now_ns();
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
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
    async fn stop_all(&mut self, grace: Duration) -> Vec<String> {
        for slot in &self.slots {
            match slot {
                Slot::Process { .. } => {
                    slot.signal(Signal::SIGCONT);
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
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
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
}

/// Runs one campaign and checks it. The report is also written to
/// `summary.json` in the run directory.
pub async fn run(cfg: &RunConfig) -> io::Result<Report> {
    prepare_dir(&cfg.out)?;
    let keys: Vec<String> = (0..cfg.keys).map(|k| format!("k{k}")).collect();
    let fenced = cfg.variant.fenced_register();
    write_json(
        &cfg.out.join("run.json"),
        &RunMeta {
            backend: cfg.backend.name().into(),
            variant: cfg.variant,
            seed: cfg.seed,
            clients: cfg.clients,
            keys: keys.clone(),
            ttl_ms: cfg.ttl.as_millis() as u64,
            ttl_expiry: cfg.backend.ttl_expiry(),
            duration_ms: cfg.duration.as_millis() as u64,
            faults: cfg.faults,
            fenced,
            lost_tolerance_ms: cfg.lost_tolerance.as_millis() as u64,
            command: cfg.command.clone(),
        },
    )?;
    let mut store = Store::start(cfg.backend, &cfg.out).await;
    let register =
        Register::start(fenced, JsonLines::create(&cfg.out.join("register.jsonl"))?).await?;
    let faults_log = JsonLines::create(&cfg.out.join("nemesis.jsonl"))?;

    let started = clock::now_ns();
    let (crashed, unstoppable) = {
        let mut pool = Pool {
            cfg,
            client_url: store.client_url().to_owned(),
            client_store: store.client_store(),
            register: register.addr(),
            keys: keys.clone(),
            slots: Vec::new(),
            crashed: Vec::new(),
        };
        pool.start_all()?;
        let begun = Instant::now();
        let mut end_at = begun + cfg.duration;
        let mut faults_done = 0u64;
        let mut nemesis = Nemesis::new(
            cfg.seed,
            cfg.backend.faults(),
            cfg.clients,
            cfg.ttl,
            cfg.fault_interval,
        );
        loop {
            let plan = cfg.faults.then(|| nemesis.next_fault());
            let wait = plan.map_or(cfg.duration, |p| p.wait);
            let until = (Instant::now() + wait).min(end_at);
            while Instant::now() < until {
                sleep(
                    until
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(100)),
                )
                .await;
                pool.reap_crashes().await?;
            }
            if Instant::now() >= end_at {
                let short = (register.grants_seen() as u64) < cfg.min_acquisitions
                    || (cfg.faults && faults_done < cfg.min_faults);
                if !short || Instant::now() >= begun + cfg.max_duration {
                    break;
                }
                // Short of the minimums: go on a little longer.
                end_at = (Instant::now() + Duration::from_secs(2)).min(begun + cfg.max_duration);
            }
            if let Some(plan) = plan {
                let fault = apply(&mut pool, &mut store, plan).await?;
                faults_log.append(&fault);
                faults_done += 1;
            }
        }
        store.heal();
        let unstoppable = pool.stop_all(cfg.ttl * 10 + Duration::from_secs(10)).await;
        (pool.crashed, unstoppable)
    };
    let ended = clock::now_ns();
    // Locks of killed clients expire after their TTL (etcd: their lease);
    // then nothing may be left.
    sleep(cfg.backend.settle_time(cfg.ttl, cfg.faults)).await;
    let leftover_keys = store.leftover(NAMESPACE, &keys).await;
    write_json(
        &cfg.out.join("end.json"),
        &RunEnd {
            leftover_keys,
            crashed_clients: crashed,
            unstoppable_clients: unstoppable,
            started,
            ended,
        },
    )?;
    drop(register);
    drop(store);
    let report = checker::check(&cfg.out)?;
    write_json(&cfg.out.join("summary.json"), &report)?;
    Ok(report)
}

/// Carries out one fault and describes it.
async fn apply(pool: &mut Pool<'_>, store: &mut Store, plan: PlannedFault) -> io::Result<Fault> {
    let client = plan.client as usize % pool.slots.len().max(1);
    let mut fault = Fault {
        kind: plan.kind,
        client: plan.kind.targets_client().then_some(client as u32),
        incarnation: plan
            .kind
            .targets_client()
            .then(|| pool.slots[client].incarnation()),
        start: clock::now_ns(),
        end: 0,
        detail: String::new(),
    };
    match plan.kind {
        FaultKind::ClientStop => {
            pool.slots[client].signal(Signal::SIGSTOP);
            sleep(plan.duration).await;
            pool.slots[client].signal(Signal::SIGCONT);
            fault.detail = format!("stopped {} ms", plan.duration.as_millis());
        }
        FaultKind::ClientKill | FaultKind::TaskAbort => {
            let (death, inc) = pool.kill_and_respawn(client).await?;
            fault.start = death;
            fault.incarnation = Some(inc);
            fault.detail = format!("respawned as incarnation {}", inc + 1);
        }
        FaultKind::TaskPause => {
            if let Slot::Task { pause, .. } = &pool.slots[client] {
                let _ = pause.send(plan.duration);
            }
            fault.detail = format!(
                "asked to stall {} ms at its next step",
                plan.duration.as_millis()
            );
        }
        FaultKind::ServerKill | FaultKind::LeaderKill => {
            fault.detail = store.kill_server().await;
        }
        FaultKind::ServerStop => {
            let (server, what) = store.pause_server().await;
            sleep(plan.duration).await;
            store.resume_server(server);
            fault.detail = format!("{what} for {} ms", plan.duration.as_millis());
        }
        FaultKind::LeaderIsolate => {
            let what = store.isolate_leader().await;
            sleep(plan.duration).await;
            let after = store.leader().await;
            store.heal();
            fault.detail = format!(
                "{what} for {} ms; before healing: {after}",
                plan.duration.as_millis()
            );
        }
        FaultKind::ProxyReset => {
            let n: usize = store.proxies().iter().map(|p| p.reset_all()).sum();
            fault.detail = format!("{n} connections reset");
        }
        FaultKind::ProxyBlackhole => {
            for proxy in store.proxies() {
                proxy.set_blackhole(true);
            }
            sleep(plan.duration).await;
            for proxy in store.proxies() {
                proxy.set_blackhole(false);
            }
            fault.detail = format!("black hole for {} ms", plan.duration.as_millis());
        }
    }
    fault.end = clock::now_ns();
    Ok(fault)
}

fn prepare_dir(dir: &Path) -> io::Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} is not empty; give a new run directory", dir.display()),
        ));
    }
    std::fs::create_dir_all(dir)
}
