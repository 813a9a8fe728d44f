//! `latency.svg`: p50, p95 and p99 of every strategy as grouped bars (plotters, SVG
//! backend). Drawing only: it reads the results, never measures.

use std::path::Path;

use plotters::prelude::*;

use crate::report::{Results, StrategyResult};

/// A bar series: its name, colour and the value it shows of a strategy.
type Series = (&'static str, RGBColor, fn(&StrategyResult) -> f64);

/// Draws the chart into `path`.
pub fn latency_svg(results: &Results, path: &Path) -> Result<(), String> {
    let rows = &results.strategies;
    let top = rows.iter().map(|r| r.p99_ms).fold(1.0_f64, f64::max) * 1.15;
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let groups = rows.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "POST /buy latency per strategy ({} buyers, {} requests, {} units)",
                rows.first().map_or(0, |r| r.buyers),
                rows.first().map_or(0, |r| r.requests),
                rows.first().map_or(0, |r| r.stock)
            ),
            ("sans-serif", 18),
        )
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..groups, 0.0..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(rows.len().max(1))
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            rows.get(i).map(|r| r.strategy.clone()).unwrap_or_default()
        })
        .y_desc("milliseconds")
        .draw()
        .map_err(|e| e.to_string())?;
    let series: [Series; 3] = [
        ("p50", RGBColor(90, 160, 220), |r| r.p50_ms),
        ("p95", RGBColor(240, 170, 60), |r| r.p95_ms),
        ("p99", RGBColor(210, 80, 70), |r| r.p99_ms),
    ];
    for (k, (name, color, value)) in series.into_iter().enumerate() {
        let bars = rows.iter().enumerate().map(|(i, r)| {
            let left = i as f64 + 0.15 + k as f64 * 0.24;
            Rectangle::new([(left, 0.0), (left + 0.22, value(r))], color.filled())
        });
        chart
            .draw_series(bars)
            .map_err(|e| e.to_string())?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
