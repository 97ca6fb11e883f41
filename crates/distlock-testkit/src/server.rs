//! Real store servers (redis-server, etcd) started by tests on free
//! loopback ports in temporary directories.
//!
//! Each server runs under a tiny `sh` watchdog that reads the test
//! process's pipe: when the test process exits — even by a panic or a
//! SIGKILL — the pipe closes and the watchdog kills the server and removes
//! its directory. So a server shared by a whole test binary through a
//! `static` never outlives it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A free TCP port on 127.0.0.1 (free when asked; bind soon after).
///
/// Picked below the kernel's ephemeral range (32768 and up by default):
/// a port the kernel handed out (`bind(0)`) is free for anyone's next
/// outgoing connection too, and with many client processes of parallel
/// tests one took an etcd fixture's port before it bound it ("address
/// already in use", seen in a CI rehearsal).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Distinct per process (pid) and per call, so parallel test processes
    // rarely try the same ports; the bind check skips taken ones.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    let base = std::process::id().wrapping_mul(7919);
    for _ in 0..SPAN {
        let step = u32::from(NEXT.fetch_add(1, Ordering::Relaxed));
        let port = (LOW + base.wrapping_add(step.wrapping_mul(97)) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below the ephemeral range")
}

/// The path of `binary`, or a panic naming the Debian package to install.
pub fn require_binary(binary: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{binary}` is not installed: these tests need a real server. \
                 Install it with `apt-get install -y {package}` (scripts/test does this as root)."
            )
        })
}

/// A server process owned by a test.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    binary: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    ports: Vec<u16>,
    watchdog: Child,
    // Held open: closing it tells the watchdog to kill the server.
    lifeline: ChildStdin,
    pid: i32,
}

impl ServerProcess {
    /// Starts `binary args...` in a fresh directory and waits until every
    /// port in `ready_ports` accepts connections.
    pub fn start(name: &str, binary: PathBuf, args: Vec<String>, ready_ports: Vec<u16>) -> Self {
        Self::start_with_files(name, binary, args, ready_ports, &[])
    }

    /// Like [`start`](Self::start), first writing `files` (name, contents)
    /// into the fresh directory: for servers that read a configuration file
    /// there, or rewrite it, as Redis Sentinel does.
    pub fn start_with_files(
        name: &str,
        binary: PathBuf,
        args: Vec<String>,
        ready_ports: Vec<u16>,
        files: &[(&str, &str)],
    ) -> Self {
        let dir = Self::fresh_dir(name, &ready_ports);
        for (file, contents) in files {
            std::fs::write(dir.join(file), contents).expect("write a server file");
        }
        Self::spawn(name, binary, args, dir, ready_ports)
    }

    /// Like [`start`](Self::start), without waiting for the ports: for
    /// servers that only serve once their peers run too (an etcd cluster).
    /// Call [`wait_ready`](Self::wait_ready) when all are started.
    pub fn start_unready(
        name: &str,
        binary: PathBuf,
        args: Vec<String>,
        ready_ports: Vec<u16>,
    ) -> Self {
        let dir = Self::fresh_dir(name, &ready_ports);
        Self::spawn_unready(name, binary, args, dir, ready_ports)
    }

    fn fresh_dir(name: &str, ports: &[u16]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "distlock-{name}-{}-{}",
            std::process::id(),
            ports.first().copied().unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir).expect("create the server directory");
        dir
    }

    fn spawn(
        name: &str,
        binary: PathBuf,
        args: Vec<String>,
        dir: PathBuf,
        ports: Vec<u16>,
    ) -> Self {
        let server = Self::spawn_unready(name, binary, args, dir, ports);
        server.wait_ready(Duration::from_secs(30));
        server
    }

    fn spawn_unready(
        name: &str,
        binary: PathBuf,
        args: Vec<String>,
        dir: PathBuf,
        ports: Vec<u16>,
    ) -> Self {
        let script = r#"dir=$1; shift
"$@" >>"$dir/server.log" 2>&1 </dev/null &
pid=$!
echo "$pid"
read -r command
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
[ "$command" = keep ] || rm -rf "$dir""#;
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("watchdog")
            .arg(&dir)
            .arg(&binary)
            .args(&args)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sh");
        let mut line = String::new();
        BufReader::new(watchdog.stdout.as_mut().expect("piped"))
            .read_line(&mut line)
            .expect("read the server pid");
        let pid: i32 = line
            .trim()
            .parse()
            .expect("the watchdog prints the server pid");
        let lifeline = watchdog.stdin.take().expect("piped");
        ServerProcess {
            name: name.to_owned(),
            binary,
            args,
            dir,
            ports,
            watchdog,
            lifeline,
            pid,
        }
    }

    /// Waits until every port it was started for accepts connections;
    /// panics with the server's log if that takes longer than `within` or
    /// the server dies.
    pub fn wait_ready(&self, within: Duration) {
        let start = Instant::now();
        for port in &self.ports {
            while TcpStream::connect(("127.0.0.1", *port)).is_err() {
                if start.elapsed() > within || !self.is_alive() {
                    panic!(
                        "{} did not come up on port {port} within {within:?}; its log:\n{}",
                        self.name,
                        self.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The server's working directory (data, configuration, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The ports it was started for.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        let mut log = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.join("server.log")) {
            let _ = f.read_to_string(&mut log);
        }
        log
    }

    /// Whether the server process still runs. A killed server stays a
    /// zombie until its watchdog reaps it, which `sh` does only after its
    /// `read` returns: a zombie counts as dead.
    pub fn is_alive(&self) -> bool {
        // A killed server stays a zombie until its watchdog reaps it at the
        // end: read the process state rather than probing with a signal.
        self.state()
            .is_some_and(|state| !matches!(state, 'Z' | 'X'))
    }

    /// Whether the server is stopped by [`pause`](Self::pause): it holds
    /// its connections but answers nothing, so fixtures must not ask it.
    pub fn is_paused(&self) -> bool {
        self.state() == Some('T')
    }

    /// The process state letter from `/proc/PID/stat`, if the process exists.
    fn state(&self) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        stat.rsplit(')').next()?.trim_start().chars().next()
    }

    /// SIGSTOP: the server stops answering but keeps its connections.
    /// Returns once it is stopped (a signal is delivered asynchronously).
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
        self.wait_for(|state| matches!(state, None | Some('T' | 'Z' | 'X')));
    }

    /// SIGCONT after [`pause`](Self::pause); returns once it runs again.
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
        self.wait_for(|state| state != Some('T'));
    }

    /// Waits briefly until `done(state)`; a process that is gone is done.
    fn wait_for(&self, done: impl Fn(Option<char>) -> bool) {
        let start = Instant::now();
        while !done(self.state()) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGKILL; the directory stays for [`restart`](Self::restart).
    pub fn kill(&self) {
        self.signal(Signal::SIGKILL);
        self.wait_for(|state| matches!(state, None | Some('Z' | 'X')));
    }

    /// Kills the server and starts it again with the same arguments, ports
    /// and directory (so a persistent store keeps its data).
    pub fn restart(&mut self) {
        self.kill();
        let next = Self::spawn(
            &self.name,
            self.binary.clone(),
            self.args.clone(),
            self.dir.clone(),
            self.ports.clone(),
        );
        let mut old = std::mem::replace(self, next);
        // Tell the old watchdog to leave the directory to its successor.
        let _ = writeln!(old.lifeline, "keep");
    }

    fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.pid), signal);
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Dropping the lifeline (a field) closes the pipe; make sure the
        // server also runs again if a test left it stopped.
        self.signal(Signal::SIGCONT);
        let _ = self.watchdog.try_wait();
    }
}
