//! `vibecheck cost`: the load test of a model served here (on vibecheck's engine or one it starts) or of any
//! OpenAI-compatible endpoint, priced from the flags or the price table, stored and printed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::engines::{served_name, start, EngineArgs, Placement};

#[derive(Args)]
pub struct CostArgs {
    /// A checkpoint, GGUF file or hub id to serve and measure here (on vibecheck's engine, or on --engine's), or
    /// with --url the model name at that endpoint.
    pub model: String,
    /// Measure an OpenAI-compatible endpoint that is already running (such as http://gpu-box:8000/v1) instead.
    #[arg(long, value_name = "BASE_URL")]
    pub url: Option<String>,
    /// The environment variable holding --url's API key.
    #[arg(long, value_name = "VAR")]
    pub key_env: Option<String>,
    /// A GPU row of the price table (NAME or NAME@PROVIDER; e.g. H100-80GB-SXM, A100-80GB-SXM@RunPod): the
    /// cheapest row of that name unless a provider is given.
    #[arg(long)]
    pub gpu: Option<String>,
    /// GPUs the model is served on (with --gpu).
    #[arg(long, default_value_t = 1)]
    pub gpus: usize,
    /// The hourly price of what serves the model, in place of the table's (your invoice; a CPU machine).
    #[arg(long, value_name = "USD")]
    pub price_per_hour: Option<f64>,
    /// The latency a load must keep: p99-ttft=2s,itl=100ms (keys ttft and itl, optionally p50-/p90-/p95-/p99-).
    #[arg(long, default_value = "p99-ttft=2s,itl=100ms")]
    pub latency: String,
    /// The highest concurrency tried (the levels double from 1).
    #[arg(long, default_value_t = 16)]
    pub max_concurrency: usize,
    /// Requests per level: this many per concurrent slot (at least 8).
    #[arg(long, default_value_t = 3)]
    pub requests_per_slot: usize,
    /// Prompt tokens per request (about) and output tokens per request (3:1 by default).
    #[arg(long, default_value_t = 192)]
    pub input_tokens: usize,
    #[arg(long, default_value_t = 64)]
    pub output_tokens: usize,
    /// More GPU and API rows (the bundled table's format); rows of the same name and provider replace.
    #[arg(long, value_name = "FILE")]
    pub prices: Option<PathBuf>,
    /// Also store the report here, for the /cost page and the run pages.
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Measure MODEL on an engine vibecheck starts (vllm, sglang, llama-server) rather than its own.
    #[arg(long, value_name = "ENGINE")]
    pub engine: Option<String>,
    #[arg(long, value_name = "PATH")]
    pub engine_bin: Option<PathBuf>,
    #[arg(long = "engine-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub engine_args: Vec<String>,
    #[arg(long, default_value_t = 900.0, value_name = "SECONDS")]
    pub engine_timeout: f64,
}

impl CostArgs {
    fn engine_args(&self) -> EngineArgs {
        EngineArgs {
            engine: self.engine.clone(),
            tensor_parallel: 1,
            pipeline_parallel: 1,
            engine_args: self.engine_args.clone(),
            engine_bin: self.engine_bin.clone(),
            engine_timeout: self.engine_timeout,
            ..EngineArgs::default()
        }
    }
}

/// The price table: the bundled one with `--prices` over it.
pub(crate) fn price_table(file: Option<&Path>) -> Result<vibecheck_engines::prices::PriceTable> {
    let table = vibecheck_engines::prices::PriceTable::bundled();
    Ok(match file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading the price file {}", f.display()))?;
            table.overlay(vibecheck_engines::prices::PriceTable::parse(
                &text,
                &f.display().to_string(),
            )?)
        }
        None => table,
    })
}

/// Serves `model` in this process on a free loopback port (vibecheck's engine, or the engine --engine asks for)
/// and returns the base URL, the model's id, and the engine if one was started.
fn serve_here(
    model: &str,
    engine_args: &EngineArgs,
    concurrency: usize,
) -> Result<(
    String,
    String,
    Option<std::sync::Arc<vibecheck_engines::Engine>>,
)> {
    let opts = vibecheck_engine::LoadOptions::default();
    if let Placement::Engine(kind) = engine_args.placement(model, &opts)? {
        let spec = engine_args.spec(kind, model, &served_name(model))?;
        let engine = start(&spec, engine_args.ready_timeout()?)?;
        let url = engine.base_url();
        let name = engine.served_name.clone();
        // Measured directly: the engine's own rate, without our relay in between.
        return Ok((url, name, Some(std::sync::Arc::new(engine))));
    }
    crate::args::fetch_if_hub_id(model)?;
    let registry = vibecheck_server::Registry::from_sources(&[model.to_string()], opts)
        .with_context(|| format!("reading {model}"))?
        .with_batching(vibecheck_engine::BatcherSettings {
            max_batch: concurrency.max(1),
            prefill_chunk: 64,
        });
    let id = registry
        .entries()
        .first()
        .map(|e| e.id.clone())
        .context("nothing to serve")?;
    let settings = vibecheck_server::ServeSettings {
        host: "127.0.0.1".into(),
        port: 0,
        max_concurrent: concurrency.max(1),
        ..Default::default()
    };
    let state = vibecheck_server::AppState::new(registry, settings);
    let url = crate::args::spawn_server(state, false)
        .with_context(|| format!("serving {model} for the load test"))?;
    Ok((format!("{url}/v1"), id, None))
}

pub fn cost(a: CostArgs) -> Result<()> {
    use vibecheck_engines::cost::Report;
    use vibecheck_engines::load::{load_test, LatencyTarget, LoadSettings};
    let target = LatencyTarget::parse(&a.latency)?;
    let table = price_table(a.prices.as_deref())?;
    let vcpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let price = vibecheck_engines::cost::HourlyPrice::from_table(
        &table,
        a.gpu.as_deref(),
        a.gpus,
        a.price_per_hour,
        vcpus,
    )?;
    if a.max_concurrency == 0 || a.output_tokens == 0 || a.input_tokens == 0 {
        bail!("--max-concurrency, --input-tokens and --output-tokens must be at least 1");
    }
    let mut levels = vec![1];
    while levels.last().is_some_and(|&l| l * 2 <= a.max_concurrency) {
        levels.push(levels.last().expect("non-empty") * 2);
    }
    if levels.last() != Some(&a.max_concurrency) {
        levels.push(a.max_concurrency);
    }
    let (base_url, model, key, engine) = match &a.url {
        Some(url) => {
            let key = match &a.key_env {
                Some(var) => Some(
                    std::env::var(var)
                        .with_context(|| format!("--key-env names ${var}, which is not set"))?,
                ),
                None => None,
            };
            (
                url.trim_end_matches('/').to_string(),
                a.model.clone(),
                key,
                None,
            )
        }
        None => {
            let (url, id, engine) = serve_here(&a.model, &a.engine_args(), a.max_concurrency)?;
            let key = engine.as_ref().map(|e| e.api_key().to_string());
            (url, id, key, engine)
        }
    };
    let client = vibecheck_client::Client::new(&base_url, key.clone());
    let root = base_url
        .strip_suffix("/v1")
        .unwrap_or(&base_url)
        .to_string();
    let metrics = vibecheck_client::Client::new(&root, key);
    let settings = LoadSettings {
        model: model.clone(),
        levels,
        requests_per_slot: a.requests_per_slot.max(1),
        input_tokens: a.input_tokens,
        output_tokens: a.output_tokens,
        ..LoadSettings::default()
    };
    eprintln!(
        "load test of {model} at {base_url}: concurrency {:?}, target {}",
        settings.levels,
        target.describe()
    );
    let bar = indicatif::ProgressBar::new(settings.levels.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} levels {msg}")
            .expect("valid template"),
    );
    let levels = load_test(&client, Some(&metrics), &settings, &target, &mut |l| {
        bar.inc(1);
        bar.println(format!(
            "concurrency {:>3}: {:.1} output tok/s, p99 TTFT {:.0} ms, p99 ITL {:.0} ms, {} failed{}",
            l.concurrency,
            l.output_tok_s,
            l.ttft_p99_s.unwrap_or(0.0) * 1000.0,
            l.itl_p99_s.unwrap_or(0.0) * 1000.0,
            l.failed,
            if l.meets_target { "" } else { " — misses the target; stopping here" }
        ));
    });
    bar.finish_and_clear();
    if let Some(e) = &engine {
        e.stop(Duration::from_secs(15));
    }
    let report = Report::new(
        &model, &base_url, &price, &target, &settings, levels, &table,
    );
    for a in &report.apis {
        if let Some(days) = vibecheck_engines::prices::days_since(&a.checked_on).filter(|d| *d > 60)
        {
            tracing::warn!(
                "the price of {} ({}) was checked {days} days ago",
                a.name,
                a.provider
            );
        }
    }
    if let Some(db) = &a.db {
        let store = crate::args::open_store(db)?;
        store
            .put_cost_report(&report.model, &serde_json::to_string(&report)?)
            .with_context(|| format!("storing the report in {}", db.display()))?;
        eprintln!("stored in {} (the /cost page shows it)", db.display());
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!("{}", report.text());
    }
    if report.chosen.is_none() {
        bail!(
            "no load met the target ({}): every level missed it or failed, so there is no sustainable throughput to \
             price",
            report.target
        );
    }
    Ok(())
}
