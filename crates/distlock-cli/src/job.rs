//! A command run under a lock, a permit, a read lock or a leadership:
//! what `distlock run` and `distlock elect` share, from waiting for it to
//! giving it up.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use clap::Args;
use distlock::{Error, HolderInfo, Leadership, Lock, Locker, ObtainOptions};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::exit::{self, Failure};
use crate::holder::{CliMetadata, describe_holder, describe_sharing};
use crate::say::say;
use crate::supervise::{Ending, KillPolicy, become_subreaper, supervise};
use crate::terminal;

/// How `run` and `elect` wait for, keep and give up what they hold.
#[derive(Args, Debug)]
pub struct Hold {
    /// How long the store keeps the lock without a refresh; distlock refreshes
    /// it every TTL/3. File locks do not expire: they last while distlock runs.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    pub ttl: Duration,

    /// Wait at most this long for the lock (like 500ms, 10s, 5m) [default: wait until obtained]
    #[arg(long, value_name = "DURATION", value_parser = duration, conflicts_with = "no_wait")]
    pub wait: Option<Duration>,

    /// Fail at once if the lock is held.
    #[arg(long)]
    pub no_wait: bool,

    /// Exit code when the lock is held by someone else and was not obtained.
    #[arg(long, value_name = "N", default_value_t = exit::NOT_OBTAINED)]
    pub conflict_exit_code: u8,

    /// Time between SIGTERM and SIGKILL when the command must be stopped
    /// [default: 5s, or TTL/4 if shorter]
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub kill_grace: Option<Duration>,

    /// Print nothing about the holder while waiting, nor refresh warnings.
    #[arg(short, long)]
    pub quiet: bool,
}

/// The default grace between SIGTERM and SIGKILL.
const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

/// How often the holder is looked up while waiting.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Parses a humantime duration (`500ms`, `10s`, `5m`) for clap.
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e} (use a duration like 500ms, 10s or 5m)"))
}

/// Forwards the signals distlock handles to a channel.
pub fn forward_signals() -> Result<mpsc::UnboundedReceiver<Signal>, Failure> {
    let (tx, rx) = mpsc::unbounded_channel();
    for (kind, sig) in [
        (SignalKind::interrupt(), Signal::SIGINT),
        (SignalKind::terminate(), Signal::SIGTERM),
        (SignalKind::hangup(), Signal::SIGHUP),
        (SignalKind::quit(), Signal::SIGQUIT),
    ] {
        let mut stream = signal(kind)
            .map_err(|e| Failure::new(exit::SOFTWARE, format!("cannot handle {sig}: {e}")))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(sig).is_err() {
                    return;
                }
            }
        });
    }
    Ok(rx)
}

/// Prints who holds `key` whenever that changes; never returns.
async fn watch_holder(locker: &Locker, key: &str) {
    let mut shown = None;
    loop {
        if let Ok(Some(holder)) = locker.inspect(key).await
            && shown != Some(holder.fencing_token)
        {
            say(format!(
                "waiting for lock {key:?}, held by {}",
                describe_holder(&holder)
            ));
            shown = Some(holder.fencing_token);
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(exit::SOFTWARE),
        (None, Some(signal)) => exit::signal_code(signal),
        _ => exit::SOFTWARE,
    }
}

/// The kill policy `args` ask for, checked against the TTL.
pub fn kill_policy(args: &Hold) -> Result<KillPolicy, Failure> {
    let grace = args
        .kill_grace
        .unwrap_or_else(|| DEFAULT_KILL_GRACE.min(args.ttl / 4));
    let policy = KillPolicy::new(grace);
    if grace + policy.margin > args.ttl / 2 {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "--kill-grace {} plus a {} safety margin must be at most half the TTL ({}), so that failed refreshes are retried before the command is stopped",
                humantime::format_duration(grace),
                humantime::format_duration(policy.margin),
                humantime::format_duration(args.ttl)
            ),
        ));
    }
    Ok(policy)
}

/// What `run` or `elect` holds while the command runs.
pub enum Want {
    /// The lock (`run KEY`).
    Lock,
    /// One of N permits (`run --limit N`).
    Permit(u32),
    /// A read lock (`run --shared`).
    Shared,
    /// The leadership, as this identity (`elect`).
    Leader(String),
}

/// A command to run under a lock, a permit or a leadership.
pub struct Job<'a> {
    /// The key.
    pub key: &'a str,
    /// How to wait for it and keep it.
    pub hold: &'a Hold,
    /// The command and its arguments.
    pub command: &'a [OsString],
    /// What to hold.
    pub want: Want,
}

/// What is held: a lock (refreshed here), or a leadership (refreshed by
/// itself).
enum Holding {
    Lock(Lock),
    Leader(Leadership),
}

impl Holding {
    fn lock(&self) -> &Lock {
        match self {
            Holding::Lock(lock) => lock,
            Holding::Leader(leadership) => leadership.as_lock(),
        }
    }

    async fn give_up(self) -> distlock::Result<()> {
        match self {
            Holding::Lock(lock) => lock.release().await,
            Holding::Leader(leadership) => leadership.resign().await,
        }
    }
}

/// Waits for what `job` wants, runs its command under it, gives it up;
/// the exit code is the command's, or distlock's own.
///
/// # Errors
///
/// A [`Failure`] to report: not obtained, a store error, a command that
/// cannot run.
pub async fn run(locker: &Locker, job: Job<'_>, policy: KillPolicy) -> Result<u8, Failure> {
    let Job {
        key,
        hold,
        command: argv,
        want,
    } = job;
    let program = &argv[0];
    let metadata = CliMetadata {
        pid: std::process::id(),
        host: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        command: Path::new(program)
            .file_name()
            .unwrap_or(program)
            .to_string_lossy()
            .into_owned(),
    };
    let try_once = hold.no_wait || hold.wait == Some(Duration::ZERO);
    let options = ObtainOptions::new()
        .ttl(hold.ttl)
        .metadata(metadata.to_json());
    let options = match hold.wait {
        _ if try_once => options.try_once(),
        Some(wait) => options.wait(wait),
        None => options.wait_forever(),
    };
    let mut signals = forward_signals()?;
    become_subreaper();

    let obtained = tokio::select! {
        result = obtain(locker, key, &want, options) => result,
        () = watch_holder(locker, key), if !try_once && !hold.quiet => unreachable!(),
        Some(sig) = signals.recv() => {
            if !hold.quiet {
                say(format!("interrupted by {sig} while waiting for lock {key:?}"));
            }
            return Ok(exit::signal_code(sig as i32));
        }
    };
    let holding = match obtained {
        Ok(holding) => holding,
        Err(Error::NotObtained { waited, holder, .. }) => {
            let holders = locker.holders(key).await.ok();
            let holder: Option<HolderInfo> = match holder {
                Some(h) if h.pid.is_some() || h.metadata.is_some() => Some(*h),
                _ => holders.as_ref().and_then(|h| h.holders.last().cloned()),
            };
            let within = if try_once {
                String::new()
            } else {
                format!(
                    " within {}",
                    humantime::format_duration(Duration::from_millis(waited.as_millis() as u64))
                )
            };
            let by = holder.map_or("someone else".into(), |h| describe_holder(&h));
            let by = match holders.as_ref().and_then(describe_sharing) {
                Some(sharing) => format!("{sharing}, the latest by {by}"),
                None => by,
            };
            return Err(Failure::new(
                hold.conflict_exit_code,
                format!("lock {key:?} not obtained{within}: held by {by}"),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let lock = holding.lock();

    let mut command = tokio::process::Command::new(program);
    command
        .args(&argv[1..])
        .env("DISTLOCK_KEY", key)
        .env("DISTLOCK_FENCING_TOKEN", lock.fencing_token().to_string())
        .process_group(0);
    match want {
        Want::Permit(limit) => {
            command.env("DISTLOCK_PERMITS", limit.to_string());
        }
        Want::Leader(_) => {
            command.env("DISTLOCK_TERM", lock.fencing_token().to_string());
        }
        Want::Lock | Want::Shared => {}
    }
    die_with_distlock(&mut command);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = holding.give_up().await;
            let code = match e.kind() {
                io::ErrorKind::NotFound => exit::NOT_FOUND,
                _ => exit::CANNOT_EXECUTE,
            };
            return Err(Failure::new(
                code,
                format!("cannot run {}: {e}", program.to_string_lossy()),
            ));
        }
    };
    let foreground = child
        .id()
        .and_then(|pid| terminal::hand_over(Pid::from_raw(pid as i32)));
    let quiet = hold.quiet;
    // A leadership refreshes itself.
    let refresher = matches!(holding, Holding::Lock(_)).then(|| {
        lock.start_refresh(move |e| {
            if !quiet && !e.is_not_held() {
                say(format!("refreshing the lock failed (will retry): {e}"));
            }
        })
    });
    let mut notify = |message: &str| say(message);
    let ending = supervise(lock, &mut child, policy, &mut signals, &mut notify).await;
    drop(foreground);
    if let Some(refresher) = refresher {
        refresher.stop().await;
    }
    let released = holding.give_up().await;
    match ending {
        Ok(Ending::Exited(status)) => match released {
            Ok(()) => Ok(exit_code(status)),
            Err(e) if e.is_not_held() => Err(Failure::new(
                exit::LOCK_LOST,
                format!("the command finished, but lock {key:?} had been lost by then"),
            )),
            Err(e) => {
                say(format!(
                    "releasing lock {key:?} failed; it expires after its TTL: {e}"
                ));
                Ok(exit_code(status))
            }
        },
        Ok(Ending::LockLost { .. }) => Ok(exit::LOCK_LOST),
        Err(e) => Err(Failure::new(
            exit::SOFTWARE,
            format!("waiting for the command failed: {e}"),
        )),
    }
}

/// Obtains the lock, the permit (`--limit`), the read lock (`--shared`) or
/// the leadership (`elect`).
async fn obtain(
    locker: &Locker,
    key: &str,
    want: &Want,
    options: ObtainOptions,
) -> distlock::Result<Holding> {
    Ok(match want {
        Want::Permit(limit) => {
            Holding::Lock(locker.semaphore(key, *limit)?.acquire_with(options).await?)
        }
        Want::Shared => Holding::Lock(locker.rw_lock(key)?.read_with(options).await?),
        Want::Lock => Holding::Lock(locker.obtain_with(key, options).await?),
        Want::Leader(id) => Holding::Leader(locker.campaign_with(key, id.as_str(), options).await?),
    })
}

/// Has the kernel SIGKILL the command if distlock dies (SIGKILL, crash):
/// its lock is free at once then, so the command must not go on.
#[cfg(target_os = "linux")]
fn die_with_distlock(command: &mut tokio::process::Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec. It makes
    // two async-signal-safe system calls (prctl, getppid) and allocates
    // nothing (errors are built from raw OS error numbers).
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            if nix::unistd::getppid() != parent {
                // distlock died before the death signal was armed.
                return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_distlock(_command: &mut tokio::process::Command) {}
