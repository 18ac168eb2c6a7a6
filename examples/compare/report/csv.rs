//! The CSV report: provenance as leading `# key: value` comment lines (pandas reads it with
//! `comment='#'`), then one line per measured cell. Repetition times are one field, `;`-separated.

use super::Run;
use std::fmt::Write as _;

/// Quotes a field if it needs it (RFC 4180: double the quotes inside).
fn field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

pub fn render(run: &Run) -> String {
    let mut out = String::new();
    for (key, value) in run.provenance.fields() {
        let _ = writeln!(out, "# {key}: {}", value.replace('\n', " "));
    }
    let _ = writeln!(out, "# quick: {}", run.quick);
    let _ = writeln!(
        out,
        "workload,threads,contender,latency,median_ns,min_ns,max_ns,reps,speedup,speedup_min,speedup_max,rayon_ratio,steals,sleeps,times_ns,error"
    );
    for r in &run.rows {
        let ns = |d: Option<std::time::Duration>| opt(d.map(|d| d.as_nanos()));
        let times = r.times.as_ref().map_or(String::new(), |t| {
            t.iter()
                .map(|d| d.as_nanos().to_string())
                .collect::<Vec<_>>()
                .join(";")
        });
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            field(&r.workload),
            r.threads,
            field(&r.contender),
            r.latency,
            ns(r.median()),
            ns(r.min()),
            ns(r.max()),
            r.reps(),
            opt(r.speedup.map(|v| format!("{v:.4}"))),
            opt(r.speedup_range.map(|(lo, _)| format!("{lo:.4}"))),
            opt(r.speedup_range.map(|(_, hi)| format!("{hi:.4}"))),
            opt(r.vs_rayon.map(|v| format!("{v:.4}"))),
            opt(r.steals),
            opt(r.sleeps),
            times,
            field(r.times.as_ref().err().map_or("", String::as_str)),
        );
    }
    for r in &run.idle {
        let _ = writeln!(
            out,
            "{},{},{},false,,,,,,,,,,,,{}",
            field(&format!("idle: {}", r.situation)),
            r.threads,
            field(&r.contender),
            field(&format!("cpu_ms_per_s={:.3}", r.cpu_ms_per_s)),
        );
    }
    out
}
