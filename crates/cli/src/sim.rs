//! `gantry sim`: replay a trace or a scenario through the engine under one or more profiles,
//! print a summary (or JSON), and write a report folder with SVG plots.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use gantry_engine::Profile;
use gantry_model::doc::from_file;
use gantry_model::{ClusterSpec, QueuesSpec};
use gantry_sim::compare::{self, Ratio, WhatIfQueue};
use gantry_sim::driver::{Options, Progress};
use gantry_sim::{openb, philly, report, scenario, RunResult, Workload};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::output::{print_doc, table, Format};

/// Flags of `gantry sim`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["openb", "philly", "scenario", "inference"])))]
pub struct SimArgs {
    /// An openb folder: `openb_node_list_gpu_node.csv` and a pod list (see --pods).
    #[arg(long, value_name = "DIR")]
    openb: Option<PathBuf>,
    /// The pod list inside the openb folder (or a path).
    #[arg(long, default_value = "openb_pod_list_default.csv", requires = "openb")]
    pods: String,
    /// openb: the FGD paper's fill experiment up to this multiple of capacity (e.g. 1.3),
    /// instead of a replay with departures.
    #[arg(long, value_name = "MULTIPLE", requires = "openb")]
    fill: Option<f64>,
    /// The Philly job table (`philly.csv`).
    #[arg(long, value_name = "CSV")]
    philly: Option<PathBuf>,
    /// A gantry scenario (YAML).
    #[arg(long, value_name = "YAML")]
    scenario: Option<PathBuf>,
    /// The scenario's size variant (e.g. small, large).
    #[arg(long, requires = "scenario")]
    variant: Option<String>,
    /// A cluster spec replacing the Philly default cluster (64 × 8 GPUs).
    #[arg(long, value_name = "YAML", requires = "philly")]
    cluster: Option<PathBuf>,
    /// Seed of the fill experiment's shuffle (scenarios carry their own seed).
    #[arg(long, default_value_t = 42, conflicts_with = "seeds")]
    seed: u64,
    /// The fill experiment once per seed (`42..51` or `42,43`): mean and spread per policy,
    /// the ratio to fgd in the same runs, and the paper's published means.
    #[arg(long, value_name = "RANGE", requires = "fill")]
    seeds: Option<String>,
    /// One policy (engine profile): gantry, fgd, best-fit or fifo.
    #[arg(long, default_value = "gantry", conflicts_with = "compare")]
    policy: String,
    /// Several policies on the same input, e.g. `best-fit,fgd,gantry`; ratios are against the first.
    #[arg(long, value_name = "LIST")]
    compare: Option<String>,
    /// What-if: replay again under these queues (same leaf names) and compare queue waits.
    #[arg(long, value_name = "YAML")]
    queues: Option<PathBuf>,
    /// Write a report folder (SVG plots and index.html).
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// An inference study (YAML, e.g. crates/sim/scenarios/inference-autoscale.yaml): an
    /// autoscaled service beside a Philly training backlog, under three sizings.
    #[arg(long, value_name = "YAML", conflicts_with_all = ["openb", "philly", "scenario"])]
    inference: Option<PathBuf>,
    /// Points kept per time series.
    #[arg(long, default_value_t = 400)]
    samples: usize,
    /// Output format (table or json).
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    output: Format,
}

#[derive(Debug, Serialize)]
struct SimOut<'a> {
    workload: &'a str,
    runs: &'a [RunResult],
    ratios: Vec<Ratio>,
    #[serde(skip_serializing_if = "Option::is_none")]
    what_if: Option<WhatIfOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<String>,
}

#[derive(Debug, Serialize)]
struct WhatIfOut {
    policy: String,
    queues: Vec<WhatIfQueue>,
}

fn load(args: &SimArgs, seed: u64) -> anyhow::Result<Workload> {
    if let Some(dir) = &args.openb {
        let nodes = dir.join("openb_node_list_gpu_node.csv");
        let pods = {
            let p = PathBuf::from(&args.pods);
            if p.is_absolute() || p.exists() && p.components().count() > 1 {
                p
            } else {
                dir.join(&args.pods)
            }
        };
        let (cluster, pod_list) = openb::load(&nodes, &pods)?;
        let base = pods
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("openb")
            .trim_start_matches("openb_pod_list_")
            .to_string();
        return Ok(match args.fill {
            Some(m) => openb::fill(
                &format!("openb-{base}-fill{m}"),
                cluster,
                &pod_list,
                m,
                seed,
            )?,
            None => openb::replay(&format!("openb-{base}"), cluster, &pod_list)?,
        });
    }
    if let Some(path) = &args.philly {
        let mut w = philly::load(path)?;
        if let Some(c) = &args.cluster {
            let cluster = from_file::<ClusterSpec>(c)?
                .build()
                .with_context(|| c.display().to_string())?;
            let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
            let jobs = philly::parse(&path.display().to_string(), &text)?;
            let queues = philly::queues_for_cluster(&jobs, &cluster);
            w = philly::workload("philly", &jobs, cluster, queues);
        }
        return Ok(w);
    }
    if let Some(path) = &args.scenario {
        return Ok(scenario::load(path, args.variant.as_deref())?);
    }
    anyhow::bail!("give one of --openb, --philly or --scenario")
}

fn bar(policy: &str, total: u64) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let pb = ProgressBar::with_draw_target(Some(total), target);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>9} [{bar:40}] {pos}/{len} jobs arrived, {msg} ({elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_prefix(policy.to_string());
    pb
}

fn run_policies(
    w: &Workload,
    profiles: &[Profile],
    opts: &Options,
) -> anyhow::Result<Vec<RunResult>> {
    let mut runs = Vec::new();
    for p in profiles {
        let pb = bar(&p.name, w.jobs.len() as u64);
        let r = gantry_sim::driver::replay(w, p, opts, &mut |pr: Progress| {
            pb.set_position(pr.arrived);
            pb.set_message(format!("day {:.1}", pr.now as f64 / 86_400_000.0));
        })?;
        pb.finish_and_clear();
        runs.push(r);
    }
    Ok(runs)
}

fn secs(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.2}h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.1}m", s / 60.0)
    } else {
        format!("{s:.1}s")
    }
}

fn print_tables(w: &Workload, runs: &[RunResult], ratios: &[Ratio], what_if: Option<&WhatIfOut>) {
    println!(
        "{}: {} jobs, {} nodes, {} GPUs",
        w.name,
        w.jobs.len(),
        w.cluster.nodes.len(),
        w.gpu_capacity()
    );
    if runs.iter().any(|r| r.fill.is_some()) {
        let mut t = table(&[
            "policy",
            "arrived GPUs",
            "allocated GPUs",
            "alloc % of capacity",
            "alloc % of arrived",
            "unallocated GPUs (whole idle / in partly used)",
            "dropped pods",
            "cycles",
            "engine µs/cycle (mean/p99)",
            "wall",
        ]);
        for r in runs {
            let Some(f) = &r.fill else { continue };
            t.add_row(vec![
                r.policy.clone(),
                format!("{:.1}", f.arrived_gpus),
                format!("{:.1}", f.allocated_gpus),
                format!("{:.2}%", f.allocated_pct_of_capacity),
                format!("{:.2}%", f.allocated_pct_of_arrived),
                format!(
                    "{:.1} ({:.0} / {:.1})",
                    f.unallocated_gpus, f.unallocated_whole_gpus, f.unallocated_in_shared_gpus
                ),
                f.dropped_pods.to_string(),
                r.engine.cycles.to_string(),
                format!("{:.0} / {:.0}", r.engine.mean_us, r.engine.p99_us),
                format!("{:.2}s", r.wall_ms / 1000.0),
            ]);
        }
        println!("{t}");
        if let Some(r) = runs.first().and_then(|r| r.fill.as_ref()) {
            let mut t = table(&["arrived demand (% of capacity)"]);
            let mut header = vec!["arrived demand (% of capacity)".to_string()];
            header.extend(runs.iter().map(|r| format!("{} alloc %", r.policy)));
            t.set_header(header);
            for (k, (x, _)) in r.curve.iter().enumerate() {
                if (x.round() as i64) % 10 != 0 {
                    continue;
                }
                let mut row = vec![format!("{x:.0}%")];
                for run in runs {
                    row.push(
                        run.fill
                            .as_ref()
                            .and_then(|f| f.curve.get(k))
                            .map_or("-".into(), |(_, y)| format!("{y:.2}%")),
                    );
                }
                t.add_row(row);
            }
            println!("{t}");
        }
    } else {
        let mut t = table(&[
            "policy",
            "done/jobs",
            "wait mean",
            "wait p50",
            "wait p95",
            "JCT mean",
            "JCT p50",
            "JCT p95",
            "util",
            "unalloc GPUs (saturated)",
            "frag GPUs",
            "preempt",
            "cycles",
            "engine µs/cycle (mean/p99)",
            "wall",
        ]);
        for r in runs {
            t.add_row(vec![
                r.policy.clone(),
                format!("{}/{}", r.completed, r.jobs),
                secs(r.wait.mean),
                secs(r.wait.p50),
                secs(r.wait.p95),
                secs(r.jct.mean),
                secs(r.jct.p50),
                secs(r.jct.p95),
                format!("{:.1}%", r.utilization * 100.0),
                format!("{:.1}", r.unallocated_gpus_at_saturation),
                format!("{:.1}", r.fragmented_gpus),
                (r.preemptions_priority + r.preemptions_reclaim).to_string(),
                r.engine.cycles.to_string(),
                format!("{:.0} / {:.0}", r.engine.mean_us, r.engine.p99_us),
                format!("{:.2}s", r.wall_ms / 1000.0),
            ]);
        }
        println!("{t}");
        if runs.first().is_some_and(|r| r.queues.len() > 1) {
            let mut header = vec!["queue".to_string(), "entitlement".to_string()];
            for r in runs {
                header.push(format!("{} share", r.policy));
                header.push(format!("{} wait mean", r.policy));
                header.push(format!("{} deprived", r.policy));
            }
            let mut t = table(&[]);
            t.set_header(header);
            for (k, q) in runs[0].queues.iter().enumerate() {
                let mut row = vec![q.name.clone(), format!("{:.1}%", q.entitlement * 100.0)];
                for r in runs {
                    let q = &r.queues[k];
                    row.push(format!("{:.1}%", q.mean_share * 100.0));
                    row.push(secs(q.wait.mean));
                    row.push(format!("{:.0}%", q.deprived_time * 100.0));
                }
                t.add_row(row);
            }
            println!("{t}");
        }
    }
    if runs.len() > 1 {
        let mut header = vec!["ratio vs ".to_string() + &runs[0].policy];
        header.extend(runs.iter().map(|r| r.policy.clone()));
        let mut t = table(&[]);
        t.set_header(header);
        for (name, _) in compare::compared_metrics() {
            let mut row = vec![name.to_string()];
            for r in runs {
                let v = ratios
                    .iter()
                    .find(|x| x.metric == name && x.policy == r.policy)
                    .and_then(|x| x.ratio);
                row.push(v.map_or("-".into(), |v| format!("{v:.3}")));
            }
            t.add_row(row);
        }
        println!("{t}");
    }
    if let Some(wi) = what_if {
        let mut t = table(&[
            "queue",
            "entitlement now → proposed",
            "wait mean now → proposed",
            "wait p95 now → proposed",
            "share now → proposed",
        ]);
        for q in &wi.queues {
            t.add_row(vec![
                q.queue.clone(),
                format!(
                    "{:.1}% → {:.1}%",
                    q.entitlement.0 * 100.0,
                    q.entitlement.1 * 100.0
                ),
                format!("{} → {}", secs(q.mean_wait.0), secs(q.mean_wait.1)),
                format!("{} → {}", secs(q.p95_wait.0), secs(q.p95_wait.1)),
                format!(
                    "{:.1}% → {:.1}%",
                    q.mean_share.0 * 100.0,
                    q.mean_share.1 * 100.0
                ),
            ]);
        }
        println!(
            "what-if ({}): queue waits under current and proposed quotas",
            wi.policy
        );
        println!("{t}");
    }
}

/// Run `gantry sim`.
pub fn run(args: SimArgs) -> anyhow::Result<()> {
    if args.output == Format::Yaml {
        anyhow::bail!("--output: gantry sim writes table or json");
    }
    let profiles = compare::profiles(args.compare.as_deref().unwrap_or(&args.policy))?;
    if let Some(path) = &args.inference {
        return run_inference(&args, path, &profiles[0]);
    }
    if let Some(spec) = &args.seeds {
        return run_seeds(&args, spec, &profiles);
    }
    let w = load(&args, args.seed)?;
    let opts = Options {
        samples: args.samples,
    };
    let runs = run_policies(&w, &profiles, &opts)?;
    let ratios = compare::ratios(&runs);
    let what_if = match &args.queues {
        None => None,
        Some(path) => {
            let tree = from_file::<QueuesSpec>(path)?
                .build()
                .with_context(|| path.display().to_string())?;
            let proposed = w.clone().with_queues(tree)?;
            let p = &profiles[0];
            let alt = run_policies(&proposed, std::slice::from_ref(p), &opts)?;
            Some(WhatIfOut {
                policy: p.name.clone(),
                queues: compare::what_if(&runs[0], &alt[0]),
            })
        }
    };
    let report_path = match &args.report {
        None => None,
        Some(dir) => {
            report::write(
                dir,
                &w,
                &runs,
                what_if.as_ref().map(|x| x.queues.as_slice()),
            )?;
            Some(dir.join("index.html").display().to_string())
        }
    };
    match args.output {
        Format::Json => print_doc(
            Format::Json,
            &SimOut {
                workload: &w.name,
                runs: &runs,
                ratios,
                what_if,
                report: report_path,
            },
        )?,
        _ => {
            print_tables(&w, &runs, &ratios, what_if.as_ref());
            if let Some(p) = report_path {
                println!("report: {p}");
            }
        }
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct SeedsOut<'a> {
    workload: &'a str,
    #[serde(flatten)]
    study: &'a gantry_sim::seeds::SeedStudy,
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<String>,
}

/// `--seeds`: the fill experiment once per seed, summarised per policy.
fn run_seeds(args: &SimArgs, spec: &str, profiles: &[Profile]) -> anyhow::Result<()> {
    let seeds = gantry_sim::seeds::parse_seeds(spec).map_err(anyhow::Error::msg)?;
    let opts = Options {
        samples: args.samples,
    };
    let mut runs = Vec::with_capacity(seeds.len());
    let mut name = String::new();
    for &seed in &seeds {
        let w = load(args, seed)?;
        name.clone_from(&w.name);
        runs.push(run_policies(&w, profiles, &opts)?);
    }
    let study = gantry_sim::seeds::summarize(gantry_sim::seeds::list_of(&name), &seeds, &runs);
    let report_path = match &args.report {
        None => None,
        Some(dir) => {
            report::write_seeds(dir, &name, &study)?;
            Some(dir.join("index.html").display().to_string())
        }
    };
    if args.output == Format::Json {
        print_doc(
            Format::Json,
            &SeedsOut {
                workload: &name,
                study: &study,
                report: report_path,
            },
        )?;
        return Ok(());
    }
    println!(
        "{name}: the fill experiment over {} seeds ({})",
        seeds.len(),
        spec
    );
    let mut t = table(&[
        "policy",
        "mean alloc %",
        "sd",
        "min",
        "max",
        "÷ fgd (same runs)",
        "unallocated whole GPUs",
        "unallocated in partly used GPUs",
        "median wall",
    ]);
    for p in &study.policies {
        t.add_row(vec![
            p.policy.clone(),
            format!("{:.2}", p.mean),
            format!("{:.2}", p.sd),
            format!("{:.2}", p.min),
            format!("{:.2}", p.max),
            p.ratio_to_fgd.map_or("-".into(), |r| format!("{r:.4}")),
            format!("{:.1}", p.unallocated_whole_gpus),
            format!("{:.1}", p.unallocated_partial_gpus),
            format!("{:.2}s", p.wall_ms_median / 1000.0),
        ]);
    }
    println!("{t}");
    if !study.published.is_empty() {
        let at130: Vec<String> = study
            .published
            .iter()
            .filter(|p| p.arrived_pct == 130.0)
            .map(|p| format!("{} {:.2}", p.policy, p.allocated_pct))
            .collect();
        println!(
            "published means at 130% (FGD paper's artifact, 10 seeds): {}",
            at130.join(", ")
        );
    }
    if let Some(p) = report_path {
        println!("report: {p}");
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct InferenceOut {
    strategy: &'static str,
    slo_attainment: f64,
    scale_ups: usize,
    scale_up_median_s: Option<f64>,
    scale_up_max_s: Option<f64>,
    service_gpu_hours: f64,
    training_done: usize,
    training_total: usize,
    training_mean_jct_h: f64,
    preemptions: u32,
    gpu_hours_lost: f64,
}

/// `gantry sim --inference STUDY`: the three sizings of the study's service, side by side.
fn run_inference(args: &SimArgs, path: &std::path::Path, profile: &Profile) -> anyhow::Result<()> {
    use gantry_sim::inference::{run, Strategy, Study};
    let study = Study::load(path)?;
    let mut results = Vec::new();
    for s in Strategy::ALL {
        results.push(run(&study, s, profile)?);
    }
    let rows: Vec<InferenceOut> = results
        .iter()
        .map(|r| InferenceOut {
            strategy: r.strategy.name(),
            slo_attainment: r.slo_attainment,
            scale_ups: r.scale_ups_s.len(),
            scale_up_median_s: r.scale_up_latency().map(|l| l.0),
            scale_up_max_s: r.scale_up_latency().map(|l| l.1),
            service_gpu_hours: r.service_gpu_hours,
            training_done: r.training_done,
            training_total: r.training_total,
            training_mean_jct_h: r.training_mean_jct_h,
            preemptions: r.preemptions,
            gpu_hours_lost: r.gpu_hours_lost,
        })
        .collect();
    let plot = match &args.report {
        Some(dir) => Some(gantry_sim::report::write_inference(
            dir,
            study.name(),
            &results,
        )?),
        None => None,
    };
    if args.output == Format::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut t = crate::output::table(&[
        "sizing",
        "SLO met",
        "scale-ups (median/max s)",
        "service GPU-h",
        "training done",
        "mean JCT h",
        "preemptions",
        "GPU-h lost",
    ]);
    for r in &rows {
        t.add_row(vec![
            r.strategy.to_string(),
            format!("{:.1}%", r.slo_attainment * 100.0),
            match (r.scale_up_median_s, r.scale_up_max_s) {
                (Some(a), Some(b)) => format!("{} ({a:.0}/{b:.0})", r.scale_ups),
                _ => "0".into(),
            },
            format!("{:.0}", r.service_gpu_hours),
            format!("{}/{}", r.training_done, r.training_total),
            format!("{:.2}", r.training_mean_jct_h),
            r.preemptions.to_string(),
            format!("{:.1}", r.gpu_hours_lost),
        ]);
    }
    println!("{}: {}", study.name(), path.display());
    println!("{t}");
    if let Some(p) = plot {
        println!("plot: {}", p.display());
    }
    Ok(())
}
