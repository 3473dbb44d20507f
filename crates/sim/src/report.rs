//! The report folder: SVG plots drawn with `plotters`' SVG backend (text is written as SVG
//! `<text>`, so no system fonts are needed) and an `index.html` that shows them with the summary.
//!
//! Files: `utilization.svg` (allocated share of capacity over time, per policy), `jct_cdf.svg`
//! (JCT CDF per policy, log time axis), `queue_shares-<policy>.svg` (stacked queue shares over
//! time, with the entitlements in the page's table), `fill.svg` (fill experiment: allocation as
//! demand arrives, with the FGD paper's published points for the pod list), `jobs-<policy>.csv` (every job's arrival, start, end, wait, JCT,
//! preemptions), `summary.json` (every figure), `index.html`.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::compare::WhatIfQueue;
use crate::error::{Result, SimError};
use crate::metrics::RunResult;
use crate::seeds::{list_of, published, PaperPoint, SeedStudy};
use crate::workload::Workload;

const W: u32 = 900;
const H: u32 = 480;

fn plot_err(file: &Path, e: impl std::fmt::Display) -> SimError {
    SimError::io(file, std::io::Error::other(e.to_string()))
}

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 20] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
        RGBColor(174, 199, 232),
        RGBColor(255, 187, 120),
        RGBColor(152, 223, 138),
        RGBColor(255, 152, 150),
        RGBColor(197, 176, 213),
        RGBColor(196, 156, 148),
        RGBColor(247, 182, 210),
        RGBColor(199, 199, 199),
        RGBColor(219, 219, 141),
        RGBColor(158, 218, 229),
    ];
    C[i % C.len()]
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Draw one SVG file: a white page of `size`, `draw` on it, then written out; a drawing error
/// names the file.
fn render(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> DrawResult,
) -> Result<()> {
    let root = SVGBackend::new(path, size).into_drawing_area();
    let run = || -> DrawResult {
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
        Ok(())
    };
    run().map_err(|e| plot_err(path, e))
}

/// The legend mark of a line series in `c`.
fn line_mark(c: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
}

/// The series legend, boxed, in the lower right corner.
fn legend<'a, 'b: 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, CT>,
) -> DrawResult {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    Ok(())
}

fn utilization(path: &Path, runs: &[RunResult]) -> Result<()> {
    let xmax = runs
        .iter()
        .filter_map(|r| r.series.hours.last().copied())
        .fold(1e-9, f64::max);
    render(path, (W, H), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("GPU allocation over time", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..xmax, 0f64..100f64)?;
        chart
            .configure_mesh()
            .x_desc("hours since the first arrival")
            .y_desc("allocated % of GPUs")
            .draw()?;
        for (i, r) in runs.iter().enumerate() {
            let c = color(i);
            chart
                .draw_series(LineSeries::new(
                    r.series
                        .hours
                        .iter()
                        .zip(&r.series.allocation)
                        .map(|(x, y)| (*x, y * 100.0)),
                    c.stroke_width(2),
                ))?
                .label(format!("{} (mean {:.1}%)", r.policy, r.utilization * 100.0))
                .legend(line_mark(c));
        }
        legend(&mut chart)
    })
}

fn jct_cdf(path: &Path, runs: &[RunResult]) -> Result<()> {
    let xmax = runs
        .iter()
        .flat_map(|r| r.jct_samples.iter().copied())
        .fold(10.0, f64::max);
    render(path, (W, H), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Job completion time (CDF)", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d((1f64..xmax * 1.1).log_scale(), 0f64..1f64)?;
        chart
            .configure_mesh()
            .x_desc("JCT, seconds (log scale)")
            .y_desc("fraction of completed jobs")
            .draw()?;
        for (i, r) in runs.iter().enumerate() {
            let mut v: Vec<f64> = r.jct_samples.iter().map(|x| x.max(1.0)).collect();
            v.sort_by(f64::total_cmp);
            let n = v.len().max(1) as f64;
            // At most ~1000 points per curve.
            let step = (v.len() / 1000).max(1);
            let pts: Vec<(f64, f64)> = v
                .iter()
                .enumerate()
                .filter(|(k, _)| k % step == 0 || *k + 1 == v.len())
                .map(|(k, x)| (*x, (k + 1) as f64 / n))
                .collect();
            let c = color(i);
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
                .label(format!("{} (mean {:.0}s)", r.policy, r.jct.mean))
                .legend(line_mark(c));
        }
        legend(&mut chart)
    })
}

fn queue_shares(path: &Path, r: &RunResult) -> Result<()> {
    let xmax = r.series.hours.last().copied().unwrap_or(0.0).max(1e-9);
    let width = W + 300;
    render(path, (width, H + 40), |root| {
        // The chart on the left, the legend (with entitlements) beside it, never over the data.
        let (left, right) = root.split_horizontally(W);
        let mut chart = ChartBuilder::on(&left)
            .caption(
                format!("Queue shares over time — {}", r.policy),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..xmax, 0f64..100f64)?;
        chart
            .configure_mesh()
            .x_desc("hours since the first arrival")
            .y_desc("% of GPUs (stacked by queue)")
            .draw()?;
        // Stacked: draw the cumulative sums from the top queue down so each area shows.
        let n = r.series.hours.len();
        let mut cum = vec![vec![0f64; n]; r.queues.len() + 1];
        for (k, s) in r.series.queue_share.iter().enumerate() {
            let below = cum[k].clone();
            for (t, c) in cum[k + 1].iter_mut().enumerate() {
                *c = below[t] + s.get(t).copied().unwrap_or(0.0) * 100.0;
            }
        }
        for k in (0..r.queues.len()).rev() {
            let c = color(k);
            let pts: Vec<(f64, f64)> = r
                .series
                .hours
                .iter()
                .copied()
                .zip(cum[k + 1].iter().copied())
                .collect();
            chart.draw_series(AreaSeries::new(pts, 0.0, c.mix(0.85)).border_style(c))?;
        }
        right.draw(&Text::new(
            "queue: entitled / got (mean)",
            (8, 40),
            ("sans-serif", 13).into_font(),
        ))?;
        // Top of the stack first, as it is drawn.
        for (row, k) in (0..r.queues.len()).rev().enumerate() {
            let y = 62 + row as i32 * 20;
            let c = color(k);
            right.draw(&Rectangle::new([(8, y - 6), (22, y + 6)], c.filled()))?;
            right.draw(&Text::new(
                format!(
                    "{}: {:.1}% / {:.1}%",
                    r.queues[k].name,
                    r.queues[k].entitlement * 100.0,
                    r.queues[k].mean_share * 100.0
                ),
                (28, y - 6),
                ("sans-serif", 12).into_font(),
            ))?;
        }
        Ok(())
    })
}

/// `fill.svg`: allocation against arrived demand, one line per (label, curve), and the paper's
/// published means as marks.
fn fill_plot(
    path: &Path,
    curves: &[(String, Vec<(f64, f64)>)],
    paper: &[PaperPoint],
) -> Result<()> {
    let xmax = curves
        .iter()
        .filter_map(|c| c.1.last().map(|p| p.0))
        .chain(paper.iter().map(|p| p.arrived_pct))
        .fold(10.0, f64::max);
    // Zoom on the part that separates policies once demand nears capacity.
    let ymin = curves
        .iter()
        .filter_map(|c| c.1.last().map(|p| p.1))
        .chain(paper.iter().map(|p| p.allocated_pct))
        .fold(100.0, f64::min);
    let ylo = if ymin > 60.0 { 0.0 } else { 0.0f64.min(ymin) };
    render(path, (W, H), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                "Fill experiment: allocation as demand arrives",
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..xmax + 2.0, ylo..100f64)?;
        chart
            .configure_mesh()
            .x_desc("arrived GPU demand, % of capacity")
            .y_desc("allocated % of GPUs")
            .draw()?;
        chart.draw_series(LineSeries::new(
            vec![(0.0, 0.0), (100.0, 100.0)],
            BLACK.mix(0.3),
        ))?;
        for (i, (label, curve)) in curves.iter().enumerate() {
            let c = color(i);
            chart
                .draw_series(LineSeries::new(
                    std::iter::once((0.0, 0.0)).chain(curve.iter().copied()),
                    c.stroke_width(2),
                ))?
                .label(label.clone())
                .legend(line_mark(c));
        }
        // The paper's points: one mark shape per paper policy, in black.
        let mut names: Vec<&str> = paper.iter().map(|p| p.policy).collect();
        names.dedup();
        for (k, name) in names.iter().enumerate() {
            let pts: Vec<(f64, f64)> = paper
                .iter()
                .filter(|p| p.policy == *name)
                .map(|p| (p.arrived_pct, p.allocated_pct))
                .collect();
            let label = format!(
                "paper {name}: {}",
                pts.iter()
                    .map(|(x, y)| format!("{y:.2}% at {x:.0}%"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            match k % 3 {
                0 => chart
                    .draw_series(
                        pts.iter()
                            .map(|&p| Circle::new(p, 5, BLACK.stroke_width(2))),
                    )?
                    .label(label)
                    .legend(|(x, y)| Circle::new((x + 9, y), 5, BLACK.stroke_width(2))),
                1 => chart
                    .draw_series(pts.iter().map(|&p| Cross::new(p, 5, BLACK.stroke_width(2))))?
                    .label(label)
                    .legend(|(x, y)| Cross::new((x + 9, y), 5, BLACK.stroke_width(2))),
                _ => chart
                    .draw_series(
                        pts.iter()
                            .map(|&p| TriangleMarker::new(p, 6, BLACK.stroke_width(2))),
                    )?
                    .label(label)
                    .legend(|(x, y)| TriangleMarker::new((x + 9, y), 6, BLACK.stroke_width(2))),
            };
        }
        legend(&mut chart)
    })
}

/// Write the report folder of a several-seed fill study: `fill.svg` with each policy's curve
/// averaged over the seeds and the paper's points, `summary.json`, `index.html`.
///
/// # Errors
/// The folder or a file cannot be written.
pub fn write_seeds(dir: &Path, name: &str, study: &SeedStudy) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| SimError::io(dir, e))?;
    let curves: Vec<(String, Vec<(f64, f64)>)> = study
        .policies
        .iter()
        .map(|p| {
            (
                format!(
                    "{} ({:.2}% ± {:.2} over {} seeds)",
                    p.policy,
                    p.mean,
                    p.sd,
                    study.seeds.len()
                ),
                p.curve.clone(),
            )
        })
        .collect();
    fill_plot(&dir.join("fill.svg"), &curves, &study.published)?;
    let json = serde_json::to_string_pretty(study)
        .map_err(|e| SimError::io(dir, std::io::Error::other(e)))?;
    std::fs::write(dir.join("summary.json"), json)
        .map_err(|e| SimError::io(dir.join("summary.json"), e))?;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>gantry sim — {name}</title>\n<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f4f4f4}}td:first-child{{text-align:left}}img{{max-width:100%;border:1px solid #eee;margin:1em 0}}</style></head><body>\n<h1>gantry sim — {name}, seeds {seeds}</h1>\n<p>The FGD paper's fill experiment on pod list <code>{list}</code>, once per seed. Every decision is the production engine's.</p>\n",
        name = esc(name),
        seeds = study.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
        list = esc(&study.list),
    );
    h.push_str("<table><tr><th>policy</th><th>mean alloc %</th><th>sd</th><th>min</th><th>max</th><th>÷ fgd (same runs)</th><th>unallocated whole GPUs</th><th>unallocated in partly used GPUs</th><th>median wall s</th></tr>\n");
    for p in &study.policies {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.2}</td></tr>",
            esc(&p.policy),
            p.mean,
            p.sd,
            p.min,
            p.max,
            p.ratio_to_fgd.map_or("-".into(), |r| format!("{r:.4}")),
            p.unallocated_whole_gpus,
            p.unallocated_partial_gpus,
            p.wall_ms_median / 1000.0
        );
    }
    h.push_str("</table>\n");
    if !study.published.is_empty() {
        h.push_str("<p>Published (the artifact's means over 10 seeds): ");
        let parts: Vec<String> = study
            .published
            .iter()
            .map(|p| {
                format!(
                    "{} {:.2}% at {:.0}%",
                    p.policy, p.allocated_pct, p.arrived_pct
                )
            })
            .collect();
        h.push_str(&esc(&parts.join("; ")));
        h.push_str(".</p>\n");
    }
    h.push_str("<h2>Allocation as demand arrives</h2><img src=\"fill.svg\" alt=\"fill curves\">\n<p><a href=\"summary.json\">summary.json</a></p></body></html>\n");
    let index = dir.join("index.html");
    std::fs::write(&index, h).map_err(|e| SimError::io(index, e))?;
    Ok(())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Write the report folder.
///
/// # Errors
/// The folder or a file cannot be written.
pub fn write(
    dir: &Path,
    w: &Workload,
    runs: &[RunResult],
    what_if: Option<&[WhatIfQueue]>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| SimError::io(dir, e))?;
    let mut images: Vec<(String, String)> = Vec::new();
    let is_fill = runs.iter().any(|r| r.fill.is_some());
    if is_fill {
        let curves: Vec<(String, Vec<(f64, f64)>)> = runs
            .iter()
            .filter_map(|r| {
                let f = r.fill.as_ref()?;
                Some((
                    format!(
                        "{} ({:.2}% at {:.1}×)",
                        r.policy, f.allocated_pct_of_capacity, f.multiple
                    ),
                    f.curve.clone(),
                ))
            })
            .collect();
        fill_plot(&dir.join("fill.svg"), &curves, &published(list_of(&w.name)))?;
        images.push((
            "fill.svg".into(),
            "Allocation as demand arrives (fill experiment)".into(),
        ));
    } else {
        utilization(&dir.join("utilization.svg"), runs)?;
        images.push(("utilization.svg".into(), "GPU allocation over time".into()));
        jct_cdf(&dir.join("jct_cdf.svg"), runs)?;
        images.push(("jct_cdf.svg".into(), "JCT CDF per policy".into()));
        for r in runs {
            let f = format!("queue_shares-{}.svg", r.policy);
            queue_shares(&dir.join(&f), r)?;
            images.push((f, format!("Queue shares over time — {}", r.policy)));
        }
    }
    for r in runs {
        let mut csv =
            String::from("name,queue,gpus,arrival_s,start_s,end_s,wait_s,jct_s,preempted,state\n");
        let secs =
            |v: Option<u64>| v.map_or(String::new(), |x| format!("{:.3}", x as f64 / 1000.0));
        for o in &r.outcomes {
            let _ = writeln!(
                csv,
                "{},{},{:.3},{:.3},{},{},{},{},{},{}",
                o.name,
                o.queue,
                o.gpu_milli as f64 / 1000.0,
                o.arrival_ms as f64 / 1000.0,
                secs(o.start_ms),
                secs(o.end_ms),
                secs(o.start_ms.map(|s| s - o.arrival_ms)),
                secs(o.end_ms.map(|e| e - o.arrival_ms)),
                o.preempted,
                o.state
            );
        }
        let f = dir.join(format!("jobs-{}.csv", r.policy));
        std::fs::write(&f, csv).map_err(|e| SimError::io(&f, e))?;
    }
    let json = serde_json::to_string_pretty(runs)
        .map_err(|e| SimError::io(dir, std::io::Error::other(e)))?;
    std::fs::write(dir.join("summary.json"), json)
        .map_err(|e| SimError::io(dir.join("summary.json"), e))?;

    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>gantry sim — {name}</title>\n<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f4f4f4}}td:first-child{{text-align:left}}img{{max-width:100%;border:1px solid #eee;margin:1em 0}}</style></head><body>\n<h1>gantry sim — {name}</h1>\n<p>{jobs} jobs on {nodes} nodes with {gpus} GPUs. Every decision is the production engine's (<code>gantry_engine::schedule</code>); policies are engine profiles.</p>\n",
        name = esc(&w.name),
        jobs = w.jobs.len(),
        nodes = w.cluster.nodes.len(),
        gpus = w.gpu_capacity()
    );
    h.push_str("<h2>Summary</h2><table><tr><th>policy</th>");
    if is_fill {
        h.push_str("<th>alloc % of capacity</th><th>alloc % of arrived</th><th>unallocated GPUs</th><th>dropped pods</th><th>engine µs/cycle</th><th>wall s</th></tr>\n");
        for r in runs {
            if let Some(f) = &r.fill {
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td>{:.2}%</td><td>{:.2}%</td><td>{:.1}</td><td>{}</td><td>{:.0}</td><td>{:.2}</td></tr>",
                    esc(&r.policy), f.allocated_pct_of_capacity, f.allocated_pct_of_arrived, f.unallocated_gpus, f.dropped_pods, r.engine.mean_us, r.wall_ms / 1000.0
                );
            }
        }
    } else {
        h.push_str("<th>completed</th><th>wait mean / p50 / p95 (s)</th><th>JCT mean / p50 / p95 (s)</th><th>utilization</th><th>unallocated GPUs while saturated</th><th>fragmented GPUs</th><th>preemptions</th><th>engine µs/cycle mean / p99</th><th>wall s</th></tr>\n");
        for r in runs {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}/{}</td><td>{:.0} / {:.0} / {:.0}</td><td>{:.0} / {:.0} / {:.0}</td><td>{:.1}%</td><td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{:.0} / {:.0}</td><td>{:.2}</td></tr>",
                esc(&r.policy), r.completed, r.jobs, r.wait.mean, r.wait.p50, r.wait.p95, r.jct.mean, r.jct.p50, r.jct.p95,
                r.utilization * 100.0, r.unallocated_gpus_at_saturation, r.fragmented_gpus,
                r.preemptions_priority + r.preemptions_reclaim, r.engine.mean_us, r.engine.p99_us, r.wall_ms / 1000.0
            );
        }
    }
    h.push_str("</table>\n");
    if !is_fill && runs.first().is_some_and(|r| r.queues.len() > 1) {
        h.push_str("<h2>Queues: share versus entitlement</h2><table><tr><th>queue</th><th>entitlement</th>");
        for r in runs {
            let _ = write!(
                h,
                "<th>{p} share</th><th>{p} mean wait (s)</th><th>{p} deprived time</th>",
                p = esc(&r.policy)
            );
        }
        h.push_str("</tr>\n");
        for (k, q) in runs[0].queues.iter().enumerate() {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{:.1}%</td>",
                esc(&q.name),
                q.entitlement * 100.0
            );
            for r in runs {
                let q = &r.queues[k];
                let _ = write!(
                    h,
                    "<td>{:.1}%</td><td>{:.0}</td><td>{:.0}%</td>",
                    q.mean_share * 100.0,
                    q.wait.mean,
                    q.deprived_time * 100.0
                );
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table>\n");
    }
    if let Some(wi) = what_if {
        h.push_str("<h2>What-if: current versus proposed quotas</h2><table><tr><th>queue</th><th>entitlement</th><th>mean wait (s)</th><th>p95 wait (s)</th><th>share</th></tr>\n");
        for q in wi {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{:.1}% → {:.1}%</td><td>{:.0} → {:.0}</td><td>{:.0} → {:.0}</td><td>{:.1}% → {:.1}%</td></tr>",
                esc(&q.queue), q.entitlement.0 * 100.0, q.entitlement.1 * 100.0, q.mean_wait.0, q.mean_wait.1, q.p95_wait.0, q.p95_wait.1, q.mean_share.0 * 100.0, q.mean_share.1 * 100.0
            );
        }
        h.push_str("</table>\n");
    }
    for (f, title) in &images {
        let _ = writeln!(
            h,
            "<h2>{}</h2><img src=\"{}\" alt=\"{}\">",
            esc(title),
            esc(f),
            esc(title)
        );
    }
    h.push_str("<p>All figures: <a href=\"summary.json\">summary.json</a>. Every job:");
    for r in runs {
        let _ = write!(
            h,
            " <a href=\"jobs-{p}.csv\">jobs-{p}.csv</a>",
            p = esc(&r.policy)
        );
    }
    h.push_str(".</p></body></html>\n");
    let index = dir.join("index.html");
    std::fs::write(&index, h).map_err(|e| SimError::io(index, e))?;
    Ok(())
}

/// The inference study's plot: replicas needed against ready replicas over time, one line per
/// strategy, written to `dir/inference.svg`; returns its path.
///
/// # Errors
/// The folder or the file cannot be written.
pub fn write_inference(
    dir: &Path,
    name: &str,
    results: &[crate::inference::StudyResult],
) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| SimError::io(dir, e))?;
    let path = dir.join("inference.svg");
    let xmax = results
        .iter()
        .filter_map(|r| r.series.last().map(|p| p.0))
        .fold(1e-9, f64::max);
    let ymax = results
        .iter()
        .flat_map(|r| r.series.iter().map(|p| p.1.max(p.2).max(p.3)))
        .max()
        .unwrap_or(1) as f64
        + 1.0;
    render(&path, (W, H), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("{name}: replicas needed and ready"),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
        chart
            .configure_mesh()
            .x_desc("hours")
            .y_desc("replicas")
            .draw()?;
        if let Some(r) = results.first() {
            chart
                .draw_series(LineSeries::new(
                    r.series.iter().map(|p| (p.0, f64::from(p.1))),
                    BLACK.stroke_width(1),
                ))?
                .label("needed (load / target)")
                .legend(line_mark(BLACK));
        }
        for (i, r) in results.iter().enumerate() {
            let c = color(i);
            chart
                .draw_series(LineSeries::new(
                    r.series.iter().map(|p| (p.0, f64::from(p.2))),
                    c.stroke_width(2),
                ))?
                .label(format!(
                    "{} ready (SLO {:.1}%)",
                    r.strategy.name(),
                    r.slo_attainment * 100.0
                ))
                .legend(line_mark(c));
        }
        legend(&mut chart)
    })?;
    Ok(path)
}
