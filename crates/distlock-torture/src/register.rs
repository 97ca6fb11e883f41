//! The fenced register: a tiny TCP service on loopback, run by the
//! orchestrator, that stands for "the resource the lock protects".
//!
//! Every act carries its grant's fencing token and what it needs of the
//! key ([`Mode`]); the register accepts it only if its [`Fence`] does
//! (unless fencing is disabled, for negative control 3), and logs every
//! decision to `register.jsonl`. The fence, per key:
//!
//! * an **exclusive** act (a lock's or a writer's write) needs a token at
//!   least every token accepted for the key (of any act: a writer older
//!   than a reader that has read is stale) — for locks, accepted tokens
//!   only grow;
//! * a **shared** act of limit N (a semaphore permit's write; a read, of
//!   unlimited N) needs a token at least every exclusive act's, and fewer
//!   than N tokens above it among the shared acts accepted: the register
//!   admits the N newest permits, so a permit that N newer ones have
//!   replaced (and written under) is stale. A live permit that outlived N
//!   newer ones is refused too; it has to take a new one. Readers are never
//!   refused by other readers, only by a newer writer.
//!
//! Protocol, one line each way:
//! `W <key> <token> <client> <incarnation> <op> [x | p<N> | r]` (the act's
//! mode: exclusive, the default; permit of N; read) answered by
//! `A <highest>` (accepted) or `R <highest>` (rejected), where `<highest>`
//! is the highest token accepted for the key after the act.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::clock;
use crate::history::{JsonLines, Mode, RegisterEntry};

/// Shared acts' tokens a fence remembers: more than any finite limit a
/// run uses (one of a larger limit counts as unlimited).
const WINDOW_CAP: usize = 1024;

/// The fencing rule of one key (see the module docs). The register decides
/// with it; the checker replays the accepted acts through a fresh one.
#[derive(Clone, Debug, Default)]
pub struct Fence {
    /// The highest token accepted for any act.
    highest: u64,
    /// The highest token accepted for an exclusive act.
    exclusive: u64,
    /// Tokens accepted for shared acts, above `exclusive`.
    shared: BTreeSet<u64>,
}

impl Fence {
    /// Whether an act with `token` and `mode` may be accepted now.
    pub fn admits(&self, token: u64, mode: Mode) -> bool {
        if mode.is_exclusive() {
            return token >= self.highest;
        }
        let limit = mode.limit() as usize;
        token >= self.exclusive
            && (self.shared.len() < limit
                || self
                    .shared
                    .range((Bound::Excluded(token), Bound::Unbounded))
                    .nth(limit - 1)
                    .is_none())
    }

    /// Records an accepted act.
    pub fn admit(&mut self, token: u64, mode: Mode) {
        self.highest = self.highest.max(token);
        if mode.is_exclusive() {
            self.exclusive = self.exclusive.max(token);
            self.shared = self.shared.split_off(&self.exclusive);
        } else if token >= self.exclusive {
            self.shared.insert(token);
            if self.shared.len() > WINDOW_CAP {
                self.shared.pop_first();
            }
        }
    }

    /// The highest token accepted for any act.
    pub fn highest(&self) -> u64 {
        self.highest
    }
}

/// One act on the register.
#[derive(Clone, Copy, Debug)]
pub struct Act<'a> {
    /// The key.
    pub key: &'a str,
    /// The grant's fencing token.
    pub token: u64,
    /// What the act needs of the key.
    pub mode: Mode,
    /// The acting client.
    pub client: u32,
    /// Its incarnation.
    pub incarnation: u32,
    /// The client's operation id.
    pub op: u64,
}

/// The register service. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct Register {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

#[derive(Debug)]
struct State {
    fenced: bool,
    fences: HashMap<String, Fence>,
    /// Every (key, token) written so far: the grants that wrote.
    seen: HashSet<(String, u64)>,
    log: JsonLines,
}

impl Register {
    /// Starts the register on a free loopback port, logging to `log`.
    pub async fn start(fenced: bool, log: JsonLines) -> io::Result<Register> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            fenced,
            fences: HashMap::new(),
            seen: HashSet::new(),
            log,
        }));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let _ = conn.set_nodelay(true);
                tokio::spawn(serve(conn, state.clone()));
            }
        });
        Ok(Register {
            addr,
            state: shared,
            accept,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many distinct grants (key, token) have written so far: a lower
    /// bound on the acquisitions, to follow a run's progress.
    pub fn grants_seen(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .len()
    }
}

impl Drop for Register {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve(conn: TcpStream, state: Arc<Mutex<State>>) {
    let (read, mut write) = conn.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = match decide(&line, &state) {
            Some(reply) => reply,
            None => "E bad request\n".to_owned(),
        };
        if write.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn decide(line: &str, state: &Mutex<State>) -> Option<String> {
    let mut parts = line.split(' ');
    if parts.next()? != "W" {
        return None;
    }
    let key = parts.next()?.to_owned();
    let token: u64 = parts.next()?.parse().ok()?;
    let client: u32 = parts.next()?.parse().ok()?;
    let incarnation: u32 = parts.next()?.parse().ok()?;
    let op: u64 = parts.next()?.parse().ok()?;
    let mode = match parts.next() {
        None | Some("x") => Mode::Exclusive,
        Some("r") => Mode::Read,
        Some(p) => Mode::Permit {
            limit: p.strip_prefix('p')?.parse().ok().filter(|&n| n > 0)?,
        },
    };
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    let fenced = state.fenced;
    let fence = state.fences.entry(key.clone()).or_default();
    let highest_before = fence.highest();
    let accepted = !fenced || fence.admits(token, mode);
    if accepted {
        fence.admit(token, mode);
    }
    let highest = fence.highest();
    state.seen.insert((key.clone(), token));
    // Logged under the lock, so the log's order is the decision order.
    state.log.append(&RegisterEntry {
        t: clock::now_ns(),
        key,
        token,
        mode,
        client,
        incarnation,
        op,
        accepted,
        highest_before,
    });
    Some(format!("{} {highest}\n", if accepted { "A" } else { "R" }))
}

/// A client's connection to the register (reconnects after failures).
#[derive(Debug)]
pub struct RegisterClient {
    addr: SocketAddr,
    conn: Option<(BufReader<OwnedReadHalf>, OwnedWriteHalf)>,
}

impl RegisterClient {
    /// A client of the register at `addr`; connects on first use.
    pub fn new(addr: SocketAddr) -> Self {
        RegisterClient { addr, conn: None }
    }

    /// Sends `act`; `Ok(true)` if accepted, `Ok(false)` if rejected as
    /// stale.
    pub async fn write(&mut self, act: &Act<'_>) -> io::Result<bool> {
        let result = self.try_write(act).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn try_write(&mut self, act: &Act<'_>) -> io::Result<bool> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            let (read, write) = stream.into_split();
            self.conn = Some((BufReader::new(read), write));
        }
        let (read, write) = self.conn.as_mut().expect("connected above");
        let Act {
            key,
            token,
            client,
            incarnation,
            op,
            ..
        } = act;
        let mode = match act.mode {
            Mode::Exclusive => "x".to_owned(),
            Mode::Read => "r".to_owned(),
            Mode::Permit { limit } => format!("p{limit}"),
        };
        write
            .write_all(format!("W {key} {token} {client} {incarnation} {op} {mode}\n").as_bytes())
            .await?;
        let mut reply = String::new();
        if read.read_line(&mut reply).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the register closed the connection",
            ));
        }
        match reply.split(' ').next() {
            Some("A") => Ok(true),
            Some("R") => Ok(false),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("register reply {reply:?}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::read_lines;

    fn act(key: &str, token: u64, mode: Mode, op: u64) -> Act<'_> {
        Act {
            key,
            token,
            mode,
            client: 0,
            incarnation: 0,
            op,
        }
    }

    #[tokio::test]
    async fn fenced_register_rejects_stale_tokens_and_logs_everything() {
        let dir = std::env::temp_dir().join(format!("distlock-torture-reg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("register.jsonl");
        let _ = std::fs::remove_file(&path);
        let x = Mode::Exclusive;
        for fenced in [true, false] {
            let register = Register::start(fenced, JsonLines::create(&path).unwrap())
                .await
                .unwrap();
            let mut c = RegisterClient::new(register.addr());
            let key = format!("k{fenced}");
            assert!(c.write(&act(&key, 5, x, 1)).await.unwrap());
            assert!(
                c.write(&act(&key, 5, x, 2)).await.unwrap(),
                "same token again"
            );
            assert!(c.write(&act(&key, 7, x, 3)).await.unwrap());
            assert_eq!(c.write(&act(&key, 6, x, 4)).await.unwrap(), !fenced);
            assert!(
                c.write(&act("other", 1, x, 5)).await.unwrap(),
                "keys are independent"
            );
        }
        let log: Vec<RegisterEntry> = read_lines(&path).unwrap();
        assert_eq!(log.len(), 10);
        assert!(!log[3].accepted && log[3].highest_before == 7);
        assert!(log[8].accepted && log[8].highest_before == 7);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn permits_and_reads_travel_with_their_mode() {
        let dir =
            std::env::temp_dir().join(format!("distlock-torture-modes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("register.jsonl");
        let _ = std::fs::remove_file(&path);
        let register = Register::start(true, JsonLines::create(&path).unwrap())
            .await
            .unwrap();
        let mut c = RegisterClient::new(register.addr());
        let p2 = Mode::Permit { limit: 2 };
        assert!(c.write(&act("s", 3, p2, 1)).await.unwrap());
        assert!(
            c.write(&act("s", 2, p2, 2)).await.unwrap(),
            "one newer permit"
        );
        assert!(c.write(&act("s", 4, p2, 3)).await.unwrap());
        assert!(
            !c.write(&act("s", 2, p2, 4)).await.unwrap(),
            "two newer permits"
        );
        assert!(c.write(&act("r", 9, Mode::Read, 5)).await.unwrap());
        let log: Vec<RegisterEntry> = read_lines(&path).unwrap();
        assert_eq!(log[0].mode, p2);
        assert_eq!(log[4].mode, Mode::Read);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_fence_admits_the_newest_permits_and_readers_after_the_last_writer() {
        let mut f = Fence::default();
        let p3 = Mode::Permit { limit: 3 };
        for t in [10, 11, 12] {
            assert!(f.admits(t, p3));
            f.admit(t, p3);
        }
        assert!(f.admits(10, p3), "two newer: still in the window of 3");
        assert!(!f.admits(9, p3), "three newer permits wrote");
        f.admit(13, p3);
        assert!(!f.admits(10, p3), "three newer permits wrote");
        assert!(f.admits(11, p3));
        assert!(!f.admits(12, Mode::Exclusive), "a writer below a permit");
        f.admit(20, Mode::Exclusive);
        assert!(!f.admits(19, p3) && !f.admits(19, Mode::Read));
        assert!(f.admits(21, Mode::Read));
        f.admit(21, Mode::Read);
        f.admit(25, Mode::Read);
        assert!(f.admits(22, Mode::Read), "readers never refuse readers");
        assert!(
            !f.admits(24, Mode::Exclusive),
            "a writer below a reader that read"
        );
        assert!(f.admits(25, Mode::Exclusive));
    }
}
