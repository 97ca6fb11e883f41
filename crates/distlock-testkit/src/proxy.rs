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

use std::collections::HashMap;
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
    blackhole: watch::Sender<bool>,
    /// Bumped by `reset_all`; every connection resets when it changes.
    resets: watch::Sender<u64>,
    live: Mutex<HashMap<u64, ()>>,
    accepted: AtomicU64,
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
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            blackhole: watch::Sender::new(false),
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
        self.shared.blackhole.send_replace(on);
    }

    /// Whether a black hole is in force.
    pub fn is_blackholed(&self) -> bool {
        *self.shared.blackhole.borrow()
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
async fn serve(client: TcpStream, id: u64, shared: Arc<Shared>) {
    let mut resets = shared.resets.subscribe();
    resets.mark_unchanged();
    let _ = client.set_nodelay(true);
    let live = LiveGuard::new(&shared, id);
    // Held here while a black hole lasts, as a SYN would be.
    let mut hole = shared.blackhole.subscribe();
    let healed = tokio::select! {
        _ = resets.changed() => false,
        healed = hole.wait_for(|on| !on) => healed.is_ok(),
    };
    if !healed {
        return rst(&client);
    }
    let upstream = tokio::select! {
        _ = resets.changed() => return rst(&client),
        upstream = TcpStream::connect(shared.upstream) => upstream,
    };
    let Ok(upstream) = upstream else {
        return rst(&client);
    };
    let _ = upstream.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let reset_now = tokio::select! {
        _ = resets.changed() => true,
        _ = pump(&mut client_read, &mut upstream_write, shared.blackhole.subscribe()) => false,
        _ = pump(&mut upstream_read, &mut client_write, shared.blackhole.subscribe()) => false,
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

/// Closing a socket with a zero linger sends a RST instead of a FIN.
fn rst(client: &TcpStream) {
    let _ = client.set_zero_linger();
}

/// Copies `from` to `to` until EOF or an error, holding bytes while the
/// black hole is on.
async fn pump(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    mut hole: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if hole.wait_for(|on| !on).await.is_err() {
            return Ok(());
        }
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        // Read just as the hole opened: hold these bytes until it heals.
        if hole.wait_for(|on| !on).await.is_err() {
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
