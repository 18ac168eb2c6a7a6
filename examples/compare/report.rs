//! The report writers: markdown, CSV, JSON and the charts, all from one [`Run`].

pub mod charts;
pub mod csv;
pub mod json;
pub mod markdown;

use crate::cli::Format;
use crate::provenance::Provenance;
use crate::runner::{IdleRow, Row};
use std::path::Path;
use std::time::Duration;

/// Everything one comparison run produced: what the writers render and a baseline stores.
#[derive(Debug, Clone)]
pub struct Run {
    pub provenance: Provenance,
    pub quick: bool,
    pub rows: Vec<Row>,
    pub idle: Vec<IdleRow>,
}

/// The report in one format.
pub fn render(run: &Run, format: Format) -> String {
    match format {
        Format::Markdown => markdown::render(run),
        Format::Csv => csv::render(run),
        Format::Json => json::render(run),
    }
}

/// Writes results.md/.csv/.json and the charts into `dir`; returns the file names written.
pub fn write_outputs(dir: &Path, run: &Run) -> std::io::Result<Vec<&'static str>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (format, file) in [
        (Format::Markdown, "results.md"),
        (Format::Csv, "results.csv"),
        (Format::Json, "results.json"),
    ] {
        std::fs::write(dir.join(file), render(run, format))?;
        written.push(file);
    }
    for (svg, file) in [
        (charts::speedup_svg(&run.rows), "speedup.svg"),
        (charts::latency_svg(&run.rows), "latency.svg"),
    ] {
        if let Some(svg) = svg {
            std::fs::write(dir.join(file), svg)?;
            written.push(file);
        }
    }
    Ok(written)
}

/// A duration with three significant figures and a unit a reader does not have to convert.
pub fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_run() -> Run {
        let row = |workload: &str, contender: &str, times: Result<Vec<u64>, &str>| Row {
            workload: workload.into(),
            threads: 2,
            contender: contender.into(),
            latency: false,
            times: times
                .map(|t| t.into_iter().map(Duration::from_nanos).collect())
                .map_err(String::from),
            speedup: Some(1.5),
            speedup_range: Some((1.25, 1.75)),
            vs_rayon: Some(0.9),
            steals: Some(12),
            sleeps: None,
        };
        Run {
            provenance: Provenance::collect("lazy".into()),
            quick: true,
            rows: vec![
                // A name with a comma and quotes: the CSV must quote it.
                row("tasks, \"uneven\"", "parjob", Ok(vec![10, 20, 30])),
                row(
                    "fib(30)",
                    "chili",
                    Err("WRONG RESULT 1 (expected Some(2)); not timed"),
                ),
            ],
            idle: vec![IdleRow {
                contender: "parjob".into(),
                threads: 2,
                situation: "after a burst".into(),
                cpu_ms_per_s: 0.06,
            }],
        }
    }

    #[test]
    fn every_output_carries_the_provenance() {
        let run = sample_run();
        let commit = &run.provenance.commit;
        let markdown = render(&run, Format::Markdown);
        assert!(markdown.lines().next().unwrap().contains(commit.as_str()));
        assert!(markdown.contains(&run.provenance.rustc));
        let csv = render(&run, Format::Csv);
        let comments: Vec<&str> = csv.lines().take_while(|l| l.starts_with('#')).collect();
        for (key, value) in run.provenance.fields() {
            assert!(
                comments.contains(&format!("# {key}: {value}").as_str()),
                "{key}"
            );
        }
        let json: serde_json::Value = serde_json::from_str(&render(&run, Format::Json)).unwrap();
        assert_eq!(json["provenance"]["commit"], commit.as_str());
        assert_eq!(
            json["provenance"]["cpu_model"],
            run.provenance.cpu_model.as_str()
        );
    }

    #[test]
    fn csv_lines_all_have_the_header_fields() {
        let csv = render(&sample_run(), Format::Csv);
        // A minimal RFC 4180 field count: commas outside quotes.
        let fields = |line: &str| {
            let mut quoted = false;
            1 + line
                .chars()
                .filter(|&c| {
                    if c == '"' {
                        quoted = !quoted;
                    }
                    c == ',' && !quoted
                })
                .count()
        };
        let mut lines = csv.lines().filter(|l| !l.starts_with('#'));
        let header = fields(lines.next().unwrap());
        let rest: Vec<&str> = lines.collect();
        assert_eq!(rest.len(), 3, "two rows and one idle line");
        for line in rest {
            assert_eq!(fields(line), header, "{line}");
        }
        assert!(csv.contains("\"tasks, \"\"uneven\"\"\",2,parjob,false,20,10,30,3,"));
    }

    #[test]
    fn json_reads_back_what_it_wrote() {
        let run = sample_run();
        let back = json::parse(&render(&run, Format::Json)).unwrap();
        assert_eq!(back.provenance, run.provenance);
        assert_eq!(back.rows.len(), 2);
        assert_eq!(back.rows[0].key(), run.rows[0].key());
        assert_eq!(back.rows[0].times, run.rows[0].times);
        assert_eq!(back.rows[0].speedup_range, run.rows[0].speedup_range);
        assert_eq!(back.rows[1].times, run.rows[1].times);
        assert_eq!(back.idle.len(), 1);
    }

    #[test]
    fn durations_read_in_their_own_unit() {
        assert_eq!(fmt_duration(Duration::from_nanos(179)), "179 ns");
        assert_eq!(fmt_duration(Duration::from_nanos(12_700)), "12.7 µs");
        assert_eq!(fmt_duration(Duration::from_micros(23_070)), "23.07 ms");
        assert_eq!(fmt_duration(Duration::from_millis(2_500)), "2.50 s");
    }
}
