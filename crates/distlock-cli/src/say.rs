//! distlock's own lines on stderr, written by a thread of their own.
//!
//! The command shares distlock's stderr. When that is a pipe nobody reads
//! (a cron wrapper that only collects stdout, a log shipper that stalled),
//! a child that writes enough fills it, and every later write blocks. A
//! blocking `eprintln!` on the runtime that refreshes the lock and stops the
//! command would then stall both past the validity deadline. So the runtime
//! only hands lines to a bounded queue; a writer thread does the blocking
//! writes, and lines that do not fit are dropped (and counted) instead of
//! waiting.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

/// Lines waiting for the writer; more are dropped.
const QUEUE: usize = 256;

enum Message {
    Line(String),
    Flushed(SyncSender<()>),
}

static QUEUE_TX: OnceLock<SyncSender<Message>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

fn sender() -> &'static SyncSender<Message> {
    QUEUE_TX.get_or_init(|| {
        let (tx, rx) = sync_channel(QUEUE);
        // Without the thread, `say` falls back to writing directly.
        let _ = std::thread::Builder::new()
            .name("distlock-stderr".into())
            .spawn(move || write_lines(rx));
        tx
    })
}

fn write_lines(rx: Receiver<Message>) {
    let mut stderr = std::io::stderr();
    for message in rx {
        match message {
            Message::Line(line) => {
                let dropped = DROPPED.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    let _ = writeln!(
                        stderr,
                        "distlock: ({dropped} messages dropped: stderr was not being read)"
                    );
                }
                let _ = writeln!(stderr, "distlock: {line}");
            }
            Message::Flushed(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Writes `distlock: LINE` to stderr without ever blocking the caller.
pub fn say(line: impl Into<String>) {
    match sender().try_send(Message::Line(line.into())) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Err(TrySendError::Disconnected(Message::Line(line))) => eprintln!("distlock: {line}"),
        Err(TrySendError::Disconnected(_)) => {}
    }
}

/// Waits up to `within` for the lines said so far to be written, so that
/// the last one reaches a reader before the process exits. Returns whether
/// they were.
pub fn flush(within: Duration) -> bool {
    let (done, flushed) = sync_channel(1);
    if sender().try_send(Message::Flushed(done)).is_err() {
        return false;
    }
    flushed.recv_timeout(within).is_ok()
}
