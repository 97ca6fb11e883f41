//! The CLI profile: every round runs
//!
//! ```text
//! distlock run KEY --backend URL --ttl T --wait W [--limit N | --shared] --quiet -- distlock-torture section --config JSON
//! ```
//!
//! (`--limit N` for a semaphore's permit, `--shared` for a read lock), or,
//! for leadership,
//!
//! ```text
//! distlock elect KEY --backend URL --id NAME --ttl T --wait W --quiet -- distlock-torture section --config JSON
//! ```
//!
//! `distlock run` (`elect`) holds the lock (and refreshes it) while the
//! section, a process it starts, writes to the fenced register with
//! `$DISTLOCK_FENCING_TOKEN` (a leader's section also checks that
//! `$DISTLOCK_TERM` is the same number). The client records the obtain's invoke and
//! `distlock run`'s exit; the section records its start (the grant: key and
//! token from its environment), its writes and its end, in the client's
//! history file (opened for appending, one `write` per line, so the two
//! processes' lines never mix).
//!
//! The section is short (1–3 writes, no stalls; a leader's 2–5 writes
//! 2–6% of the TTL apart, at most 0.3 TTL in all, well inside the 2/3 TTL
//! a frozen `distlock elect`'s last refresh still covers): it cannot check
//! a validity deadline it is never told, and relies on `distlock run` to
//! stop it in time, which a frozen `distlock run` cannot do (its README
//! says so).
//! The nemesis freezes and kills the client's process group — the client
//! and `distlock run` — not the section's own group.

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tokio::time::sleep;

use super::acts::{Under, write_done, write_invoke};
use super::{ClientConfig, Control, Ops};
use crate::clock;
use crate::history::{Event, JsonLines, Mode};
use crate::register::RegisterClient;
use crate::variant::Workload;

/// Operation ids one CLI round reserves: the obtain (= the grant), then
/// one per write of its section.
const ROUND_OPS: u64 = 16;

/// What a CLI section needs; passed as JSON through `distlock run`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SectionConfig {
    /// The client's history file.
    pub history: PathBuf,
    /// The fenced register.
    pub register: SocketAddr,
    /// The client's number.
    pub client: u32,
    /// Its incarnation.
    pub incarnation: u32,
    /// The obtain's id (the grant); writes use the next ids.
    pub op: u64,
    /// How many writes.
    pub writes: u32,
    /// What they need of the key.
    #[serde(default)]
    pub act: Mode,
    /// The pause after each write, microseconds.
    #[serde(default = "short_gap")]
    pub gap_us: (u64, u64),
    /// A leader's section (under `distlock elect`): `$DISTLOCK_TERM` must
    /// be its fencing token.
    #[serde(default)]
    pub leader: bool,
    /// The section's RNG seed.
    pub seed: u64,
}

fn short_gap() -> (u64, u64) {
    (0, 3000)
}

pub(super) async fn run(
    cfg: &ClientConfig,
    control: Control,
    hist: &JsonLines,
    ops: &Ops,
) -> Result<(), String> {
    let (Some(cli), Some(exe)) = (&cfg.cli, &cfg.section_exe) else {
        return Err("the CLI profile needs the distlock binary (--cli-bin)".into());
    };
    let url = crate::store::with_namespace(&cfg.url, &cfg.namespace);
    let ttl = cfg.ttl();
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    while !control.stopped() {
        let key = cfg.keys[rng.usize(..cfg.keys.len())].clone();
        let round = cfg.round(&mut rng);
        let op = ops.reserve(ROUND_OPS);
        let wait = ttl * 2 + ttl.mul_f64(rng.f64());
        let leads = cfg.workload == Workload::Leadership;
        let us = |f: f64| ttl.mul_f64(f).as_micros() as u64;
        let section = SectionConfig {
            history: cfg.history.clone(),
            register: cfg.register,
            client: cfg.client,
            incarnation: cfg.incarnation,
            op,
            writes: if leads {
                rng.u32(2..=5)
            } else {
                rng.u32(1..=3)
            },
            act: round.act,
            gap_us: if leads {
                (us(0.02), us(0.06))
            } else {
                short_gap()
            },
            leader: leads,
            seed: rng.u64(..),
        };
        let mut command = Command::new(cli);
        if leads {
            let id = format!("client-{}/{}/elect-{op}", cfg.client, cfg.incarnation);
            command.args(["elect", key.as_str(), "--id", id.as_str()]);
        } else {
            command.args(["run", key.as_str()]);
        }
        command
            .args(["--backend", url.as_str()])
            .args(["--ttl", &format!("{}ms", cfg.ttl_ms)])
            .args(["--wait", &format!("{}ms", wait.as_millis())]);
        match round.take {
            Mode::Exclusive => {}
            Mode::Permit { limit } => {
                command.args(["--limit", &limit.to_string()]);
            }
            Mode::Read => {
                command.arg("--shared");
            }
        }
        command
            .args(["--quiet", "--"])
            .arg(exe)
            .args(["section", "--config"])
            .arg(serde_json::to_string(&section).expect("configs serialize"));
        die_with_parent(&mut command);
        hist.append(&Event::ObtainInvoke {
            op,
            key,
            ttl_ms: cfg.ttl_ms,
            mode: round.take,
            locker: None,
            t: clock::now_ns(),
        });
        let status = command.status().await;
        let (code, signal) = match &status {
            Ok(s) => (s.code(), s.signal()),
            Err(_) => (None, None),
        };
        hist.append(&Event::CliExit {
            op,
            code,
            signal,
            t: clock::now_ns(),
        });
        if let Err(e) = status {
            return Err(format!("cannot run {}: {e}", cli.display()));
        }
        if !matches!(code, Some(0 | 75)) {
            // The store is down or unreachable (69), or the lock was lost
            // (76): do not spin.
            sleep(ttl.mul_f64(0.02 + 0.08 * rng.f64())).await;
        }
        sleep(Duration::from_micros(rng.u64(0..=2000))).await;
    }
    Ok(())
}

/// `distlock run` dies with its client (SIGKILL by the kernel), as its
/// section dies with it: a killed client leaves nothing running.
fn die_with_parent(command: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec and makes
    // two async-signal-safe system calls (prctl, getppid), allocating
    // nothing. The death signal follows the forking thread, which is the
    // client's runtime thread: it lives as long as the client.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)?;
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// The `section` subcommand: runs under `distlock run`, writes with the
/// token it was given, records everything. Errors are harness failures.
pub fn run_section(cfg: &SectionConfig) -> Result<(), String> {
    let env = |name: &str| std::env::var(name).map_err(|e| format!("${name}: {e}"));
    let key = env("DISTLOCK_KEY")?;
    let token: u64 = env("DISTLOCK_FENCING_TOKEN")?
        .parse()
        .map_err(|e| format!("$DISTLOCK_FENCING_TOKEN: {e}"))?;
    if cfg.leader {
        let term = env("DISTLOCK_TERM")?;
        if term != token.to_string() {
            // `distlock elect` then exits 1: a client_crash in the checker.
            return Err(format!(
                "$DISTLOCK_TERM {term} is not the fencing token {token}"
            ));
        }
    }
    let hist = JsonLines::create(&cfg.history)
        .map_err(|e| format!("open {}: {e}", cfg.history.display()))?;
    hist.append(&Event::SectionStart {
        op: cfg.op,
        key: key.clone(),
        token,
        pid: std::process::id(),
        t: clock::now_ns(),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a tokio runtime: {e}"))?;
    runtime.block_on(async {
        let mut register = RegisterClient::new(cfg.register);
        let mut rng = fastrand::Rng::with_seed(cfg.seed);
        let under = Under {
            grant: cfg.op,
            key: &key,
            token,
            act: cfg.act,
        };
        for op in (cfg.op + 1..).take(cfg.writes as usize) {
            // No deadline to check: `distlock run` stops the section in time.
            let now = clock::now_ns();
            write_invoke(&hist, op, under, now, i64::MAX, Duration::ZERO);
            let result = register
                .write(&under.act(cfg.client, cfg.incarnation, op))
                .await;
            write_done(&hist, op, result);
            let (lo, hi) = cfg.gap_us;
            sleep(Duration::from_micros(rng.u64(lo..=hi))).await;
        }
    });
    hist.append(&Event::SectionEnd {
        op: cfg.op,
        t: clock::now_ns(),
    });
    Ok(())
}
