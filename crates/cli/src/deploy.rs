//! `vibecheck deploy`: the SkyPilot task, Slurm script or Helm values that keep a checkpoint up as a demo, with the
//! engine command of `serve --engine` and the cost estimate as a comment.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use vibecheck_engines::{EngineKind, LaunchSpec};

use crate::engines::{served_name, EngineArgs};

#[derive(Args)]
pub struct DeployArgs {
    /// The checkpoint, as the cluster sees it: a hub id, or a path on the cluster's storage.
    pub checkpoint: String,
    /// skypilot (a task YAML), slurm (an sbatch script; Ray head and workers across nodes) or k8s (values for
    /// vLLM's production-stack Helm chart).
    #[arg(long)]
    pub target: String,
    /// Nodes the demo spans.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// The GPU type as the cluster names it (SkyPilot: H100, A100-80GB, L4), and a price-table row for the cost
    /// comment (--price-gpu, default: the same name).
    #[arg(long, default_value = "H100")]
    pub accelerator: String,
    #[arg(long)]
    pub price_gpu: Option<String>,
    /// GPUs per node (default: --tensor-parallel × --pipeline-parallel over the nodes).
    #[arg(long)]
    pub gpus_per_node: Option<usize>,
    /// The port the demo listens on.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Where to write the file (a folder gets the target's file name); default: stdout.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// More price rows (the bundled table's format).
    #[arg(long, value_name = "FILE")]
    pub prices: Option<PathBuf>,
    /// A stored `vibecheck cost` report of this model (its $/1M output tokens goes in the comment).
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn deploy(a: DeployArgs) -> Result<()> {
    use vibecheck_engines::deploy::{DeployPlan, Target};
    let target = Target::parse(&a.target)?;
    let kind = match a.engine.engine.as_deref() {
        None => EngineKind::Vllm,
        Some(e) => EngineKind::parse(e)?,
    };
    if a.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let mut spec = LaunchSpec::new(kind, &a.checkpoint, &served_name(&a.checkpoint));
    spec.tensor_parallel = a.engine.tensor_parallel;
    spec.pipeline_parallel = a.engine.pipeline_parallel;
    spec.max_model_len = a.engine.max_model_len;
    spec.engine_args = a.engine.engine_args.clone();
    spec.check_files = false;
    let per_node = a.gpus_per_node.unwrap_or_else(|| {
        (a.engine.tensor_parallel * a.engine.pipeline_parallel)
            .div_ceil(a.nodes)
            .max(1)
    });
    let table = crate::cost::price_table(a.prices.as_deref())?;
    let total_gpus = per_node * a.nodes;
    let mut cost_lines = Vec::new();
    let price_row = a.price_gpu.clone().unwrap_or_else(|| a.accelerator.clone());
    match table.gpu(&price_row) {
        Ok(row) => {
            let hourly = row.usd_per_hour * total_gpus as f64;
            cost_lines.push(format!(
                "Cost: {total_gpus} × {} at ${:.2}/GPU-hour ({}, checked {}) = ${hourly:.2}/hour, ${:.0}/month kept up.",
                row.name,
                row.usd_per_hour,
                row.provider,
                row.checked_on,
                hourly * 24.0 * 30.0
            ));
            if let Some(db) = &a.db {
                let store = crate::args::open_store(db)?;
                let reports = store.cost_reports(50)?;
                let name = served_name(&a.checkpoint);
                if let Some((_, json)) = reports
                    .iter()
                    .find(|(m, _)| *m == name || *m == a.checkpoint)
                {
                    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
                    if let Some(tok_s) = v["output_tok_s"].as_f64() {
                        if let Some(per_m) = vibecheck_engines::cost::usd_per_million(hourly, tok_s)
                        {
                            cost_lines.push(format!(
                                "At the {tok_s:.1} output tok/s `vibecheck cost` measured ({}): ${per_m:.3} per 1M output tokens.",
                                v["hardware"].as_str().unwrap_or("?")
                            ));
                        }
                    }
                }
            }
        }
        Err(e) => cost_lines.push(format!("Cost: not estimated ({e})")),
    }
    cost_lines.push("`vibecheck cost MODEL --url http://HOST:PORT/v1 --gpu NAME --gpus N` measures $/1M tokens once it runs.".into());
    let plan = DeployPlan {
        spec,
        nodes: a.nodes,
        accelerator: a.accelerator.clone(),
        gpus_per_node: per_node,
        port: a.port,
        cost_lines,
    };
    let text = plan.render(target)?;
    match &a.out {
        Some(out) => {
            let path = if out.is_dir() {
                out.join(target.file_name())
            } else {
                out.clone()
            };
            std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => outln!("{text}"),
    }
    Ok(())
}
