//! What a scenario reports, and how it is printed (table or JSON).

use std::fmt::Write as _;

use crate::stats::{Summary, us};

/// One scenario's results on one backend.
#[derive(Debug, Default)]
pub struct Report {
    /// `<backend>-<scenario>`, e.g. `redis-uncontended`.
    pub scenario: String,
    pub about: String,
    /// The 1-minute load average when the scenario started and ended.
    pub load: (f64, f64),
    /// One row per measured subject (distlock, a baseline, ...).
    pub rows: Vec<Row>,
    /// Derived figures: ratios, counts, fairness, memory, CPU.
    pub figures: Vec<(String, f64)>,
    /// The targets this scenario checks.
    pub targets: Vec<Target>,
    /// Free-text remarks (what a figure means, what limits it).
    pub notes: Vec<String>,
}

/// One measured subject.
#[derive(Debug)]
pub struct Row {
    pub subject: String,
    pub stats: Summary,
}

/// A target: `value` must be at most `limit`.
#[derive(Debug, Clone)]
pub struct Target {
    pub what: String,
    pub value: f64,
    pub limit: f64,
    pub unit: &'static str,
}

impl Target {
    pub fn new(what: impl Into<String>, value: f64, limit: f64, unit: &'static str) -> Self {
        Target {
            what: what.into(),
            value,
            limit,
            unit,
        }
    }

    pub fn met(&self) -> bool {
        self.value <= self.limit
    }

    pub fn line(&self) -> String {
        format!(
            "{} {}: {:.3}{} (limit {}{})",
            if self.met() { "MET   " } else { "MISSED" },
            self.what,
            self.value,
            self.unit,
            self.limit,
            self.unit
        )
    }
}

impl Report {
    pub fn new(scenario: String, about: String) -> Self {
        Report {
            scenario,
            about,
            ..Report::default()
        }
    }

    pub fn figure(&mut self, name: impl Into<String>, value: f64) {
        self.figures.push((name.into(), value));
    }

    pub fn row(&mut self, subject: impl Into<String>, stats: Summary) {
        self.rows.push(Row {
            subject: subject.into(),
            stats,
        });
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "== {}: {} [load {:.2} -> {:.2}]",
            self.scenario, self.about, self.load.0, self.load.1
        );
        if !self.rows.is_empty() {
            let _ = writeln!(
                out,
                "{:<44} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10}",
                "subject", "n", "p50 µs", "p99 µs", "mean µs", "max µs", "per s"
            );
        }
        for row in &self.rows {
            let s = &row.stats;
            let _ = writeln!(
                out,
                "{:<44} {:>7} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10}",
                row.subject,
                s.count,
                us(s.p50),
                us(s.p99),
                us(s.mean),
                us(s.max),
                s.per_sec.map_or("-".to_owned(), |r| format!("{r:.0}")),
            );
        }
        for (name, value) in &self.figures {
            let _ = writeln!(out, "  {name}: {}", number(*value));
        }
        for target in &self.targets {
            let _ = writeln!(out, "  {}", target.line());
        }
        for note in &self.notes {
            let _ = writeln!(out, "  note: {note}");
        }
        out
    }

    pub fn json(&self) -> String {
        let rows: Vec<String> = self
            .rows
            .iter()
            .map(|r| {
                let s = &r.stats;
                format!(
                    "{{\"subject\":{},\"n\":{},\"p50_us\":{:.1},\"p99_us\":{:.1},\"mean_us\":{:.1},\"max_us\":{:.1},\"per_sec\":{}}}",
                    quote(&r.subject),
                    s.count,
                    us(s.p50),
                    us(s.p99),
                    us(s.mean),
                    us(s.max),
                    s.per_sec.map_or("null".to_owned(), |v| format!("{v:.1}")),
                )
            })
            .collect();
        let figures: Vec<String> = self
            .figures
            .iter()
            .map(|(k, v)| format!("{}:{}", quote(k), json_number(*v)))
            .collect();
        let targets: Vec<String> = self
            .targets
            .iter()
            .map(|t| {
                format!(
                    "{{\"what\":{},\"value\":{},\"limit\":{},\"unit\":{},\"met\":{}}}",
                    quote(&t.what),
                    json_number(t.value),
                    json_number(t.limit),
                    quote(t.unit),
                    t.met()
                )
            })
            .collect();
        let notes: Vec<String> = self.notes.iter().map(|n| quote(n)).collect();
        format!(
            "{{\"scenario\":{},\"about\":{},\"load\":[{:.2},{:.2}],\"rows\":[{}],\"figures\":{{{}}},\"targets\":[{}],\"notes\":[{}]}}",
            quote(&self.scenario),
            quote(&self.about),
            self.load.0,
            self.load.1,
            rows.join(","),
            figures.join(","),
            targets.join(","),
            notes.join(",")
        )
    }
}

/// Three decimals for small numbers, none for large ones.
fn number(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn json_number(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else {
        "null".to_owned()
    }
}

pub fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
