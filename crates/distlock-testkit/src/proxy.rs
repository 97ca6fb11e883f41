//! A fault-injecting TCP proxy for tests: put it between clients and a
//! store server, then reset every connection or black-hole the traffic.
//!
//! ```no_run
//! # async fn demo(upstream: std::net::SocketAddr) -> std::io::Result<()> {
//! use distlock_testkit::proxy::FaultProxy;
//!
//! let proxy = FaultProxy::start(upstream).await?;
//! let url = format!("redis://{}/", proxy.addr()); // clients connect here
//! proxy.set_blackhole(true);  // bytes stop flowing both ways (nothing is lost)
//! proxy.set_blackhole(false); // held bytes flow again, in order
//! proxy.reset_all();          // every live connection gets a TCP RST
//! # let _ = url; Ok(()) }
//! ```
//!
//! A black hole models a partition the way TCP experiences one: nothing is
//! delivered while it lasts, nothing is dropped or reordered (TCP would
//! retransmit), and connections opened meanwhile are accepted but reach the
//! upstream only when it heals. Combine it with [`FaultProxy::reset_all`]
//! for a partition that ends with the connections torn down.
//!
//! In front of an HTTP/1 server, [`FaultProxy::start_tagging`] tags each
//! connection with a header of its first request, and a black hole can
//! cover one tag only: in front of an etcd member's peer port, the
//! `X-Server-From` header names the member that dialed, so one member can
//! be cut off from the others.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A TCP proxy on a free loopback port that forwards to one upstream and
/// injects faults on command. Must be started inside a tokio runtime;
/// dropping it closes the listener and every connection.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    /// The header whose value tags a connection (lowercase), if any.
    tag_header: Option<String>,
    blackhole: watch::Sender<Hole>,
    /// Bumped by `reset_all`; every connection resets when it changes.
    resets: watch::Sender<u64>,
    live: Mutex<HashMap<u64, ()>>,
    accepted: AtomicU64,
}

/// What a black hole covers.
#[derive(Clone, Debug, Default)]
struct Hole {
    all: bool,
    tags: BTreeSet<String>,
}

impl Hole {
    fn blocks(&self, tag: Option<&str>) -> bool {
        self.all || tag.is_some_and(|t| self.tags.contains(t))
    }
}

/// Counters of one proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted so far.
    pub accepted: u64,
    /// Connections open now.
    pub live: usize,
    /// How many times [`FaultProxy::reset_all`] was called.
    pub resets: u64,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to
    /// `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        Self::listen(upstream, None).await
    }

    /// Like [`FaultProxy::start`], for an HTTP/1 upstream: each connection
    /// is tagged with the value of `header` in its first request (read
    /// before the upstream is dialed), so that
    /// [`FaultProxy::set_blackhole_tag`] can hold the connections of one
    /// tag only.
    pub async fn start_tagging(upstream: SocketAddr, header: &str) -> io::Result<FaultProxy> {
        Self::listen(upstream, Some(header.to_ascii_lowercase())).await
    }

    async fn listen(upstream: SocketAddr, tag_header: Option<String>) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            tag_header,
            blackhole: watch::Sender::new(Hole::default()),
            resets: watch::Sender::new(0),
            live: Mutex::new(HashMap::new()),
            accepted: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(FaultProxy {
            addr,
            shared,
            accept,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The upstream server's address.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Starts (`true`) or heals (`false`) a black hole: while it lasts no
    /// byte is forwarded in either direction and new connections are held
    /// before they reach the upstream.
    pub fn set_blackhole(&self, on: bool) {
        self.shared.blackhole.send_modify(|hole| hole.all = on);
    }

    /// Starts (`true`) or heals (`false`) a black hole for the connections
    /// tagged `tag` only (see [`FaultProxy::start_tagging`]).
    pub fn set_blackhole_tag(&self, tag: &str, on: bool) {
        self.shared.blackhole.send_modify(|hole| {
            if on {
                hole.tags.insert(tag.to_owned());
            } else {
                hole.tags.remove(tag);
            }
        });
    }

    /// Heals every black hole, tagged or not.
    pub fn heal(&self) {
        self.shared.blackhole.send_replace(Hole::default());
    }

    /// Whether a black hole covering every connection is in force.
    pub fn is_blackholed(&self) -> bool {
        self.shared.blackhole.borrow().all
    }

    /// Resets every live connection (a TCP RST to both the client and the
    /// upstream) and returns how many there were. New connections are
    /// accepted as usual.
    pub fn reset_all(&self) -> usize {
        let live = self.live();
        self.shared.resets.send_modify(|n| *n += 1);
        live
    }

    /// How many connections are open now.
    pub fn live(&self) -> usize {
        self.shared
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// The proxy's counters.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            accepted: self.shared.accepted.load(Ordering::Relaxed),
            live: self.live(),
            resets: *self.shared.resets.borrow(),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Tear down every connection: they end when the generation changes.
        self.shared.resets.send_modify(|n| *n += 1);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let next = AtomicU64::new(0);
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let id = next.fetch_add(1, Ordering::Relaxed);
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve(client, id, shared.clone()));
    }
}

/// One proxied connection, from accept to close or reset.
async fn serve(mut client: TcpStream, id: u64, shared: Arc<Shared>) {
    let mut resets = shared.resets.subscribe();
    resets.mark_unchanged();
    let _ = client.set_nodelay(true);
    let live = LiveGuard::new(&shared, id);
    let (head, tag) = match &shared.tag_header {
        Some(header) => tokio::select! {
            _ = resets.changed() => return rst(&client),
            head = read_head(&mut client) => {
                let tag = header_value(&head, header);
                (head, tag)
            }
        },
        None => (Vec::new(), None),
    };
    let tag = tag.as_deref();
    // Held here while a black hole lasts, as a SYN would be.
    let mut hole = shared.blackhole.subscribe();
    let healed = tokio::select! {
        _ = resets.changed() => false,
        healed = hole.wait_for(|h| !h.blocks(tag)) => healed.is_ok(),
    };
    if !healed {
        return rst(&client);
    }
    let upstream = tokio::select! {
        _ = resets.changed() => return rst(&client),
        upstream = TcpStream::connect(shared.upstream) => upstream,
    };
    let Ok(mut upstream) = upstream else {
        return rst(&client);
    };
    let _ = upstream.set_nodelay(true);
    if upstream.write_all(&head).await.is_err() {
        return rst(&client);
    }
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let reset_now = tokio::select! {
        _ = resets.changed() => true,
        _ = pump(&mut client_read, &mut upstream_write, shared.blackhole.subscribe(), tag) => false,
        _ = pump(&mut upstream_read, &mut client_write, shared.blackhole.subscribe(), tag) => false,
    };
    if reset_now {
        // Reunited first: a dropped write half would send a FIN before the RST.
        for (read, write) in [(client_read, client_write), (upstream_read, upstream_write)] {
            if let Ok(stream) = read.reunite(write) {
                rst(&stream);
            }
        }
    } else {
        let _ = client_write.shutdown().await;
        let _ = upstream_write.shutdown().await;
    }
    drop(live);
}

/// The longest request head read to find a tag.
const MAX_HEAD: usize = 16 * 1024;

/// Reads from `client` until the end of an HTTP request head (or EOF, an
/// error or `MAX_HEAD` bytes); everything read is forwarded later.
async fn read_head(client: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head
}

/// The value of header `name` (lowercase) in an HTTP request head.
fn header_value(head: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    let head = text.split("\r\n\r\n").next()?;
    head.split("\r\n").skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// Closing a socket with a zero linger sends a RST instead of a FIN.
fn rst(client: &TcpStream) {
    let _ = client.set_zero_linger();
}

/// Copies `from` to `to` until EOF or an error, holding bytes while the
/// black hole is on.
async fn pump(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    mut hole: watch::Receiver<Hole>,
    tag: Option<&str>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if hole.wait_for(|h| !h.blocks(tag)).await.is_err() {
            return Ok(());
        }
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        // Read just as the hole opened: hold these bytes until it heals.
        if hole.wait_for(|h| !h.blocks(tag)).await.is_err() {
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
    }
}

struct LiveGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl<'a> LiveGuard<'a> {
    fn new(shared: &'a Shared, id: u64) -> Self {
        shared
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, ());
        LiveGuard { shared, id }
    }
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.shared
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}
