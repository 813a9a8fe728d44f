//! The bench's charts (plotters, SVG backend): `latency.svg`, p50, p95 and p99 of every
//! strategy as grouped bars; `timeline.svg`, units granted and in orders over time.
//! Drawing only: it reads the results, never measures.

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

/// Draws `timeline.svg`: for every strategy, the units granted (202s so far, thin) and
/// the units in orders (thick) over time, against the stock.
pub fn timeline_svg(results: &Results, path: &Path) -> Result<(), String> {
    let rows = &results.strategies;
    let stock = rows.first().map_or(1, |r| r.stock).max(1) as f64;
    let top_units = rows
        .iter()
        .flat_map(|r| {
            r.timeline
                .iter()
                .map(|p| (p.accepted as f64).max(p.orders as f64))
        })
        .fold(stock, f64::max)
        * 1.1;
    let end = rows
        .iter()
        .flat_map(|r| r.timeline.iter().map(|p| p.secs))
        .fold(1.0_f64, f64::max);
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Units granted (thin) and in orders (thick) over time; stock {stock}"),
            ("sans-serif", 18),
        )
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..end, 0.0..top_units)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first buy")
        .y_desc("units")
        .draw()
        .map_err(|e| e.to_string())?;
    let colours = [
        RGBColor(90, 160, 220),
        RGBColor(240, 170, 60),
        RGBColor(210, 80, 70),
        RGBColor(60, 160, 90),
    ];
    for (i, r) in rows.iter().enumerate() {
        let colour = colours[i % colours.len()];
        chart
            .draw_series(LineSeries::new(
                r.timeline.iter().map(|p| (p.secs, p.accepted as f64)),
                colour.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(
                r.timeline.iter().map(|p| (p.secs, p.orders as f64)),
                colour.stroke_width(3),
            ))
            .map_err(|e| e.to_string())?
            .label(r.strategy.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(3)));
    }
    chart
        .draw_series(LineSeries::new(
            [(0.0, stock), (end, stock)],
            BLACK.stroke_width(1),
        ))
        .map_err(|e| e.to_string())?;
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
