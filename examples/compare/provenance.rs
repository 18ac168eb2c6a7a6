//! What produced a result file: commit, toolchain, build, machine, date. Every output carries it
//! (markdown header, CSV comment lines, a JSON object), so a number can always be traced back.
//!
//! Everything is read when the run starts. A value that cannot be found is written as `unknown`
//! rather than failing the run: a comparison on a machine without git is still worth having.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

/// Where and how a run was made.
#[derive(Debug, Clone, PartialEq)]
pub struct Provenance {
    /// `git rev-parse HEAD` of the crate's checkout.
    pub commit: String,
    /// Did `git status --porcelain` list anything (uncommitted changes were measured)?
    pub dirty: Option<bool>,
    /// `rustc --version` of the toolchain that cargo picks in the crate's directory. Read at run
    /// time (an example has no build script of its own), so it names the toolchain that built the
    /// binary as long as it is started with `cargo run`.
    pub rustc: String,
    /// `release` or `dev`, from `debug_assertions` (what a cargo profile visibly changes).
    pub profile: String,
    /// parjob's cargo features enabled in this build.
    pub features: Vec<String>,
    /// The parjob policies run (`--policy`), and `PARJOB_NUM_THREADS` if set.
    pub policy: String,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// Logical CPUs the OS reports online (/proc/cpuinfo `processor` entries).
    pub cores: Option<usize>,
    /// `std::thread::available_parallelism`: what this process may use (cgroups, affinity).
    pub available_parallelism: usize,
    /// UTC, RFC 3339, when the run started.
    pub date: String,
    /// The command line.
    pub command: String,
}

impl Provenance {
    /// Reads the provenance of the current process; `policy` describes the parjob policies run.
    pub fn collect(policy: String) -> Provenance {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let git = |args: &[&str]| run(Command::new("git").arg("-C").arg(root).args(args));
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let mut features = Vec::new();
        if cfg!(feature = "trace") {
            features.push("trace".to_string());
        }
        if cfg!(feature = "progress") {
            features.push("progress".to_string());
        }
        if cfg!(feature = "processes") {
            features.push("processes".to_string());
        }
        let policy = match std::env::var("PARJOB_NUM_THREADS") {
            Ok(n) => format!("{policy}; PARJOB_NUM_THREADS={n}"),
            Err(_) => policy,
        };
        Provenance {
            commit: git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into()),
            dirty: git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
            rustc: run(
                Command::new(std::env::var("RUSTC").unwrap_or("rustc".into()))
                    .current_dir(root)
                    .arg("--version"),
            )
            .unwrap_or_else(|| "unknown".into()),
            profile: if cfg!(debug_assertions) {
                "dev"
            } else {
                "release"
            }
            .into(),
            features,
            policy,
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map_or_else(|| "unknown".into(), |(_, m)| m.trim().to_string()),
            cores: Some(
                cpuinfo
                    .lines()
                    .filter(|l| l.starts_with("processor"))
                    .count(),
            )
            .filter(|&n| n > 0),
            available_parallelism: parjob::cpu_count(),
            date: utc_now(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
        }
    }

    /// (key, value) pairs in a fixed order: the CSV comment lines and the markdown header.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("commit", self.commit_text()),
            ("rustc", self.rustc.clone()),
            ("profile", self.profile.clone()),
            ("features", self.features_text()),
            ("policy", self.policy.clone()),
            ("cpu", self.cpu_model.clone()),
            (
                "cores",
                self.cores.map_or("unknown".into(), |c| c.to_string()),
            ),
            (
                "available_parallelism",
                self.available_parallelism.to_string(),
            ),
            ("date", self.date.clone()),
            ("command", self.command.clone()),
        ]
    }

    pub fn commit_text(&self) -> String {
        match self.dirty {
            Some(true) => format!("{} (dirty)", self.commit),
            Some(false) => self.commit.clone(),
            None => format!("{} (dirty: unknown)", self.commit),
        }
    }

    fn features_text(&self) -> String {
        if self.features.is_empty() {
            "none".into()
        } else {
            self.features.join(",")
        }
    }

    /// A short markdown block: two lines a reader can take in at a glance.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Run {} on `{}` ({} cores, available parallelism {}), commit `{}`.  ",
            self.date,
            self.cpu_model,
            self.cores.map_or("unknown".into(), |c| c.to_string()),
            self.available_parallelism,
            self.commit_text(),
        );
        let _ = writeln!(
            out,
            "Built with {}, profile {}, features: {}; parjob policy: {}. Command: `{}`.",
            self.rustc,
            self.profile,
            self.features_text(),
            self.policy,
            self.command
        );
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "commit": self.commit,
            "dirty": self.dirty,
            "rustc": self.rustc,
            "profile": self.profile,
            "features": self.features,
            "policy": self.policy,
            "cpu_model": self.cpu_model,
            "cores": self.cores,
            "available_parallelism": self.available_parallelism,
            "date": self.date,
            "command": self.command,
        })
    }

    /// Reads the object written by [`to_json`](Self::to_json); missing fields become `unknown`
    /// (files written before provenance existed still load as baselines).
    pub fn from_json(value: &serde_json::Value) -> Provenance {
        let text = |key: &str| value[key].as_str().unwrap_or("unknown").to_string();
        Provenance {
            commit: text("commit"),
            dirty: value["dirty"].as_bool(),
            rustc: text("rustc"),
            profile: text("profile"),
            features: value["features"]
                .as_array()
                .map(|f| {
                    f.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            policy: text("policy"),
            cpu_model: text("cpu_model"),
            cores: value["cores"].as_u64().map(|c| c as usize),
            available_parallelism: value["available_parallelism"].as_u64().unwrap_or(0) as usize,
            date: text("date"),
            command: text("command"),
        }
    }
}

/// Runs a command; its trimmed stdout if it succeeded.
fn run(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ` (no date crate for one timestamp).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

/// Formats seconds since the Unix epoch; days to a civil date by Howard Hinnant's
/// `civil_from_days` (http://howardhinnant.github.io/date_algorithms.html).
fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_match_known_timestamps() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        // 2000-02-29 (a leap day in a century leap year) and a late-2026 timestamp.
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_796_002_245), "2026-11-30T01:30:45Z");
    }

    #[test]
    fn provenance_round_trips_through_json() {
        let p = Provenance::collect("lazy".into());
        assert_eq!(
            p.profile,
            if cfg!(debug_assertions) {
                "dev"
            } else {
                "release"
            }
        );
        assert!(p.available_parallelism >= 1);
        assert_eq!(Provenance::from_json(&p.to_json()), p);
        let keys: Vec<&str> = p.fields().iter().map(|(k, _)| *k).collect();
        for key in [
            "commit", "rustc", "profile", "features", "policy", "cpu", "cores",
        ] {
            assert!(
                keys.contains(&key),
                "{key} missing from the CSV/markdown fields"
            );
        }
    }
}
