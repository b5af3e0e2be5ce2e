//! Line charts drawn with plotters, to SVG (for the HTML page and files) and PNG.
//!
//! Text is measured (and in PNGs rendered) with an embedded DejaVu Sans: no fontconfig is
//! needed at build or run time. SVGs carry their text for the browser to render.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::ReportError;

/// DejaVu Sans (licence in `assets/DejaVuSans-LICENSE`).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FONT_FAMILY: &str = "sans-serif";

/// Chart size in pixels.
pub const SIZE: (u32, u32) = (900, 480);

/// A line chart: title, axis labels (with units), and named series of points.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// File name stem and HTML id (`rate_vs_memory`).
    pub id: String,
    /// Title.
    pub title: String,
    /// X axis label, unit included.
    pub x_label: String,
    /// Y axis label, unit included.
    pub y_label: String,
    /// Series: a name (for the legend) and points, drawn in x order.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    /// Reference lines across the chart (an SLO bound, a rate found).
    pub marks: Vec<Mark>,
}

/// A dashed reference line with its label.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    /// Shown beside the line.
    pub label: String,
    /// Horizontal (at a y value) or vertical (at an x value).
    pub horizontal: bool,
    /// Where.
    pub at: f64,
}

impl Chart {
    /// Whether there is anything to draw.
    pub fn is_empty(&self) -> bool {
        self.series.iter().all(|(_, p)| p.is_empty())
    }

    fn bounds(&self) -> ((f64, f64), (f64, f64)) {
        let points = self
            .series
            .iter()
            .flat_map(|(_, p)| p.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, 0.0f64, f64::MIN);
        for &(x, y) in points {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        // Marks stay in view.
        for m in self.marks.iter().filter(|m| m.at.is_finite()) {
            if m.horizontal {
                y1 = y1.max(m.at);
            } else if x0 <= x1 {
                x0 = x0.min(m.at);
                x1 = x1.max(m.at);
            }
        }
        if x0 > x1 {
            return ((0.0, 1.0), (0.0, 1.0));
        }
        let pad = |lo: f64, hi: f64| {
            if hi - lo < 1e-9 {
                (
                    lo - 0.5_f64.max(lo.abs() * 0.1),
                    hi + 0.5_f64.max(hi.abs() * 0.1),
                )
            } else {
                (lo, hi + (hi - lo) * 0.08)
            }
        };
        (pad(x0, x1), pad(y0, y1))
    }
}

fn ensure_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is embedded and valid; if registering ever failed, text would be missing
        // from PNGs, which the report test checks.
        let _ = register_font(FONT_FAMILY, FontStyle::Normal, FONT);
    });
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, chart: &Chart) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let ((x0, x1), (y0, y1)) = chart.bounds();
    let mut c = ChartBuilder::on(root)
        .caption(&chart.title, (FONT_FAMILY, 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    c.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .label_style((FONT_FAMILY, 14))
        .axis_desc_style((FONT_FAMILY, 15))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, points)) in chart.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let mut sorted: Vec<(f64, f64)> = points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        c.draw_series(LineSeries::new(sorted.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        c.draw_series(sorted.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| e.to_string())?;
    }
    for (i, mark) in chart.marks.iter().enumerate() {
        let color = Palette99::pick(chart.series.len() + i).to_rgba();
        let line = if mark.horizontal {
            vec![(x0, mark.at), (x1, mark.at)]
        } else {
            vec![(mark.at, y0), (mark.at, y1)]
        };
        c.draw_series(DashedLineSeries::new(line, 8, 5, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(mark.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    if chart.series.len() > 1
        || !chart.marks.is_empty()
        || chart.series.first().is_some_and(|(n, _)| !n.is_empty())
    {
        c.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT_FAMILY, 14))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// The chart as an SVG document.
pub fn svg(chart: &Chart) -> Result<String, ReportError> {
    // Layout measures text with the font even when the browser draws it.
    ensure_font();
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        draw(&root, chart).map_err(|e| draw_error(chart, &e))?;
    }
    Ok(out)
}

/// The chart as a PNG file.
pub fn png(chart: &Chart, path: &Path) -> Result<(), ReportError> {
    ensure_font();
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    draw(&root, chart).map_err(|e| draw_error(chart, &e))
}

fn draw_error(chart: &Chart, e: &dyn std::fmt::Display) -> ReportError {
    ReportError::Draw {
        chart: chart.id.to_string(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart {
        Chart {
            id: "t".into(),
            title: "Latency against rate".into(),
            x_label: "achieved rate (req/s)".into(),
            y_label: "latency (ms)".into(),
            series: vec![
                ("p99".into(), vec![(100.0, 2.0), (1000.0, 5.0)]),
                ("p50".into(), vec![(100.0, 1.0)]),
            ],
            marks: Vec::new(),
        }
    }

    #[test]
    fn svg_has_title_axes_and_legend() {
        let s = svg(&chart()).expect("draws");
        for needle in [
            "<svg",
            "Latency against rate",
            "achieved rate (req/s)",
            "latency (ms)",
            "p99",
            "p50",
        ] {
            assert!(s.contains(needle), "{needle} missing");
        }
    }

    #[test]
    fn png_is_written() {
        let path = std::env::temp_dir().join(format!("meshload-plot-{}.png", std::process::id()));
        png(&chart(), &path).expect("draws");
        let bytes = std::fs::read(&path).expect("written");
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 5_000,
            "{} bytes",
            bytes.len()
        );
        std::fs::remove_file(&path).expect("cleanup");
    }
}
