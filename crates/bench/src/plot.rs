//! Plots of the suites' reports as SVG (no fonts or native libraries needed): what a person
//! would rather look at than a table.
//!
//! - routing: p99 and p50 time to first token against load, one line per policy, a panel per
//!   fleet;
//! - overhead: added p50 and p99 latency against concurrency, one line per proxy;
//! - load: the distribution of time to first token and end-to-end latency, and requests and
//!   median time to first token over the run.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn err(e: impl std::fmt::Display) -> String {
    format!("plot: {e}")
}

/// A line series per name, on a log-scale y axis.
fn lines(
    area: &Area,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    x_range: std::ops::Range<f64>,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), String> {
    let ys = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .filter(|y| y.is_finite() && *y > 0.0);
    let (lo, hi) = ys.fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (lo, hi) = if lo <= hi {
        (lo / 1.5, hi * 1.5)
    } else {
        (1e-4, 1.0)
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .y_label_formatter(&|v| short_number(*v))
        .x_label_formatter(&|v| short_number(*v))
        .light_line_style(WHITE)
        .draw()
        .map_err(err)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = pts
            .iter()
            .copied()
            .filter(|p| p.1.is_finite() && p.1 > 0.0)
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        if pts.len() <= 40 {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// A tick label without float noise: `0.3`, `12`, `0.005`, `1.5k`.
fn short_number(v: f64) -> String {
    let a = v.abs();
    if a >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// `mvllm bench routing`: time to first token against load per policy, per fleet.
pub fn routing(report: &Value, path: &Path) -> Result<(), String> {
    let fleets = report["fleets"].as_array().cloned().unwrap_or_default();
    let root = SVGBackend::new(path, (560 * fleets.len().max(1) as u32, 820)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let columns = root.split_evenly((2, fleets.len().max(1)));
    for (i, fleet) in fleets.iter().enumerate() {
        let name = fleet["fleet"].as_str().unwrap_or("fleet");
        let runs = fleet["runs"].as_array().cloned().unwrap_or_default();
        let mut policies: Vec<String> = Vec::new();
        for r in &runs {
            let p = r["policy"].as_str().unwrap_or("").to_string();
            if !policies.contains(&p) {
                policies.push(p);
            }
        }
        for (row, (key, label)) in [("ttft_p99", "p99"), ("ttft_p50", "p50")]
            .iter()
            .enumerate()
        {
            let series: Vec<(String, Vec<(f64, f64)>)> = policies
                .iter()
                .map(|p| {
                    let pts = runs
                        .iter()
                        .filter(|r| r["policy"] == p.as_str())
                        .filter_map(|r| Some((r["load"].as_f64()?, r[*key].as_f64()?)))
                        .collect();
                    (p.clone(), pts)
                })
                .collect();
            lines(
                &columns[row * fleets.len() + i],
                &format!("{name} fleet: {label} time to first token"),
                "load (share of measured capacity)",
                "seconds (log)",
                0.4..1.1,
                &series,
            )?;
        }
    }
    root.present().map_err(err)
}

/// `mvllm bench overhead`: added latency against concurrency per proxy (requests not streamed).
pub fn overhead(report: &Value, path: &Path) -> Result<(), String> {
    let rows: Vec<&Value> = report["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["kind"] == "non-streaming")
        .collect();
    let mut proxies: Vec<String> = Vec::new();
    for r in &rows {
        let p = r["proxy"].as_str().unwrap_or("").to_string();
        if !proxies.contains(&p) {
            proxies.push(p);
        }
    }
    let root = SVGBackend::new(path, (1120, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((1, 2));
    for (panel, key, label) in [(0, "added_p50_us", "p50"), (1, "added_p99_us", "p99")] {
        let series: Vec<(String, Vec<(f64, f64)>)> = proxies
            .iter()
            .map(|p| {
                let pts = rows
                    .iter()
                    .filter(|r| r["proxy"] == p.as_str())
                    .filter_map(|r| Some(((r["concurrency"].as_f64()?).log2(), r[key].as_f64()?)))
                    .collect();
                (p.clone(), pts)
            })
            .collect();
        lines(
            &panels[panel],
            &format!("{label} latency added over direct"),
            "log2(concurrency)",
            "microseconds (log)",
            -0.5..8.5,
            &series,
        )?;
    }
    root.present().map_err(err)
}

/// `mvllm bench load`: latency distributions and the run over time.
pub fn load(report: &Value, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (1120, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((1, 2));
    let cdf = |key: &str| -> Vec<(f64, f64)> {
        let mut v: Vec<f64> = report[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect();
        v.sort_by(f64::total_cmp);
        let n = v.len().max(1) as f64;
        // Seconds on the y axis (log), share of requests on the x axis.
        v.iter()
            .enumerate()
            .map(|(i, &x)| ((i + 1) as f64 / n, x))
            .collect()
    };
    lines(
        &panels[0],
        "latency by percentile",
        "share of requests",
        "seconds (log)",
        0.0..1.0,
        &[
            ("time to first token".into(), cdf("ttft_samples_s")),
            ("end to end".into(), cdf("e2e_samples_s")),
        ],
    )?;
    let timeline: Vec<&Value> = report["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let ttft: Vec<(f64, f64)> = timeline
        .iter()
        .filter_map(|t| Some((t["second"].as_f64()?, t["ttft_p50_s"].as_f64()?)))
        .collect();
    let reqs: Vec<(f64, f64)> = timeline
        .iter()
        .filter_map(|t| Some((t["second"].as_f64()?, t["requests"].as_f64()?)))
        .collect();
    let end = timeline.len().max(1) as f64;
    lines(
        &panels[1],
        "over the run: requests sent per second, median TTFT (s)",
        "second",
        "log scale",
        0.0..end,
        &[("requests/s".into(), reqs), ("TTFT p50 (s)".into(), ttft)],
    )?;
    root.present().map_err(err)
}
