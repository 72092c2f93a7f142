//! The run as a picture: one SVG with four panels over time — requests/s, database
//! queries/s, invalidations received/s and stale reads (so far) — one line per instance,
//! and every fault marked across all four.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::report::Summary;
use crate::timeline::{Tally, Timeline};

/// The panels: title, and the series of one instance.
const PANELS: [(&str, Series); 4] = [
    ("requests/s", Series::Rate(|t| t.requests)),
    ("database queries/s", Series::Rate(|t| t.db_queries)),
    (
        "invalidations received/s",
        Series::Rate(|t| t.invalidations_received),
    ),
    ("stale reads (so far)", Series::Total(|t| t.stale_reads)),
];

/// How a panel reads a [`Tally`] field off the timeline.
#[derive(Clone, Copy)]
enum Series {
    /// Per second between samples.
    Rate(fn(&Tally) -> u64),
    /// The running total.
    Total(fn(&Tally) -> u64),
}

impl Series {
    fn points(self, timeline: &Timeline, instance: usize) -> Vec<(f64, f64)> {
        match self {
            Series::Rate(field) => timeline.rates(instance, field),
            Series::Total(field) => timeline.values(instance, field),
        }
    }
}

/// Where the plot goes without `--plot`: `nearcache-demo/scale_out.svg` in the target
/// directory this program was built in (or the system's temp directory).
pub(crate) fn default_path() -> PathBuf {
    // The example runs from <target>/<profile>/examples/scale_out.
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_owned))
        .unwrap_or_else(std::env::temp_dir);
    target.join("nearcache-demo").join("scale_out.svg")
}

/// Writes the plot of `summary` to `path` (its directory is created if needed).
///
/// # Errors
///
/// A message when the directory or the file cannot be written.
pub(crate) fn write_svg(path: &Path, summary: &Summary) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let svg = render_svg(summary)?;
    std::fs::write(path, svg).map_err(|e| e.to_string())
}

/// The plot of `summary` as SVG text.
///
/// # Errors
///
/// A message when plotters fails to draw.
pub(crate) fn render_svg(summary: &Summary) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 1100)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (title, panels) = root.split_vertically(50);
        title
            .titled(
                &format!(
                    "nearcache scale-out demo: {} instances, {:.1}s",
                    summary.instances.len(),
                    summary.elapsed.as_secs_f64()
                ),
                ("sans-serif", 22),
            )
            .map_err(|e| e.to_string())?;
        for (area, (name, series)) in panels.split_evenly((PANELS.len(), 1)).iter().zip(PANELS) {
            panel(area, summary, name, series).map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn panel(
    area: &Area<'_>,
    summary: &Summary,
    name: &str,
    series: Series,
) -> Result<(), Box<dyn std::error::Error + 'static>> {
    let timeline = &summary.timeline;
    let lines: Vec<Vec<(f64, f64)>> = (0..timeline.instances())
        .map(|i| series.points(timeline, i))
        .collect();
    let x_max = timeline
        .end()
        .unwrap_or(0.0)
        .max(summary.elapsed.as_secs_f64())
        .max(0.1);
    let y_max = lines
        .iter()
        .flatten()
        .map(|&(_, y)| y)
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(name, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    let whole = y_max > 10.0;
    let y_label = move |y: &f64| {
        if whole {
            format!("{y:.0}")
        } else {
            format!("{y:.1}")
        }
    };
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_label_formatter(&y_label)
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for fault in &summary.faults {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(fault.at, 0.0), (fault.at, y_max)],
                RED.mix(0.6).stroke_width(2),
            )))?
            .label(format!("{:.1}s {}", fault.at, fault.label()))
            .legend(|(x, y)| PathElement::new(vec![(x, y - 6), (x, y + 6)], RED.stroke_width(2)));
    }
    for (index, points) in lines.into_iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(format!("#{index}"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::faults::{FaultKind, FaultRecord};

    fn summary() -> Summary {
        let mut timeline = Timeline::default();
        for step in 0..=20_u32 {
            let t = f64::from(step) * 0.25;
            let tally = |scale: u64| Tally {
                requests: u64::from(step) * 1_000 * scale,
                db_queries: u64::from(step) * 10,
                invalidations_received: u64::from(step) * 5,
                ..Tally::default()
            };
            timeline.push(t, vec![tally(3), tally(2)]);
        }
        Summary {
            title: "demo".into(),
            bound: Duration::from_secs(1),
            elapsed: Duration::from_secs(5),
            instances: vec![Default::default(), Default::default()],
            timeline,
            faults: vec![FaultRecord {
                at: 2.0,
                kind: FaultKind::KillSubscribers,
                outcome: "2 subscriber connections killed".into(),
            }],
        }
    }

    /// The file is SVG an XML parser accepts, with the four panels, a line per instance in
    /// each, and the fault marked.
    #[test]
    fn the_plot_is_svg_with_every_series_and_the_faults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("run.svg");
        write_svg(&path, &summary()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let doc = roxmltree::Document::parse(&text).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let texts: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .collect();
        for expected in [
            "requests/s",
            "database queries/s",
            "invalidations received/s",
            "stale reads (so far)",
            "#0",
            "#1",
            "2.0s CLIENT KILL TYPE pubsub",
            "seconds",
        ] {
            assert!(
                texts.iter().any(|t| t.contains(expected)),
                "no text {expected:?} in {texts:?}"
            );
        }
        // 4 panels × 2 instances of data lines, each with a point per sample (or interval).
        let long_lines = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .filter(|n| {
                n.attribute("points")
                    .is_some_and(|p| p.split(' ').count() >= 20)
            })
            .count();
        assert_eq!(long_lines, 8, "{text}");
    }

    #[test]
    fn the_default_path_is_under_the_target_directory() {
        let path = default_path();
        assert!(path.ends_with("nearcache-demo/scale_out.svg"), "{path:?}");
    }
}
