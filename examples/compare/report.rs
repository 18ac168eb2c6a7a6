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
