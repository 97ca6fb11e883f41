//! The fenced register: a tiny TCP service on loopback, run by the
//! orchestrator, that stands for "the resource the lock protects".
//!
//! It accepts a write for a key only if the write's fencing token is at
//! least the highest token it accepted for that key (unless fencing is
//! disabled, for negative control 3), and logs every decision to
//! `register.jsonl`.
//!
//! Protocol, one line each way: `W <key> <token> <client> <incarnation> <op>`
//! answered by `A <highest>` (accepted) or `R <highest>` (rejected), where
//! `<highest>` is the highest token accepted for the key after the write.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::clock;
use crate::history::{JsonLines, RegisterEntry};

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
    highest: HashMap<String, u64>,
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
            highest: HashMap::new(),
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
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    let highest_before = state.highest.get(&key).copied().unwrap_or(0);
    let accepted = !state.fenced || token >= highest_before;
    if accepted && token > highest_before {
        state.highest.insert(key.clone(), token);
    }
    let highest = highest_before.max(if accepted { token } else { 0 });
    state.seen.insert((key.clone(), token));
    // Logged under the lock, so the log's order is the decision order.
    state.log.append(&RegisterEntry {
        t: clock::now_ns(),
        key,
        token,
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

    /// Writes `key` with `token`; `Ok(true)` if accepted, `Ok(false)` if
    /// rejected as stale.
    pub async fn write(
        &mut self,
        key: &str,
        token: u64,
        client: u32,
        incarnation: u32,
        op: u64,
    ) -> io::Result<bool> {
        let result = self.try_write(key, token, client, incarnation, op).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn try_write(
        &mut self,
        key: &str,
        token: u64,
        client: u32,
        incarnation: u32,
        op: u64,
    ) -> io::Result<bool> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            let (read, write) = stream.into_split();
            self.conn = Some((BufReader::new(read), write));
        }
        let (read, write) = self.conn.as_mut().expect("connected above");
        write
            .write_all(format!("W {key} {token} {client} {incarnation} {op}\n").as_bytes())
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

    #[tokio::test]
    async fn fenced_register_rejects_stale_tokens_and_logs_everything() {
        let dir = std::env::temp_dir().join(format!("distlock-torture-reg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("register.jsonl");
        let _ = std::fs::remove_file(&path);
        for fenced in [true, false] {
            let register = Register::start(fenced, JsonLines::create(&path).unwrap())
                .await
                .unwrap();
            let mut c = RegisterClient::new(register.addr());
            let key = format!("k{fenced}");
            assert!(c.write(&key, 5, 0, 0, 1).await.unwrap());
            assert!(c.write(&key, 5, 0, 0, 2).await.unwrap(), "same token again");
            assert!(c.write(&key, 7, 1, 0, 1).await.unwrap());
            assert_eq!(c.write(&key, 6, 0, 0, 3).await.unwrap(), !fenced);
            assert!(
                c.write("other", 1, 0, 0, 4).await.unwrap(),
                "keys are independent"
            );
        }
        let log: Vec<RegisterEntry> = read_lines(&path).unwrap();
        assert_eq!(log.len(), 10);
        assert!(!log[3].accepted && log[3].highest_before == 7);
        assert!(log[8].accepted && log[8].highest_before == 7);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
