//! `distlock`: run any command under a distributed lock.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};
use distlock::{Error, HolderInfo, Lock, Locker, ObtainOptions};
use distlock_cli::exit::Failure;
use distlock_cli::say::{flush, say};
use distlock_cli::{
    CliMetadata, Ending, KillPolicy, become_subreaper, describe_holder, describe_sharing, exit,
    holders_json, store, supervise, terminal,
};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

const ABOUT: &str = "Run commands under a distributed lock: flock for a fleet";

const LONG_ABOUT: &str = "\
Run commands under a distributed lock: flock for a fleet.

`distlock run KEY -- COMMAND` obtains the lock KEY, runs COMMAND while
keeping the lock refreshed, releases it when the command ends and exits with
the command's exit code. Without --backend (or DISTLOCK_URL) locks are files
in a per-user directory, shared by the processes of this host, with no
server: $XDG_RUNTIME_DIR/distlock, or /tmp/distlock-$UID.";

const RUN_AFTER_HELP: &str = "\
The command gets DISTLOCK_KEY and DISTLOCK_FENCING_TOKEN in its environment
(and DISTLOCK_PERMITS=N with --limit N); pass the token to whatever the lock
protects, so it can refuse writes from an older holder. With --limit N, up to
N commands hold KEY at once, each with its own lease; with --shared, any
number of --shared commands do, while a plain `run` of KEY holds it alone and
waits for them (and new --shared runs wait behind a waiting plain one). The command runs in its own process group. SIGINT, SIGTERM,
SIGHUP and SIGQUIT sent to distlock are forwarded to that group, and the lock
is released once the command and everything left in its group are gone.
If the lock is lost (its file deleted, or a Redis/etcd lock that could not be
refreshed), the whole group gets SIGTERM, then SIGKILL after --kill-grace, and
SIGKILL at the latest 200ms before the lock's validity ends; distlock then
exits with 76. If distlock itself is killed, the command gets SIGKILL.

Examples:
  distlock run nightly-backup -- ./backup.sh
  distlock run deploy --no-wait -- make deploy || echo 'a deploy is running'
  DISTLOCK_URL=redis://10.0.0.5:6379 distlock run --wait 5m migrate -- ./migrate
  distlock run --limit 4 encoders -- ./encode.sh
  distlock run --shared schema -- ./read-report.sh";

#[derive(Parser, Debug)]
#[command(
    name = "distlock",
    version,
    about = ABOUT,
    long_about = format!("{LONG_ABOUT}\n\n{}", store::help()),
    after_help = exit::HELP,
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Obtain a lock, run a command while holding it, release it; exit with the command's code.
    #[command(after_help = format!("{RUN_AFTER_HELP}\n\n{}", exit::HELP))]
    Run(RunArgs),
    /// Show who holds a lock (every holder of a --limit or --shared key); exit 0 if held, 1 if free.
    #[command(after_help = exit::HELP)]
    Status(StatusArgs),
}

#[derive(Args, Debug)]
struct Store {
    /// The lock store: file:///dir, redis://host:port, rediss://, etcd://host:port,
    /// etcds:// or memory:// (see `distlock --help` for those this build speaks),
    /// optionally with ?namespace=NAME [default: file://$XDG_RUNTIME_DIR/distlock,
    /// or file:///tmp/distlock-$UID]
    #[arg(long, env = "DISTLOCK_URL", value_name = "URL")]
    backend: Option<String>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The lock's name: any UTF-8 text up to 1024 bytes.
    key: String,

    #[command(flatten)]
    store: Store,

    /// How long the store keeps the lock without a refresh; distlock refreshes
    /// it every TTL/3. File locks do not expire: they last while distlock runs.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    ttl: Duration,

    /// Wait at most this long for the lock (like 500ms, 10s, 5m) [default: wait until obtained]
    #[arg(long, value_name = "DURATION", value_parser = duration, conflicts_with = "no_wait")]
    wait: Option<Duration>,

    /// Fail at once if the lock is held.
    #[arg(long)]
    no_wait: bool,

    /// Take one of N permits of KEY (a semaphore): up to N commands run at
    /// once. Every holder of KEY must give the same N.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "shared")]
    limit: Option<u32>,

    /// Take KEY shared (a read lock): any number of --shared runs hold it
    /// together; a plain run of KEY excludes them all.
    #[arg(long)]
    shared: bool,

    /// Exit code when the lock is held by someone else and was not obtained.
    #[arg(long, value_name = "N", default_value_t = exit::NOT_OBTAINED)]
    conflict_exit_code: u8,

    /// Time between SIGTERM and SIGKILL when the command must be stopped
    /// [default: 5s, or TTL/4 if shorter]
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    kill_grace: Option<Duration>,

    /// Print nothing about the holder while waiting, nor refresh warnings.
    #[arg(short, long)]
    quiet: bool,

    /// The command to run and its arguments, best after `--`.
    #[arg(
        required = true,
        value_name = "COMMAND",
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<OsString>,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The lock's name.
    key: String,

    #[command(flatten)]
    store: Store,

    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The default grace between SIGTERM and SIGKILL.
const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

/// How often the holder is looked up while waiting.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e} (use a duration like 500ms, 10s or 5m)"))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("distlock: cannot start: {e}");
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => {
                let policy = kill_policy(&args)?;
                let locker = store::locker(args.store.backend.clone()).await?;
                let result = run(&locker, args, policy).await;
                close(&locker).await;
                result
            }
            Command::Status(args) => {
                let locker = store::locker(args.store.backend.clone()).await?;
                let result = status(&locker, args).await;
                close(&locker).await;
                result
            }
        }
    });
    let code = match result {
        Ok(code) => code,
        Err(failure) => {
            say(failure.message);
            failure.code
        }
    };
    // A reader of stderr gets the last line; a stderr nobody reads cannot
    // keep distlock from exiting.
    flush(Duration::from_secs(1));
    ExitCode::from(code)
}

/// On every way out: releases what is held, finishes the background
/// releases of an obtain that gave up or was interrupted (its queue entry),
/// closes the connection. Bounded by the operation timeout.
async fn close(locker: &Locker) {
    if let Err(e) = locker.close().await {
        say(format!("closing the connection to the store failed: {e}"));
    }
}

/// Help and version go to stdout with 0; every other parse error is one
/// line on stderr and exit code 64.
fn usage_error(e: clap::Error) -> ExitCode {
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let rendered = e.render().to_string();
    let first: Vec<&str> = rendered
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = first.join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    eprintln!("distlock: {line} (see distlock --help)");
    ExitCode::from(exit::USAGE)
}

/// Forwards the signals distlock handles to a channel.
fn forward_signals() -> Result<mpsc::UnboundedReceiver<Signal>, Failure> {
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
fn kill_policy(args: &RunArgs) -> Result<KillPolicy, Failure> {
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

async fn run(locker: &Locker, args: RunArgs, policy: KillPolicy) -> Result<u8, Failure> {
    let key = args.key.as_str();
    let program = &args.command[0];
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
    let try_once = args.no_wait || args.wait == Some(Duration::ZERO);
    let options = ObtainOptions::new()
        .ttl(args.ttl)
        .metadata(metadata.to_json());
    let options = match args.wait {
        _ if try_once => options.try_once(),
        Some(wait) => options.wait(wait),
        None => options.wait_forever(),
    };
    let mut signals = forward_signals()?;
    become_subreaper();

    let obtained = tokio::select! {
        result = obtain(locker, &args, options) => result,
        () = watch_holder(locker, key), if !try_once && !args.quiet => unreachable!(),
        Some(sig) = signals.recv() => {
            if !args.quiet {
                say(format!("interrupted by {sig} while waiting for lock {key:?}"));
            }
            return Ok(exit::signal_code(sig as i32));
        }
    };
    let lock = match obtained {
        Ok(lock) => lock,
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
                args.conflict_exit_code,
                format!("lock {key:?} not obtained{within}: held by {by}"),
            ));
        }
        Err(e) => return Err(e.into()),
    };

    let mut command = tokio::process::Command::new(program);
    command
        .args(&args.command[1..])
        .env("DISTLOCK_KEY", key)
        .env("DISTLOCK_FENCING_TOKEN", lock.fencing_token().to_string())
        .process_group(0);
    if let Some(limit) = args.limit {
        command.env("DISTLOCK_PERMITS", limit.to_string());
    }
    die_with_distlock(&mut command);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = lock.release().await;
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
    let quiet = args.quiet;
    let refresher = lock.start_refresh(move |e| {
        if !quiet && !e.is_not_held() {
            say(format!("refreshing the lock failed (will retry): {e}"));
        }
    });
    let mut notify = |message: &str| say(message);
    let ending = supervise(&lock, &mut child, policy, &mut signals, &mut notify).await;
    drop(foreground);
    refresher.stop().await;
    let released = lock.release().await;
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

/// Obtains the lock, the permit (`--limit`) or the read lock (`--shared`).
async fn obtain(locker: &Locker, args: &RunArgs, options: ObtainOptions) -> distlock::Result<Lock> {
    let key = args.key.as_str();
    match (args.limit, args.shared) {
        (Some(limit), _) => locker.semaphore(key, limit)?.acquire_with(options).await,
        (None, true) => locker.rw_lock(key)?.read_with(options).await,
        (None, false) => locker.obtain_with(key, options).await,
    }
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

async fn status(locker: &Locker, args: StatusArgs) -> Result<u8, Failure> {
    let key = args.key.as_str();
    let holders = locker.holders(key).await?;
    if args.json {
        println!("{}", holders_json(key, &holders));
    } else if holders.is_empty() {
        println!("{key:?} is free");
    } else {
        match describe_sharing(&holders) {
            Some(sharing) => println!("{key:?} is held by {sharing}:"),
            None => print!("{key:?} is held by "),
        }
        let indent = if holders.limit.is_some() { "  " } else { "" };
        for h in &holders.holders {
            println!("{indent}{}", describe_holder(h));
            let left = match h.expires_in {
                Some(left) => {
                    humantime::format_duration(Duration::from_millis(left.as_millis() as u64))
                        .to_string()
                }
                None => "until the holder releases it or exits (no TTL)".into(),
            };
            println!("{indent}  time left: {left}");
            if let Some(metadata) = h.metadata.as_deref()
                && CliMetadata::from_json(metadata).is_none()
            {
                println!("{indent}  metadata: {metadata}");
            }
        }
    }
    Ok(if holders.is_empty() {
        exit::FREE
    } else {
        exit::HELD
    })
}
