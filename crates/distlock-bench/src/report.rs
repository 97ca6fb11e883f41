//! What a scenario reports, and how it is printed (table or JSON).

use std::fmt::Write as _;

use crate::stats::{Summary, us};

/// One scenario's results.
#[derive(Debug)]
pub struct Report {
    pub scenario: &'static str,
    pub about: String,
    /// One row per measured subject (distlock, a baseline, ...).
    pub rows: Vec<Row>,
    /// Derived figures: ratios, counts, fairness.
    pub figures: Vec<(String, f64)>,
}

/// One measured subject.
#[derive(Debug)]
pub struct Row {
    pub subject: String,
    pub stats: Summary,
}

impl Report {
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "== {}: {}", self.scenario, self.about);
        let _ = writeln!(
            out,
            "{:<34} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "subject", "n", "p50 µs", "p99 µs", "mean µs", "max µs", "per s"
        );
        for row in &self.rows {
            let s = &row.stats;
            let _ = writeln!(
                out,
                "{:<34} {:>8} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10}",
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
            let _ = writeln!(out, "  {name}: {value:.3}");
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
            .map(|(k, v)| format!("{}:{v:.4}", quote(k)))
            .collect();
        format!(
            "{{\"scenario\":{},\"about\":{},\"rows\":[{}],\"figures\":{{{}}}}}",
            quote(self.scenario),
            quote(&self.about),
            rows.join(","),
            figures.join(",")
        )
    }
}

fn quote(s: &str) -> String {
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
