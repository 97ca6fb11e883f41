//! Timestamps every process of a run can compare: nanoseconds of
//! `CLOCK_MONOTONIC`, which on Linux is one system-wide clock.
//!
//! Tokio's (and std's) `Instant` reads the same clock but hides its value,
//! so each process calibrates once: it reads `clock_gettime` on both sides
//! of an `Instant::now()` and keeps the tightest pair. Converting an
//! `Instant` is then pure arithmetic, so a process paused mid-conversion
//! (SIGSTOP) still gets the right value.

use std::sync::OnceLock;

use nix::time::{ClockId, clock_gettime};
use tokio::time::Instant;

/// `CLOCK_MONOTONIC` in nanoseconds, read directly.
pub fn raw_now_ns() -> i64 {
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always there");
    ts.tv_sec() * 1_000_000_000 + ts.tv_nsec()
}

struct Calibration {
    instant: std::time::Instant,
    ns: i64,
}

fn calibration() -> &'static Calibration {
    static CAL: OnceLock<Calibration> = OnceLock::new();
    CAL.get_or_init(|| {
        let mut best: Option<(i64, Calibration)> = None;
        for _ in 0..50 {
            let before = raw_now_ns();
            let instant = std::time::Instant::now();
            let after = raw_now_ns();
            let gap = after - before;
            if best.as_ref().is_none_or(|(g, _)| gap < *g) {
                best = Some((
                    gap,
                    Calibration {
                        instant,
                        ns: before + gap / 2,
                    },
                ));
            }
        }
        best.expect("calibrated").1
    })
}

/// The monotonic nanosecond value of a tokio `Instant`.
pub fn ns(t: Instant) -> i64 {
    let cal = calibration();
    let t = t.into_std();
    if t >= cal.instant {
        cal.ns
            .saturating_add(i64::try_from((t - cal.instant).as_nanos()).unwrap_or(i64::MAX))
    } else {
        cal.ns
            .saturating_sub(i64::try_from((cal.instant - t).as_nanos()).unwrap_or(i64::MAX))
    }
}

/// Now, in monotonic nanoseconds.
pub fn now_ns() -> i64 {
    ns(Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_convert_to_the_raw_clock() {
        let raw_before = raw_now_ns();
        let converted = now_ns();
        let raw_after = raw_now_ns();
        // Within a millisecond of the raw reading (calibration error is ~µs).
        assert!(
            converted >= raw_before - 1_000_000,
            "{converted} < {raw_before}"
        );
        assert!(
            converted <= raw_after + 1_000_000,
            "{converted} > {raw_after}"
        );
        let later = Instant::now() + std::time::Duration::from_secs(3);
        assert!((ns(later) - now_ns() - 3_000_000_000).abs() < 10_000_000);
    }
}
