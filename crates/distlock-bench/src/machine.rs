//! The machine a run measured: cores, CPU model, load, date, versions.

use std::process::Command;

use crate::report::quote;

/// The 1-, 5- and 15-minute load averages.
pub fn load() -> (f64, f64, f64) {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(f64::NAN));
    (
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
    )
}

/// The 1-minute load average.
pub fn load1() -> f64 {
    load().0
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
        .unwrap_or_else(|| "?".to_owned())
}

/// What to print above the tables.
pub struct Machine {
    pub date: String,
    pub cores: usize,
    pub cpu: String,
    pub load: (f64, f64, f64),
    pub commit: String,
    pub command: String,
    pub servers: Vec<String>,
}

impl Machine {
    pub fn probe(servers: Vec<String>) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "?".to_owned());
        Machine {
            date: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            load: load(),
            commit: first_line("git", &["rev-parse", "--short", "HEAD"]),
            command: std::env::var("DISTLOCK_BENCH_COMMAND")
                .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" ")),
            servers,
        }
    }

    pub fn text(&self) -> String {
        format!(
            "distlock-bench {} (commit {}), {} cores, {}, load {:.2} {:.2} {:.2}\nservers: {}\ncommand: {}\n",
            self.date,
            self.commit,
            self.cores,
            self.cpu,
            self.load.0,
            self.load.1,
            self.load.2,
            if self.servers.is_empty() {
                "none".to_owned()
            } else {
                self.servers.join(", ")
            },
            self.command
        )
    }

    pub fn json(&self) -> String {
        let servers: Vec<String> = self.servers.iter().map(|s| quote(s)).collect();
        format!(
            "{{\"date\":{},\"commit\":{},\"cores\":{},\"cpu\":{},\"load\":[{:.2},{:.2},{:.2}],\"command\":{},\"servers\":[{}]}}",
            quote(&self.date),
            quote(&self.commit),
            self.cores,
            quote(&self.cpu),
            self.load.0,
            self.load.1,
            self.load.2,
            quote(&self.command),
            servers.join(",")
        )
    }
}

/// `program --version`'s first line.
pub fn version(program: &str) -> String {
    first_line(program, &["--version"])
}
