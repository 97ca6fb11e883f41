//! `distlock`: run any command under a distributed lock.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};
use distlock::Locker;
use distlock_cli::exit::{self, Failure};
use distlock_cli::job::{Hold, Job, Want, kill_policy, run};
use distlock_cli::say::{flush, say};
use distlock_cli::{show, store};

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

const ELECT_AFTER_HELP: &str = "\
`distlock elect KEY -- COMMAND` waits until this candidate leads KEY, runs
COMMAND while it leads, and resigns when COMMAND exits (a waiting candidate
takes over at once), exiting with COMMAND's code. The command gets
DISTLOCK_TERM (the term: greater than every earlier leader's), DISTLOCK_KEY
and DISTLOCK_FENCING_TOKEN (the same number). If the leadership is lost, the
command's group is stopped and distlock exits 76, exactly as `distlock run`
does when a lock is lost.

Examples:
  distlock elect scheduler --id node-a -- ./scheduler
  distlock leader scheduler --watch";

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
    /// Campaign for leadership, run a command only while leader, resign when it exits.
    #[command(after_help = format!("{ELECT_AFTER_HELP}\n\n{}", exit::HELP))]
    Elect(ElectArgs),
    /// Show the current leader; with --watch, every change; exit 0 if led, 1 if not.
    #[command(after_help = exit::HELP)]
    Leader(LeaderArgs),
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

    #[command(flatten)]
    hold: Hold,

    /// Take one of N permits of KEY (a semaphore): up to N commands run at
    /// once. Every holder of KEY must give the same N.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "shared")]
    limit: Option<u32>,

    /// Take KEY shared (a read lock): any number of --shared runs hold it
    /// together; a plain run of KEY excludes them all.
    #[arg(long)]
    shared: bool,

    #[command(flatten)]
    program: Program,
}

#[derive(Args, Debug)]
struct ElectArgs {
    /// The election's name: any UTF-8 text up to 1024 bytes.
    key: String,

    #[command(flatten)]
    store: Store,

    /// This candidate's identity, shown by `distlock leader` [default: HOST:PID]
    #[arg(long, value_name = "NAME")]
    id: Option<String>,

    #[command(flatten)]
    hold: Hold,

    #[command(flatten)]
    program: Program,
}

/// The command `run` and `elect` run.
#[derive(Args, Debug)]
struct Program {
    /// The command to run (while holding the lock or leading) and its arguments, best after `--`.
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
struct LeaderArgs {
    /// The election's name.
    key: String,

    #[command(flatten)]
    store: Store,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,

    /// Print the leader, then one line (or JSON object) per change, until interrupted.
    #[arg(long)]
    watch: bool,
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
                let want = match (args.limit, args.shared) {
                    (Some(limit), _) => Want::Permit(limit),
                    (None, true) => Want::Shared,
                    (None, false) => Want::Lock,
                };
                let job = Job {
                    key: &args.key,
                    hold: &args.hold,
                    command: &args.program.command,
                    want,
                };
                supervised(&args.store, job).await
            }
            Command::Elect(args) => {
                let id = args.id.clone().unwrap_or_else(distlock::default_identity);
                let job = Job {
                    key: &args.key,
                    hold: &args.hold,
                    command: &args.program.command,
                    want: Want::Leader(id),
                };
                supervised(&args.store, job).await
            }
            Command::Status(args) => {
                let locker = store::locker(args.store.backend.clone()).await?;
                let result = show::status(&locker, &args.key, args.json).await;
                close(&locker).await;
                result
            }
            Command::Leader(args) => {
                let locker = store::locker(args.store.backend.clone()).await?;
                let result = show::show_leader(&locker, &args.key, args.json, args.watch).await;
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

/// `run` or `elect`: connect, run the job, close.
async fn supervised(store: &Store, job: Job<'_>) -> Result<u8, Failure> {
    let policy = kill_policy(job.hold)?;
    let locker = store::locker(store.backend.clone()).await?;
    let result = run(&locker, job, policy).await;
    close(&locker).await;
    result
}
