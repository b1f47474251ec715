//! `bench --plot`: the latency distributions as cumulative curves on a
//! logarithmic time axis, one per measurement, in an SVG file.

use plotters::prelude::*;

/// Points kept per curve: plenty for a smooth line, small for the file.
const POINTS: usize = 400;

/// Draws each `(label, sorted latencies in us)` as a cumulative
/// distribution: the SVG document, in memory. The caller writes it where it
/// goes once the report is out, so that a destination that blocks (a named
/// pipe nobody reads yet) or fails never holds back or loses the report.
pub(crate) fn latency_cdf(
    title: &str,
    series: &[(String, &Vec<f64>)],
) -> Result<String, Box<dyn std::error::Error>> {
    let mut svg = String::new();
    draw(&mut svg, title, series)?;
    Ok(svg)
}

fn draw(
    svg: &mut String,
    title: &str,
    series: &[(String, &Vec<f64>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let all = series.iter().flat_map(|(_, s)| s.iter().copied());
    let lo = all.clone().fold(f64::INFINITY, f64::min).max(0.1);
    let hi = all.fold(0.0_f64, f64::max).max(lo * 10.0);
    let root = SVGBackend::with_string(svg, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((lo * 0.9..hi * 1.1).log_scale(), 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (microseconds, log scale)")
        .y_desc("requests at or below (%)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    let colors = [RED, BLUE, RGBColor(230, 120, 0), RGBColor(0, 150, 0)];
    for (i, (label, samples)) in series.iter().enumerate() {
        if samples.is_empty() {
            continue;
        }
        let color = colors[i % colors.len()];
        let n = samples.len();
        let step = (n / POINTS).max(1);
        let points = (0..n)
            .step_by(step)
            .chain(std::iter::once(n - 1))
            .map(|k| (samples[k].max(lo), (k + 1) as f64 * 100.0 / n as f64));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
