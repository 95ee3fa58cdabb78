//! The training-curve picture: loss (train and validation) and, for
//! classifiers, accuracy per epoch, drawn as an SVG with plotters and
//! written atomically beside the checkpoint.

use super::fit::EpochStats;
use plotters::prelude::*;
use std::io::Write;
use std::path::Path;

/// Draws `history` into an SVG file at `path` (atomically: a temporary
/// file in the same directory, fsync, rename).
pub fn write_svg(path: &Path, title: &str, history: &[EpochStats]) -> Result<(), String> {
    let svg = render(title, history)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("curve.svg")
    ));
    let io = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(svg.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The SVG text of the curve.
pub fn render(title: &str, history: &[EpochStats]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 420)).into_drawing_area();
        draw(&root, title, history).map_err(|e| format!("cannot draw the curve: {e}"))?;
        root.present()
            .map_err(|e| format!("cannot draw the curve: {e}"))?;
    }
    Ok(svg)
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(
    root: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    title: &str,
    h: &[EpochStats],
) -> DrawResult {
    root.fill(&WHITE)?;
    let accuracy = h.iter().any(|e| e.train_accuracy.is_some());
    let panels = if accuracy {
        root.split_horizontally(450)
    } else {
        (root.clone(), root.clone())
    };
    let epochs = h.len().max(1) as f64;
    let losses: Vec<f64> = h
        .iter()
        .flat_map(|e| std::iter::once(e.train_loss).chain(e.val_loss))
        .filter(|v| v.is_finite())
        .collect();
    let top = losses.iter().cloned().fold(0.0f64, f64::max).max(1e-6) * 1.05;
    let mut chart = ChartBuilder::on(&panels.0)
        .caption(format!("{title}: loss"), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(1f64..epochs.max(2.0), 0f64..top)?;
    chart.configure_mesh().x_desc("epoch").draw()?;
    let series = |f: &dyn Fn(&EpochStats) -> Option<f64>| -> Vec<(f64, f64)> {
        h.iter()
            .filter_map(|e| f(e).map(|v| (e.epoch as f64, v)))
            .collect()
    };
    chart
        .draw_series(LineSeries::new(series(&|e| Some(e.train_loss)), &BLUE))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
    chart
        .draw_series(LineSeries::new(series(&|e| e.val_loss), &RED))?
        .label("validation")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
    chart.configure_series_labels().border_style(BLACK).draw()?;
    if accuracy {
        let mut chart = ChartBuilder::on(&panels.1)
            .caption(format!("{title}: accuracy"), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(1f64..epochs.max(2.0), 0f64..1f64)?;
        chart.configure_mesh().x_desc("epoch").draw()?;
        chart
            .draw_series(LineSeries::new(series(&|e| e.train_accuracy), &BLUE))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
        chart
            .draw_series(LineSeries::new(series(&|e| e.val_accuracy), &RED))?
            .label("validation")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
        chart.configure_series_labels().border_style(BLACK).draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_has_both_panels_for_a_classifier() {
        let h: Vec<EpochStats> = (1..=3)
            .map(|e| EpochStats {
                epoch: e,
                lr: 0.1,
                train_loss: 1.0 / e as f64,
                train_accuracy: Some(0.5 + 0.1 * e as f64),
                val_loss: Some(1.2 / e as f64),
                val_accuracy: Some(0.4 + 0.1 * e as f64),
                samples_per_sec: 10.0,
            })
            .collect();
        let svg = render("m", &h).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(
            svg.contains("m: loss") && svg.contains("m: accuracy"),
            "{svg}"
        );
        let dir = std::env::temp_dir().join(format!("netc-curve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.svg");
        write_svg(&path, "m", &h).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), svg);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
