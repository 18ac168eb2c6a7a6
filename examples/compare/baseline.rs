//! Baselines: a saved run (the JSON report) and the diff of a new run against it.
//!
//! **When a change is beyond noise.** Each row holds every repetition's time in both runs. A row
//! is *faster* or *slower* only when the two min–max ranges do not overlap: every repetition of one
//! run beat every repetition of the other. Otherwise it is *within noise*, however large the change
//! of the median. This is the most extreme outcome of a Mann–Whitney U test (U = 0); if nothing had
//! changed (all n + m repetitions exchangeable), it happens by chance with probability
//! 2 / C(n + m, n), which the table prints: 0.10 with 3 repetitions a side (`--quick`), 0.008 with
//! 5, under 10⁻⁴ with 10. So a verdict from a quick run is a hint, one from a full run is solid,
//! and a shift that only moves the medians (ranges still overlapping) is never called a change.
//! The rule needs no distribution assumption and no tuning, and it reads the spread the same
//! way the chart's whiskers show it.

use crate::report::{fmt_duration, json, Run};
use crate::runner::Row;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the diff says about one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every new repetition beat every old one.
    Faster,
    /// Every new repetition was slower than every old one.
    Slower,
    /// The min–max ranges overlap.
    WithinNoise,
    /// Only in the new run.
    Added,
    /// Only in the baseline.
    Removed,
    /// One side has no timing (a wrong result, or a file without repetitions).
    NoTiming,
}

impl Verdict {
    fn text(self) -> &'static str {
        match self {
            Verdict::Faster => "**faster**",
            Verdict::Slower => "**slower**",
            Verdict::WithinNoise => "within noise",
            Verdict::Added => "new row",
            Verdict::Removed => "not in this run",
            Verdict::NoTiming => "no timing",
        }
    }
}

/// One row of the diff.
#[derive(Debug, Clone)]
pub struct Change {
    pub workload: String,
    pub threads: usize,
    pub contender: String,
    pub old: Option<Duration>,
    pub new: Option<Duration>,
    /// (new median − old median) / old median, in percent: positive means slower.
    pub change_pct: Option<f64>,
    pub verdict: Verdict,
    /// The chance of non-overlapping ranges if nothing had changed: 2 / C(n + m, n).
    pub chance: Option<f64>,
}

/// 2 / C(n + m, n), capped at 1.
fn chance_of_no_overlap(n: usize, m: usize) -> f64 {
    // C(n + m, n) as a product of ratios, in f64: exact enough for a printed probability.
    let binomial = (1..=n).fold(1.0, |c, i| c * (m + i) as f64 / i as f64);
    (2.0 / binomial).min(1.0)
}

fn compare(old: &Row, new: &Row) -> Change {
    let mut change = Change {
        workload: new.workload.clone(),
        threads: new.threads,
        contender: new.contender.clone(),
        old: old.median(),
        new: new.median(),
        change_pct: None,
        verdict: Verdict::NoTiming,
        chance: None,
    };
    let (Some(old_median), Some(new_median)) = (old.median(), new.median()) else {
        return change;
    };
    let (old_min, old_max) = (old.min().expect("timed"), old.max().expect("timed"));
    let (new_min, new_max) = (new.min().expect("timed"), new.max().expect("timed"));
    if old_median > Duration::ZERO {
        change.change_pct =
            Some((new_median.as_secs_f64() / old_median.as_secs_f64() - 1.0) * 100.0);
    }
    change.chance = Some(chance_of_no_overlap(old.reps(), new.reps()));
    change.verdict = if new_min > old_max {
        Verdict::Slower
    } else if new_max < old_min {
        Verdict::Faster
    } else {
        Verdict::WithinNoise
    };
    change
}

/// The diff of `new` against `old`, in the new run's row order, then the rows that disappeared.
pub fn diff(old: &Run, new: &Run) -> Vec<Change> {
    let mut changes: Vec<Change> = new
        .rows
        .iter()
        .map(|n| match old.rows.iter().find(|o| o.key() == n.key()) {
            Some(o) => compare(o, n),
            None => Change {
                workload: n.workload.clone(),
                threads: n.threads,
                contender: n.contender.clone(),
                old: None,
                new: n.median(),
                change_pct: None,
                verdict: Verdict::Added,
                chance: None,
            },
        })
        .collect();
    for o in &old.rows {
        if !new.rows.iter().any(|n| n.key() == o.key()) {
            changes.push(Change {
                workload: o.workload.clone(),
                threads: o.threads,
                contender: o.contender.clone(),
                old: o.median(),
                new: None,
                change_pct: None,
                verdict: Verdict::Removed,
                chance: None,
            });
        }
    }
    changes
}

/// Rows that got slower by more than `pct` percent and beyond noise (`--fail-on-regression`).
pub fn regressions(changes: &[Change], pct: f64) -> Vec<&Change> {
    changes
        .iter()
        .filter(|c| c.verdict == Verdict::Slower && c.change_pct.is_some_and(|p| p > pct))
        .collect()
}

/// The diff as a markdown table, headed by what the baseline was.
pub fn render(baseline: &str, old: &Run, new: &Run, changes: &[Change]) -> String {
    let mut out = String::new();
    let p = &old.provenance;
    let _ = writeln!(
        out,
        "Baseline `{baseline}`: commit `{}`, {}, {} mode. Beyond noise = the min–max ranges of the \
         two runs do not overlap; \"chance if unchanged\" is how often that happens by luck.\n",
        p.commit_text(),
        p.date,
        if old.quick { "quick" } else { "full" },
    );
    if old.quick != new.quick {
        // Quick and full runs use different input sizes, so their workload names differ.
        let _ = writeln!(
            out,
            "This run is in {} mode: most rows have different inputs and will not match.\n",
            if new.quick { "quick" } else { "full" }
        );
    }
    let _ = writeln!(
        out,
        "| workload | threads | contender | baseline median | this run | change | verdict | chance if unchanged |"
    );
    let _ = writeln!(out, "|---|---:|---|---:|---:|---:|---|---:|");
    let time = |d: Option<Duration>| d.map_or_else(|| "-".to_string(), fmt_duration);
    for c in changes {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            c.workload,
            c.threads,
            c.contender,
            time(c.old),
            time(c.new),
            c.change_pct
                .map_or_else(|| "-".to_string(), |p| format!("{p:+.1}%")),
            c.verdict.text(),
            c.chance
                .map_or_else(|| "-".to_string(), |p| format!("{p:.2e}")),
        );
    }
    let count = |v: Verdict| changes.iter().filter(|c| c.verdict == v).count();
    let _ = writeln!(
        out,
        "\n{} faster, {} slower, {} within noise (of {} rows).",
        count(Verdict::Faster),
        count(Verdict::Slower),
        count(Verdict::WithinNoise),
        changes.len()
    );
    out
}

/// Where named baselines live: `<target dir>/parjob-compare/baselines/`. The target directory is
/// `CARGO_TARGET_DIR` when set (cargo passes it on to `cargo run`), else the crate's `target/`.
pub fn baselines_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("parjob-compare").join("baselines")
}

/// A baseline argument names a file if it looks like one (ends in `.json` or has a `/`), else a
/// saved baseline.
pub fn path_for(name_or_file: &str) -> PathBuf {
    if name_or_file.ends_with(".json") || name_or_file.contains(std::path::MAIN_SEPARATOR) {
        PathBuf::from(name_or_file)
    } else {
        baselines_dir().join(format!("{name_or_file}.json"))
    }
}

pub fn save(name_or_file: &str, run: &Run) -> Result<PathBuf, String> {
    let path = path_for(name_or_file);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(&path, json::render(run))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

pub fn load(name_or_file: &str) -> Result<Run, String> {
    let path = path_for(name_or_file);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "cannot read baseline {} ({e}); save one with --save-baseline NAME",
            path.display()
        )
    })?;
    json::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A results file as `--save-baseline` writes it, cut down to the fields that matter.
    fn run_file(rows: &[(&str, usize, &str, &[u64])]) -> String {
        let results: Vec<serde_json::Value> = rows
            .iter()
            .map(|(workload, threads, contender, times)| {
                serde_json::json!({"workload": workload, "threads": threads,
                    "contender": contender, "times_ns": times})
            })
            .collect();
        serde_json::json!({"provenance": {"commit": "abc123", "dirty": false},
            "quick": true, "results": results, "idle": []})
        .to_string()
    }

    fn saved(name: &str, text: &str) -> String {
        let dir = std::env::temp_dir().join(format!("parjob-baseline-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    }

    #[test]
    fn diff_of_two_saved_files_gives_the_expected_verdicts() {
        let old = saved(
            "old.json",
            &run_file(&[
                ("fib", 2, "parjob", &[100, 102, 105, 110, 111]),
                ("fib", 2, "rayon", &[100, 102, 105, 110, 111]),
                ("sort", 2, "parjob", &[100, 102, 105, 110, 111]),
                ("sort", 2, "rayon", &[1000, 1000, 1000]),
                ("gone", 1, "parjob", &[5, 5, 5]),
            ]),
        );
        let new = saved(
            "new.json",
            &run_file(&[
                // Every repetition slower than the old max: a 30% regression, beyond noise.
                ("fib", 2, "parjob", &[130, 131, 133, 140, 150]),
                // The median moved +20%, but the ranges overlap (one fast repetition): noise.
                ("fib", 2, "rayon", &[108, 120, 126, 130, 131]),
                // Every repetition faster than the old min.
                ("sort", 2, "parjob", &[50, 52, 55, 60, 99]),
                // The same times: within noise, change 0.
                ("sort", 2, "rayon", &[1000, 1000, 1000]),
                ("added", 1, "parjob", &[7, 7, 7]),
            ]),
        );
        let (old, new) = (load(&old).unwrap(), load(&new).unwrap());
        assert_eq!(old.provenance.commit, "abc123");
        let changes = diff(&old, &new);
        let verdicts: Vec<(&str, &str, Verdict)> = changes
            .iter()
            .map(|c| (c.workload.as_str(), c.contender.as_str(), c.verdict))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("fib", "parjob", Verdict::Slower),
                ("fib", "rayon", Verdict::WithinNoise),
                ("sort", "parjob", Verdict::Faster),
                ("sort", "rayon", Verdict::WithinNoise),
                ("added", "parjob", Verdict::Added),
                ("gone", "parjob", Verdict::Removed),
            ]
        );
        let pct: Vec<Option<i64>> = changes
            .iter()
            .map(|c| c.change_pct.map(|p| p.round() as i64))
            .collect();
        assert_eq!(pct, [Some(27), Some(20), Some(-48), Some(0), None, None]);
        // 5 vs 5 repetitions: 2 / C(10, 5) = 2 / 252.
        assert!((changes[0].chance.unwrap() - 2.0 / 252.0).abs() < 1e-12);
        // 3 vs 3 repetitions: 2 / C(6, 3) = 0.1.
        assert!((changes[3].chance.unwrap() - 0.1).abs() < 1e-12);

        // --fail-on-regression: only the row slower beyond noise and beyond the threshold counts;
        // the +20% rayon row is noise and never counts.
        let fail = |pct: f64| regressions(&changes, pct).len();
        assert_eq!((fail(10.0), fail(26.0), fail(30.0)), (1, 1, 0));

        let table = render("old", &old, &new, &changes);
        assert!(table.contains("| fib | 2 | parjob | 105 ns | 133 ns | +26.7% | **slower** |"));
        assert!(table.contains("1 faster, 1 slower, 2 within noise (of 6 rows)."));
    }

    #[test]
    fn rows_without_timing_are_never_judged() {
        let old = json::parse(&run_file(&[("fib", 1, "chili", &[10, 11, 12])])).unwrap();
        let mut new = old.clone();
        new.rows[0].times = Err("WRONG RESULT 3 (expected Some(2)); not timed".into());
        let changes = diff(&old, &new);
        assert_eq!(changes[0].verdict, Verdict::NoTiming);
        assert!(regressions(&changes, 0.0).is_empty());
    }

    #[test]
    fn a_saved_run_loads_back_with_its_rows_and_provenance() {
        let run = json::parse(&run_file(&[("fib", 2, "parjob", &[3, 1, 2])])).unwrap();
        let path = saved("round-trip.json", "");
        let written = save(&path, &run).unwrap();
        let loaded = load(written.to_str().unwrap()).unwrap();
        assert_eq!(loaded.rows.len(), 1);
        assert_eq!(loaded.rows[0].key(), ("fib", 2, "parjob"));
        // Times come back sorted, so median/min/max are read the same way as in the live run.
        assert_eq!(loaded.rows[0].median(), Some(Duration::from_nanos(2)));
        assert_eq!(loaded.rows[0].max(), Some(Duration::from_nanos(3)));
        assert_eq!(loaded.provenance, run.provenance);
    }

    #[test]
    fn names_are_saved_under_the_baselines_folder_and_files_are_used_as_given() {
        assert_eq!(path_for("main"), baselines_dir().join("main.json"));
        assert_eq!(path_for("old/run.json"), PathBuf::from("old/run.json"));
        assert_eq!(path_for("run.json"), PathBuf::from("run.json"));
    }
}
