//! Latency samples and their summary.

use std::time::Duration;

/// A summary of latency samples.
#[derive(Clone, Debug)]
pub struct Summary {
    pub count: usize,
    pub min: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub mean: Duration,
    pub max: Duration,
    /// Samples per second of wall time, when the caller knows the wall time.
    pub per_sec: Option<f64>,
}

impl Summary {
    /// Summarises `samples` (need not be sorted); `wall` is the total
    /// wall-clock time they took, for a throughput figure.
    pub fn of(mut samples: Vec<Duration>, wall: Option<Duration>) -> Summary {
        assert!(!samples.is_empty(), "no samples");
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        let total: Duration = samples.iter().sum();
        Summary {
            count: samples.len(),
            min: samples[0],
            p50: at(0.50),
            p99: at(0.99),
            mean: total / samples.len() as u32,
            max: *samples.last().unwrap(),
            per_sec: wall.map(|w| samples.len() as f64 / w.as_secs_f64()),
        }
    }
}

/// Microseconds, for tables and JSON.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `a / b` as a float.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// The median of `values` (not empty).
pub fn median(mut values: Vec<f64>) -> f64 {
    assert!(!values.is_empty(), "no values");
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}
