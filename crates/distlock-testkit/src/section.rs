//! A critical-section checker: detects overlapping holders and records the
//! fencing tokens in the order sections were entered.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Shared by every contender of one key.
#[derive(Debug, Default)]
pub struct CriticalSection {
    occupied: AtomicBool,
    tokens: Mutex<Vec<u64>>,
}

impl CriticalSection {
    /// A free section.
    pub fn new() -> Self {
        Self::default()
    }

    /// Enters with `token`; panics if another holder is inside.
    pub fn enter(&self, token: u64) {
        assert!(
            !self.occupied.swap(true, Ordering::SeqCst),
            "two holders inside the critical section (entering with token {token})"
        );
        self.tokens.lock().unwrap().push(token);
    }

    /// Leaves the section.
    pub fn leave(&self) {
        assert!(
            self.occupied.swap(false, Ordering::SeqCst),
            "left a free section"
        );
    }

    /// The tokens in the order their holders entered.
    pub fn tokens(&self) -> Vec<u64> {
        self.tokens.lock().unwrap().clone()
    }

    /// Panics unless the entry tokens strictly increase; returns how many.
    pub fn assert_tokens_strictly_increase(&self) -> usize {
        let tokens = self.tokens();
        for pair in tokens.windows(2) {
            assert!(
                pair[0] < pair[1],
                "fencing tokens not strictly increasing: {tokens:?}"
            );
        }
        tokens.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "two holders")]
    fn overlap_is_caught() {
        let s = CriticalSection::new();
        s.enter(1);
        s.enter(2);
    }

    #[test]
    #[should_panic(expected = "not strictly increasing")]
    fn a_stale_token_is_caught() {
        let s = CriticalSection::new();
        for t in [1, 3, 2] {
            s.enter(t);
            s.leave();
        }
        s.assert_tokens_strictly_increase();
    }
}
