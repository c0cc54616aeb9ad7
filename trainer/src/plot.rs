//! `training_loss.png`: the raw loss curve and an exponentially smoothed one against the step, as
//! LLaMA-Factory's `plot_loss` draws it, rendered in Rust with `plotters` (bitmap backend).
//!
//! Text needs a TrueType font; none is compiled in. The font is read from `LF_PLOT_FONT` or the
//! usual system locations (DejaVu Sans, Liberation Sans, Noto Sans). Without one the plot is still
//! drawn (axes, ticks, both curves) and a warning says labels were left out.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::error::TrainerError;

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
];

/// Registers a font as `sans-serif` once; returns whether one is available.
fn font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let env = std::env::var("LF_PLOT_FONT").ok();
        let candidates = env
            .iter()
            .map(String::as_str)
            .chain(FONT_CANDIDATES.iter().copied());
        for path in candidates {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// LLaMA-Factory's smoothing: an exponential moving average whose weight grows with the number
/// of points (`1.8 · (sigmoid(0.05·n) − 0.5)`, TensorBoard-like).
pub fn smooth(values: &[f64]) -> Vec<f64> {
    let Some(&first) = values.first() else {
        return Vec::new();
    };
    let weight = 1.8 * (1.0 / (1.0 + (-0.05 * values.len() as f64).exp()) - 0.5);
    let mut last = first;
    values
        .iter()
        .map(|&v| {
            last = last * weight + (1.0 - weight) * v;
            last
        })
        .collect()
}

/// Draws `points` (step, loss) to `path`. Returns whether text labels could be drawn.
pub fn plot_loss(path: &Path, title: &str, points: &[(u64, f64)]) -> Result<bool, TrainerError> {
    if points.is_empty() {
        return Err(TrainerError::runtime("no loss was logged, so there is nothing to plot (is logging_steps larger than the run?)"));
    }
    let with_text = font_available();
    let draw_err =
        |e: String| TrainerError::runtime(format!("cannot draw {}: {e}", path.display()));
    let xs: Vec<f64> = points.iter().map(|p| p.0 as f64).collect();
    let ys: Vec<f64> = points.iter().map(|p| p.1).collect();
    let smoothed = smooth(&ys);
    let (x0, x1) = (xs[0], xs[xs.len() - 1].max(xs[0] + 1.0));
    let (lo, hi) = ys
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| {
            (a.min(y), b.max(y))
        });
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let root = BitMapBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70);
    if with_text {
        builder.caption(title, ("sans-serif", 22));
    }
    let mut chart = builder
        .build_cartesian_2d(x0..x1, (lo - pad)..(hi + pad))
        .map_err(|e| draw_err(e.to_string()))?;
    let mut mesh = chart.configure_mesh();
    if with_text {
        mesh.x_desc("step")
            .y_desc("loss")
            .label_style(("sans-serif", 15));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|e| draw_err(e.to_string()))?;
    let raw = BLUE.mix(0.4);
    let series = chart
        .draw_series(LineSeries::new(
            xs.iter().copied().zip(ys.iter().copied()),
            raw.stroke_width(1),
        ))
        .map_err(|e| draw_err(e.to_string()))?;
    if with_text {
        series
            .label("original")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], raw));
    }
    let series = chart
        .draw_series(LineSeries::new(
            xs.iter().copied().zip(smoothed.iter().copied()),
            BLUE.stroke_width(2),
        ))
        .map_err(|e| draw_err(e.to_string()))?;
    if with_text {
        series
            .label("smoothed")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(|e| draw_err(e.to_string()))?;
    } else {
        tracing::warn!(
            "no TrueType font found (set LF_PLOT_FONT): {} has no text labels",
            path.display()
        );
    }
    root.present().map_err(|e| draw_err(e.to_string()))?;
    Ok(with_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_follows_llama_factory() {
        let s = smooth(&[1.0, 0.0]);
        let w = 1.8 * (1.0 / (1.0 + (-0.1f64).exp()) - 0.5);
        assert_eq!(s[0], 1.0);
        assert!((s[1] - w).abs() < 1e-12);
    }

    #[test]
    fn draws_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let pts: Vec<(u64, f64)> = (1..=50)
            .map(|s| (s, 3.0 / (s as f64).sqrt() + 0.1 * ((s % 3) as f64)))
            .collect();
        let text = plot_loss(&path, "training loss", &pts).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(
            bytes.len() > 5000,
            "a real plot, not an empty image: {} bytes",
            bytes.len()
        );
        // This machine has DejaVu; the check guards against silently losing labels.
        assert!(text || !Path::new(FONT_CANDIDATES[0]).exists());
    }
}
