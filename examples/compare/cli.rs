//! The command line, parsed by clap (derive). Every option has a doc comment: clap turns them into
//! `--help`, and bad values are clap's errors (exit status 2), not hand-written ones.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;

const EXAMPLES: &str = "\
Examples:
  cargo run --release --example compare                       # the full run (< 3 min on 2 cores)
  cargo run --release --example compare -- --quick            # smaller inputs, fewer repetitions
  cargo run --release --example compare -- --threads 1,2 --workload fib --format csv
  cargo run --release --example compare -- --policy lazy,eager --out results/
  cargo run --release --example compare -- --quick --save-baseline before
  cargo run --release --example compare -- --quick --baseline before --fail-on-regression 10";

/// The comparison run: every workload, every contender (sequential, parjob, rayon, chili, a static
/// 2-way split), on 1 thread and on all cores, in one process. Each result is checked against the
/// sequential answer; a wrong contender is reported, never timed.
#[derive(Debug, Parser)]
#[command(name = "compare", after_help = EXAMPLES)]
pub struct Options {
    /// Thread counts to run, comma-separated [default: 1 and all cores]
    #[arg(long, value_delimiter = ',', value_name = "LIST",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Vec<u32>,

    /// Run only workloads whose name contains NAME (case-insensitive; repeatable)
    #[arg(long = "workload", value_name = "NAME")]
    pub workloads: Vec<String>,

    /// Smaller inputs and fewer repetitions (what CI runs)
    #[arg(long)]
    pub quick: bool,

    /// Repetitions per measurement [default: as many as fit in ~0.7 s (0.15 s with --quick)]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub reps: Option<u32>,

    /// Format of the report printed on stdout
    #[arg(long, value_enum, default_value_t = Format::Markdown)]
    pub format: Format,

    /// Also write results.md, results.csv, results.json, speedup.svg and latency.svg to DIR
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Run parjob under each of these policies side by side (comma-separated)
    #[arg(
        long = "policy",
        value_enum,
        value_delimiter = ',',
        value_name = "LIST",
        default_value = "lazy"
    )]
    pub policies: Vec<Policy>,

    /// One Chrome trace per workload and thread count of parjob's timed runs (needs `--features trace`)
    #[arg(long = "trace", value_name = "DIR")]
    pub trace_dir: Option<PathBuf>,

    /// Save this run as baseline NAME (JSON, under target/parjob-compare/baselines/)
    #[arg(long, value_name = "NAME")]
    pub save_baseline: Option<String>,

    /// Compare this run with baseline NAME (or with a results .json file): old → new per row
    #[arg(long, value_name = "NAME|FILE.json")]
    pub baseline: Option<String>,

    /// With --baseline: exit with status 1 if a row got slower by more than PCT percent and beyond
    /// the run-to-run noise of both runs
    #[arg(long, value_name = "PCT", requires = "baseline",
          value_parser = parse_percent)]
    pub fail_on_regression: Option<f64>,
}

impl Options {
    /// The thread counts to run: `--threads`, or 1 and all cores.
    pub fn thread_counts(&self) -> Vec<usize> {
        if !self.threads.is_empty() {
            return self.threads.iter().map(|&t| t as usize).collect();
        }
        let cores = parjob::cpu_count();
        if cores > 1 {
            vec![1, cores]
        } else {
            vec![1]
        }
    }

    /// Does `name` pass the `--workload` filters?
    pub fn selects(&self, name: &str) -> bool {
        let name = name.to_lowercase();
        self.workloads.is_empty()
            || self
                .workloads
                .iter()
                .any(|f| name.contains(&f.to_lowercase()))
    }
}

fn parse_percent(value: &str) -> Result<f64, String> {
    match value.trim_end_matches('%').parse::<f64>() {
        Ok(p) if p.is_finite() && p >= 0.0 => Ok(p),
        _ => Err(format!(
            "expected a percentage >= 0, like 10 or 2.5, got {value:?}"
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[value(alias = "md")]
    Markdown,
    Csv,
    Json,
}

/// A parjob scheduling policy to run side by side with the others (`--policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    /// The default: forks stay private until a thief asks
    #[value(alias = "default")]
    Lazy,
    /// Every fork is pushed to the deque (as rayon does)
    Eager,
    /// Steal from victims in round-robin order
    RoundRobin,
    /// Steal first from the last victim that had work
    LastVictim,
    /// Park as soon as a search fails (spin budget 0)
    NoSpin,
    /// Record every fork (`fork_sample_period(1)`): the lazy policy without sampling
    RecordAll,
    /// Also record one join in 64, counted down at every join (`fork_sample_period(64)`, the
    /// default until round 10)
    #[value(name = "sample-64")]
    Sample64,
}

impl Policy {
    /// The name used on the command line and in result labels.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Lazy => "lazy",
            Policy::Eager => "eager",
            Policy::RoundRobin => "round-robin",
            Policy::LastVictim => "last-victim",
            Policy::NoSpin => "no-spin",
            Policy::RecordAll => "record-all",
            Policy::Sample64 => "sample-64",
        }
    }

    /// The contender label: plain `parjob` when only the default policy runs, so the tables of a
    /// plain run read as before; `parjob[NAME]` in a policy comparison.
    pub fn label(self, all: &[Policy]) -> String {
        if all == [Policy::Lazy] {
            "parjob".to_string()
        } else {
            format!("parjob[{}]", self.name())
        }
    }

    pub fn builder(self, threads: usize) -> parjob::ThreadPoolBuilder {
        let builder = parjob::ThreadPoolBuilder::new().num_threads(threads);
        match self {
            Policy::Lazy => builder,
            Policy::Eager => builder.share_policy(parjob::SharePolicy::Eager),
            Policy::RoundRobin => builder.victim_policy(parjob::VictimPolicy::RoundRobin),
            Policy::LastVictim => builder.victim_policy(parjob::VictimPolicy::LastSuccessful),
            Policy::NoSpin => builder.spin_rounds(0),
            Policy::RecordAll => builder.fork_sample_period(1),
            Policy::Sample64 => builder.fork_sample_period(64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    #[test]
    fn parser_definition_is_consistent() {
        // clap's own check of the derive output (conflicting names, bad defaults, ...).
        Options::command().debug_assert();
    }

    #[test]
    fn help_lists_every_option_and_the_examples() {
        let help = Options::command().render_long_help().to_string();
        for option in [
            "--threads",
            "--workload",
            "--quick",
            "--reps",
            "--format",
            "--out",
            "--policy",
            "--trace",
            "--save-baseline",
            "--baseline",
            "--fail-on-regression",
            "--help",
        ] {
            assert!(help.contains(option), "--help does not mention {option}");
        }
        assert!(help.contains("--threads 1,2 --workload fib --format csv"));
    }

    #[test]
    fn good_values_parse() {
        let options = Options::try_parse_from([
            "compare",
            "--threads",
            "1,2",
            "--workload",
            "fib",
            "--workload",
            "Tree",
            "--format",
            "md",
            "--policy",
            "lazy,no-spin",
            "--baseline",
            "a",
            "--fail-on-regression",
            "7.5%",
        ])
        .expect("valid command line");
        assert_eq!(options.thread_counts(), vec![1, 2]);
        assert_eq!(options.format, Format::Markdown);
        assert_eq!(options.policies, vec![Policy::Lazy, Policy::NoSpin]);
        assert_eq!(options.fail_on_regression, Some(7.5));
        assert!(options.selects("tree-sum 2^20 parent-first"));
        assert!(!options.selects("quicksort 1M"));
        assert_eq!(Policy::NoSpin.label(&options.policies), "parjob[no-spin]");
        assert_eq!(Policy::Lazy.label(&[Policy::Lazy]), "parjob");
    }

    #[test]
    fn bad_values_are_clap_errors_with_exit_status_2() {
        for args in [
            &["compare", "--threads", "0"][..],
            &["compare", "--threads", "two"],
            &["compare", "--reps", "-1"],
            &["compare", "--format", "xml"],
            &["compare", "--policy", "greedy"],
            &["compare", "--fail-on-regression", "5"], // needs --baseline
            &["compare", "--baseline", "a", "--fail-on-regression", "-3"],
            &["compare", "--no-such-option"],
        ] {
            let error = Options::try_parse_from(args).expect_err("must be rejected");
            assert_ne!(error.kind(), ErrorKind::DisplayHelp, "{args:?}");
            assert_eq!(error.exit_code(), 2, "{args:?}: {error}");
        }
        let help = Options::try_parse_from(["compare", "--help"]).expect_err("help exits");
        assert_eq!(help.kind(), ErrorKind::DisplayHelp);
        assert_eq!(help.exit_code(), 0);
    }
}
