//! Handing the controlling terminal to the command's process group.
//!
//! The command runs in its own process group, so that it can be stopped as
//! a whole. On an interactive terminal that group must also be the
//! terminal's foreground group, or the command would be stopped (SIGTTIN)
//! the moment it reads its input; Ctrl-C then reaches the command's group
//! directly, as with any shell job.

use std::io::IsTerminal;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, killpg, pthread_sigmask};
use nix::unistd::{Pid, getpgrp, tcgetpgrp, tcsetpgrp};

/// Gives the terminal back to distlock's own process group when dropped.
#[derive(Debug)]
pub struct Foreground {
    ours: Pid,
}

/// Runs `f` with SIGTTOU blocked on this thread: a background process group
/// may then set the terminal's foreground group instead of being stopped.
fn with_sigttou_blocked<T>(f: impl FnOnce() -> T) -> T {
    let mut block = SigSet::empty();
    block.add(Signal::SIGTTOU);
    let mut old = SigSet::empty();
    let blocked = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&block), Some(&mut old)).is_ok();
    let result = f();
    if blocked {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    }
    result
}

/// Makes `group` the foreground process group of the terminal on standard
/// input, if standard input is a terminal whose foreground group is
/// distlock's. Also continues the group, in case it was stopped for reading
/// the terminal before it got it.
pub fn hand_over(group: Pid) -> Option<Foreground> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return None;
    }
    let ours = getpgrp();
    if tcgetpgrp(&stdin).ok()? != ours {
        return None;
    }
    with_sigttou_blocked(|| tcsetpgrp(&stdin, group)).ok()?;
    let _ = killpg(group, Signal::SIGCONT);
    Some(Foreground { ours })
}

impl Drop for Foreground {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        let _ = with_sigttou_blocked(|| tcsetpgrp(&stdin, self.ours));
    }
}
