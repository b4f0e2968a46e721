//! The PNG plot: each analyzer's cumulative share of log messages over time, logdist next to
//! nats-server's weighted mapping, with the target shares as dashed lines.

use std::path::Path;

use plotters::prelude::*;

/// One panel: a title and (seconds, messages per analyzer) samples.
pub struct Panel<'a> {
    pub title: String,
    pub series: &'a [(f64, Vec<u64>)],
}

const TARGETS: [f64; 3] = [50.0, 30.0, 20.0];
const COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
];

/// Draws the panels side by side into `path` (PNG).
pub fn draw(path: &Path, panels: &[Panel<'_>]) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (area, panel) in areas.iter().zip(panels) {
        // Skip the first samples, where a handful of packets make any share meaningless.
        let points: Vec<(f64, Vec<f64>)> = panel
            .series
            .iter()
            .filter_map(|(t, counts)| {
                let total: u64 = counts.iter().sum();
                (total >= 1000).then(|| {
                    (
                        *t,
                        counts
                            .iter()
                            .map(|c| 100.0 * *c as f64 / total as f64)
                            .collect(),
                    )
                })
            })
            .collect();
        let t_max = points.last().map_or(1.0, |p| p.0).max(1.0);
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..t_max, 10.0..60.0)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("cumulative share of messages (%)")
            .draw()?;
        for i in 0..3 {
            let color = COLORS[i];
            chart
                .draw_series(LineSeries::new(
                    points
                        .iter()
                        .filter_map(|(t, s)| s.get(i).map(|v| (*t, *v))),
                    color.stroke_width(2),
                ))?
                .label(format!("analyzer {} (target {}%)", i + 1, TARGETS[i]))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(DashedLineSeries::new(
                [(0.0, TARGETS[i]), (t_max, TARGETS[i])],
                6,
                4,
                color.stroke_width(1),
            ))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
