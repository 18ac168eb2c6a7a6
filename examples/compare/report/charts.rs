//! The charts, drawn with plotters' SVG backend.
//!
//! * `speedup.svg`: one panel per thread count; one band per workload; one horizontal bar per
//!   contender, drawn from the 1× line (sequential) to the median speedup, so slower-than-sequential
//!   bars point left and faster ones right. The whisker spans the run-to-run spread (sequential
//!   median / the contender's slowest and fastest repetition). The axis is logarithmic, so 0.12×
//!   and 6.6× are both readable and 0.5× is as far from the line as 2×.
//! * `latency.svg`: the per-call workloads, where a speedup means nothing: time per call, log axis,
//!   with the same min–max whiskers.
//!
//! Bars are horizontal so that long workload names are written out in full on the left, in a
//! label column sized to the longest name, instead of being rotated or clipped.

use crate::runner::Row;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::time::Duration;

/// The colour of the 1× reference line, used by nothing else (the tests look for it).
pub const REFERENCE_COLOR: RGBColor = RGBColor(0xb2, 0x18, 0x2b);
/// Text next to the reference line.
pub const REFERENCE_LABEL: &str = "1× = sequential";

const PALETTE: [RGBColor; 8] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0xed, 0xc9, 0x48),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0x9c, 0x75, 0x5f),
    RGBColor(0x79, 0x70, 0x6e),
];
const FONT: &str = "sans-serif";
const WIDTH: u32 = 1100;
/// Pixel height of one contender's bar, and the gap between workload bands.
const BAR: u32 = 11;
const BAND_GAP: u32 = 10;
const PANEL_CHROME: u32 = 95;
const HEADER: u32 = 60;

/// One bar: the value it reaches and its whisker, or no bar (`value` is `None`) and a note saying
/// why (a contender that gave a wrong result is not timed, and the chart says so rather than
/// leaving a gap).
struct Bar {
    contender: usize,
    value: Option<f64>,
    low: f64,
    high: f64,
    text: String,
}

/// What one panel shows: bars grouped by workload, at one thread count.
struct Panel {
    title: String,
    workloads: Vec<(String, Vec<Bar>)>,
}

/// Renders the speedup chart; `None` if no row has a speedup (e.g. only latency workloads ran).
pub fn speedup_svg(rows: &[Row]) -> Option<String> {
    let rows: Vec<&Row> = rows
        .iter()
        .filter(|r| !r.latency && r.contender != "sequential")
        .collect();
    let contenders = contenders(&rows);
    let panels = panels(&rows, &contenders, |r| {
        let speedup = r.speedup?;
        let (low, high) = r.speedup_range.unwrap_or((speedup, speedup));
        Some((speedup, low, high, format!("{speedup:.2}×")))
    });
    let title = "Speedup over sequential (median of the repetitions; whiskers: fastest and \
                 slowest repetition; log scale, right of the line is faster)";
    render(title, &panels, &contenders, true, |v| {
        format!("{}×", (v * 1000.0).round() / 1000.0)
    })
}

/// Renders the latency chart (time per call); `None` if no latency workload ran.
pub fn latency_svg(rows: &[Row]) -> Option<String> {
    let rows: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.latency && (r.times.is_err() || r.median().is_some_and(|m| m > Duration::ZERO))
        })
        .collect();
    let contenders = contenders(&rows);
    let ns = |d: Duration| (d.as_nanos() as f64).max(1.0);
    let panels = panels(&rows, &contenders, |r| {
        let median = r.median()?;
        Some((
            ns(median),
            ns(r.min()?),
            ns(r.max()?),
            super::fmt_duration(median),
        ))
    });
    let title = "Latency per call (median; whiskers: fastest and slowest repetition; log scale, \
                 shorter is better)";
    render(title, &panels, &contenders, false, |v| duration_tick(*v))
}

/// 1, 2 and 5 times the powers of ten within `lo..=hi`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        for step in [1.0, 2.0, 5.0] {
            let v = decade * step;
            if (lo..=hi).contains(&v) {
                ticks.push(v);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// A tick label for a time in nanoseconds: "20 ns", "5 µs", "1 ms" (no trailing ".0").
fn duration_tick(ns: f64) -> String {
    let (value, unit) = if ns >= 1e9 {
        (ns / 1e9, "s")
    } else if ns >= 1e6 {
        (ns / 1e6, "ms")
    } else if ns >= 1e3 {
        (ns / 1e3, "µs")
    } else {
        (ns, "ns")
    };
    format!("{} {unit}", (value * 100.0).round() / 100.0)
}

/// Contender labels in order of first appearance, so a colour means the same in every panel.
fn contenders(rows: &[&Row]) -> Vec<String> {
    let mut list: Vec<String> = Vec::new();
    for r in rows {
        if !list.contains(&r.contender) {
            list.push(r.contender.clone());
        }
    }
    list
}

/// Groups rows into one panel per thread count, one band per workload (in run order).
fn panels(
    rows: &[&Row],
    contenders: &[String],
    bar: impl Fn(&Row) -> Option<(f64, f64, f64, String)>,
) -> Vec<Panel> {
    let mut threads: Vec<usize> = rows.iter().map(|r| r.threads).collect();
    threads.sort_unstable();
    threads.dedup();
    threads
        .into_iter()
        .map(|t| {
            let mut workloads: Vec<(String, Vec<Bar>)> = Vec::new();
            for r in rows.iter().filter(|r| r.threads == t) {
                if !workloads.iter().any(|(w, _)| *w == r.workload) {
                    workloads.push((r.workload.clone(), Vec::new()));
                }
                let (value, low, high, text) = match (bar(r), &r.times) {
                    (Some((value, low, high, text)), _) => (Some(value), low, high, text),
                    (None, Err(_)) => (None, 1.0, 1.0, "wrong result, not timed".to_string()),
                    (None, Ok(_)) => continue,
                };
                let contender = contenders.iter().position(|c| *c == r.contender);
                let band = workloads.iter_mut().find(|(w, _)| *w == r.workload);
                if let (Some(contender), Some((_, bars))) = (contender, band) {
                    bars.push(Bar {
                        contender,
                        value,
                        low,
                        high,
                        text,
                    });
                }
            }
            Panel {
                title: format!("{t} thread{}", if t == 1 { "" } else { "s" }),
                workloads,
            }
        })
        .collect()
}

fn render(
    title: &str,
    panels: &[Panel],
    contenders: &[String],
    reference_line: bool,
    tick: impl Fn(&f64) -> String,
) -> Option<String> {
    if panels.iter().all(|p| p.workloads.is_empty()) {
        return None;
    }
    let band = BAR * contenders.len().max(1) as u32 + BAND_GAP;
    let heights: Vec<u32> = panels
        .iter()
        .map(|p| band * p.workloads.len() as u32 + PANEL_CHROME)
        .collect();
    let height = HEADER + heights.iter().sum::<u32>();
    // The label column fits the longest workload name (about 7 px per character at 13 px).
    let longest = panels
        .iter()
        .flat_map(|p| p.workloads.iter().map(|(w, _)| w.chars().count()))
        .max()
        .unwrap_or(10);
    let label_width = (longest as u32 * 7 + 20).min(WIDTH / 2);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        draw(
            &root,
            title,
            panels,
            contenders,
            &heights,
            label_width,
            reference_line,
            &tick,
        )
        .expect("drawing into a String cannot fail");
        root.present().expect("drawing into a String cannot fail");
    }
    Some(svg)
}

#[allow(clippy::too_many_arguments)]
fn draw(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    panels: &[Panel],
    contenders: &[String],
    heights: &[u32],
    label_width: u32,
    reference_line: bool,
    tick: &dyn Fn(&f64) -> String,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    root.fill(&WHITE)?;
    // Sizes are what plotters is asked for; its SVG backend writes them divided by 1.24 (a 16 is
    // drawn at about 13 px), and the label column and legend spacing assume those drawn sizes.
    let text = |size: f64| TextStyle::from((FONT, size).into_font()).color(&BLACK);
    root.draw(&Text::new(title.to_string(), (12, 8), text(18.0)))?;
    // The legend: one swatch per contender, on one line under the title.
    let mut x = 12;
    for (i, name) in contenders.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        root.draw(&Rectangle::new([(x, 36), (x + 12, 48)], color.filled()))?;
        root.draw(&Text::new(name.clone(), (x + 16, 36), text(16.0)))?;
        x += 16 + 7 * name.chars().count() as i32 + 24;
    }

    let (_, rest) = root.split_vertically(HEADER);
    let mut area = rest;
    for (panel, &panel_height) in panels.iter().zip(heights) {
        let (this, below) = area.split_vertically(panel_height);
        area = below;
        if panel.workloads.is_empty() {
            continue;
        }
        let values = panel
            .workloads
            .iter()
            .flat_map(|(_, bars)| bars.iter().filter(|b| b.value.is_some()))
            .flat_map(|b| [b.value.unwrap_or(1.0), b.low, b.high])
            .filter(|v| v.is_finite() && *v > 0.0);
        let (mut lo, mut hi) =
            values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if reference_line {
            lo = lo.min(1.0);
            hi = hi.max(1.0);
        }
        // Room on the right for the value printed after each bar.
        let (lo, hi) = (lo / 1.3, hi * 2.2);
        let n = panel.workloads.len() as f64;
        // The panel title sits at the top left, out of the way of the 1× label above the plot.
        this.draw(&Text::new(panel.title.clone(), (12, 8), text(18.0)))?;
        let mut chart = ChartBuilder::on(&this)
            .margin(8)
            .margin_top(34)
            .margin_right(20)
            .x_label_area_size(40)
            .y_label_area_size(label_width)
            .build_cartesian_2d((lo..hi).log_scale(), 0.0..n)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(0)
            .y_labels(0)
            // The log axis labels its powers of ten whatever `x_labels` says; the ticks below
            // replace them.
            .x_label_formatter(&|_| String::new())
            .draw()?;
        // Ticks at 1, 2 and 5 times each power of ten: plotters' log axis labels only the powers
        // of ten, which leaves a 0.1×–6× range with two labels.
        for v in ticks(lo, hi) {
            chart.draw_series([PathElement::new([(v, 0.0), (v, n)], BLACK.mix(0.12))])?;
            let (px, py) = chart.backend_coord(&(v, 0.0));
            root.draw(&Text::new(
                tick(&v),
                (px, py + 6),
                text(15.0).pos(Pos::new(HPos::Center, VPos::Top)),
            ))?;
        }
        // The bars start at 1× (speedup) or at the left edge (latency).
        let origin = if reference_line { 1.0 } else { lo };
        let bar_h = 1.0 / (contenders.len().max(1) as f64 + BAND_GAP as f64 / BAR as f64);
        for (wi, (workload, bars)) in panel.workloads.iter().enumerate() {
            // Bands top to bottom in run order: band 0 at the top of the axis.
            let top = n - wi as f64 - bar_h * BAND_GAP as f64 / BAR as f64 / 2.0;
            let (px, py) = chart.backend_coord(&(lo, n - wi as f64 - 0.5));
            root.draw(&Text::new(
                workload.clone(),
                (px - 8, py),
                text(16.0).pos(Pos::new(HPos::Right, VPos::Center)),
            ))?;
            for bar in bars {
                let color = PALETTE[bar.contender % PALETTE.len()];
                let y1 = top - bar.contender as f64 * bar_h;
                let (y0, y1) = (y1 - bar_h * 0.85, y1);
                let yc = (y0 + y1) / 2.0;
                let Some(value) = bar.value else {
                    chart.draw_series([Text::new(
                        bar.text.clone(),
                        (origin * 1.06, yc),
                        text(13.0)
                            .color(&color)
                            .pos(Pos::new(HPos::Left, VPos::Center)),
                    )])?;
                    continue;
                };
                chart.draw_series([Rectangle::new([(origin, y0), (value, y1)], color.filled())])?;
                let whisker = BLACK.mix(0.7).stroke_width(1);
                let cap = bar_h * 0.3;
                chart.draw_series([
                    PathElement::new([(bar.low, yc), (bar.high, yc)], whisker),
                    PathElement::new([(bar.low, yc - cap), (bar.low, yc + cap)], whisker),
                    PathElement::new([(bar.high, yc - cap), (bar.high, yc + cap)], whisker),
                ])?;
                let end = bar.high.max(origin) * 1.06;
                chart.draw_series([Text::new(
                    bar.text.clone(),
                    (end, yc),
                    text(13.0).pos(Pos::new(HPos::Left, VPos::Center)),
                )])?;
            }
        }
        if reference_line {
            chart.draw_series([PathElement::new(
                [(1.0, 0.0), (1.0, n)],
                REFERENCE_COLOR.stroke_width(2),
            )])?;
            let (px, py) = chart.backend_coord(&(1.0, n));
            root.draw(&Text::new(
                REFERENCE_LABEL,
                (px + 4, py - 2),
                text(14.0)
                    .color(&REFERENCE_COLOR)
                    .pos(Pos::new(HPos::Left, VPos::Bottom)),
            ))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(workload: &str, threads: usize, contender: &str, latency: bool, ns: &[u64]) -> Row {
        let times: Vec<Duration> = ns.iter().map(|&n| Duration::from_nanos(n)).collect();
        let seq = 1_000_000.0;
        let speedup_of = |d: Duration| seq / d.as_nanos() as f64;
        Row {
            workload: workload.into(),
            threads,
            contender: contender.into(),
            latency,
            speedup: (!latency).then(|| speedup_of(times[times.len() / 2])),
            speedup_range: (!latency)
                .then(|| (speedup_of(times[times.len() - 1]), speedup_of(times[0]))),
            times: Ok(times),
            vs_rayon: None,
            steals: None,
            sleeps: None,
        }
    }

    /// A run shaped like the real one: a long name, an outlier (6.6×), a very slow contender
    /// (0.12×), a wrong result, and latency workloads that must not appear in the speedup chart.
    fn sample() -> Vec<Row> {
        let mut rows = Vec::new();
        for (workload, times) in [
            ("fib(30)", [4_000_000, 8_000_000, 1_000_000, 1_500_000]),
            (
                "tree-sum 2^23 children-first",
                [2_600_000, 1_300_000, 144_000, 500_000],
            ),
            (
                "64 uneven tasks (grid-search shape)",
                [1_000_000, 510_000, 520_000, 505_000],
            ),
        ] {
            rows.push(row(
                workload,
                1,
                "sequential",
                false,
                &[990_000, 1_000_000, 1_020_000],
            ));
            for threads in [1, 2] {
                for (contender, t) in ["parjob", "rayon", "chili", "static-split"]
                    .iter()
                    .zip(times)
                {
                    rows.push(row(
                        workload,
                        threads,
                        contender,
                        false,
                        &[t, t + t / 20, t + t / 8],
                    ));
                }
            }
        }
        let mut wrong = row("fib(30)", 2, "chili", false, &[1]);
        wrong.times = Err("WRONG RESULT 1 (expected Some(2)); not timed".into());
        wrong.speedup = None;
        rows.push(wrong);
        for threads in [1, 2] {
            for (contender, t) in [("parjob", 130), ("rayon", 8_700), ("chili", 390)] {
                rows.push(row(
                    "join latency, 2 trivial tasks, outside caller (per call)",
                    threads,
                    contender,
                    true,
                    &[t, t + 10, t + 40],
                ));
            }
        }
        rows
    }

    /// The text of every `<text>` element (plotters writes one per label).
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                Some(
                    t.split_once('>')?
                        .1
                        .split_once("</text>")?
                        .0
                        .trim()
                        .to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn speedup_chart_labels_every_workload_and_draws_the_1x_line() {
        let rows = sample();
        let svg = speedup_svg(&rows).expect("there are speedup rows");
        let texts = texts(&svg);
        for workload in [
            "fib(30)",
            "tree-sum 2^23 children-first",
            "64 uneven tasks (grid-search shape)",
        ] {
            // Once per thread-count panel.
            assert_eq!(
                texts.iter().filter(|t| *t == workload).count(),
                2,
                "{workload}"
            );
        }
        for contender in ["parjob", "rayon", "chili", "static-split"] {
            assert!(
                texts.iter().any(|t| t == contender),
                "legend lacks {contender}"
            );
        }
        assert!(texts.iter().any(|t| t == "1 thread") && texts.iter().any(|t| t == "2 threads"));
        // Latency workloads have no speedup and no place here; sequential is the line itself.
        assert!(!svg.contains("join latency"));
        assert!(!texts.iter().any(|t| t == "sequential"));
        // The outlier and the slowest bar are both printed with their value.
        assert!(texts.iter().any(|t| t == "6.61×"), "{texts:?}");
        assert!(texts.iter().any(|t| t == "0.12×"), "{texts:?}");
        // The 1× line: a vertical polyline in the reference colour, once per panel, labelled.
        let reference = format!(
            "stroke=\"#{:02X}{:02X}{:02X}\"",
            REFERENCE_COLOR.0, REFERENCE_COLOR.1, REFERENCE_COLOR.2
        );
        let vertical_reference_lines = svg
            .split("<polyline")
            .skip(1)
            .filter(|e| {
                e.split_once("/>")
                    .map_or(*e, |(e, _)| e)
                    .contains(&reference)
            })
            .filter(|e| {
                let points = e
                    .split("points=\"")
                    .nth(1)
                    .and_then(|p| p.split('"').next());
                let xs: Vec<&str> = points
                    .unwrap_or("")
                    .split_whitespace()
                    .filter_map(|p| p.split(',').next())
                    .collect();
                xs.len() == 2 && xs[0] == xs[1]
            })
            .count();
        assert_eq!(vertical_reference_lines, 2, "one 1× line per panel");
        assert_eq!(texts.iter().filter(|t| *t == REFERENCE_LABEL).count(), 2);
    }

    #[test]
    fn wrong_results_are_noted_not_left_blank() {
        let svg = speedup_svg(&sample()).unwrap();
        assert!(texts(&svg).iter().any(|t| t == "wrong result, not timed"));
    }

    #[test]
    fn ticks_are_1_2_5_per_decade_with_readable_labels() {
        let labels: Vec<String> = ticks(0.04, 7.0)
            .iter()
            .map(|v| format!("{}×", (v * 1000.0).round() / 1000.0))
            .collect();
        assert_eq!(labels, ["0.05×", "0.1×", "0.2×", "0.5×", "1×", "2×", "5×"]);
        let labels: Vec<String> = ticks(80.0, 2_500.0)
            .into_iter()
            .map(duration_tick)
            .collect();
        assert_eq!(labels, ["100 ns", "200 ns", "500 ns", "1 µs", "2 µs"]);
    }

    #[test]
    fn latency_chart_has_only_latency_workloads() {
        let rows = sample();
        let svg = latency_svg(&rows).expect("there are latency rows");
        let texts = texts(&svg);
        assert_eq!(
            texts
                .iter()
                .filter(|t| *t == "join latency, 2 trivial tasks, outside caller (per call)")
                .count(),
            2
        );
        assert!(!texts.iter().any(|t| t == "fib(30)"));
        assert!(texts.iter().any(|t| t == "140 ns"), "{texts:?}");
        assert!(texts.iter().any(|t| t == "8.7 µs"), "{texts:?}");
    }

    #[test]
    fn no_chart_without_rows_of_its_kind() {
        let rows = sample();
        let only_latency: Vec<Row> = rows.iter().filter(|r| r.latency).cloned().collect();
        assert!(speedup_svg(&only_latency).is_none());
        let no_latency: Vec<Row> = rows.iter().filter(|r| !r.latency).cloned().collect();
        assert!(latency_svg(&no_latency).is_none());
    }
}
