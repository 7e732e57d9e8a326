//! The engine flags `serve` and `watch` share (`--engine vllm|sglang|llama-server|auto|local` and the
//! parallelism, GPUs and pass-through arguments), `--engine auto`'s choice, and the `cost` and `deploy` commands.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use vibecheck_engines::{EngineKind, LaunchSpec, MultiNode};

#[derive(Args, Clone, Debug, Default)]
pub struct EngineArgs {
    /// Run the model on an engine vibecheck starts: vllm, sglang, llama-server; auto (vibecheck's own engine for
    /// what fits this machine, vLLM otherwise; the log says why); local (vibecheck's own, the default).
    #[arg(long, value_name = "ENGINE")]
    pub engine: Option<String>,
    /// GPUs each model is split over by tensor parallelism (vLLM, SGLang).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub tensor_parallel: usize,
    /// Pipeline stages (vLLM, SGLang).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub pipeline_parallel: usize,
    /// The GPUs the engine may use (CUDA_VISIBLE_DEVICES), e.g. 0,1,2,3.
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    pub gpus: Option<Vec<u32>>,
    /// Passed to the engine as it is, after vibecheck's own flags (repeatable; --engine-arg=--flag for one that
    /// starts with a dash).
    #[arg(long = "engine-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub engine_args: Vec<String>,
    /// The program to run in place of `vllm`, `python3` (for `-m sglang.launch_server`) or `llama-server`.
    #[arg(long, value_name = "PATH")]
    pub engine_bin: Option<PathBuf>,
    /// The engine's context length (vLLM --max-model-len, SGLang --context-length, llama.cpp -c).
    #[arg(long, value_name = "TOKENS")]
    pub max_model_len: Option<usize>,
    /// vLLM across machines: the Ray cluster's head (HOST:PORT), started beforehand with `ray start`.
    #[arg(long, value_name = "HOST:PORT")]
    pub ray_address: Option<String>,
    /// SGLang across machines: the number of nodes (one vibecheck per node, each with its --node-rank).
    #[arg(long, value_name = "N")]
    pub nnodes: Option<usize>,
    #[arg(long, value_name = "RANK")]
    pub node_rank: Option<usize>,
    /// SGLang across machines: rank 0's HOST:PORT for the rendezvous.
    #[arg(long, value_name = "HOST:PORT")]
    pub dist_init_addr: Option<String>,
    /// Seconds the engine may take to answer its first request.
    #[arg(long, default_value_t = 900.0, value_name = "SECONDS")]
    pub engine_timeout: f64,
}

/// Where a model runs.
pub enum Placement {
    /// vibecheck's own engine.
    Local,
    Engine(EngineKind),
}

impl EngineArgs {
    /// Whether any flag asks for an engine.
    pub fn wants_engine(&self) -> bool {
        self.engine
            .as_deref()
            .is_some_and(|e| !e.eq_ignore_ascii_case("local"))
    }

    fn multi_node(&self) -> Result<Option<MultiNode>> {
        let sglang_flags =
            self.nnodes.is_some() || self.node_rank.is_some() || self.dist_init_addr.is_some();
        match (&self.ray_address, sglang_flags) {
            (Some(_), true) => bail!(
                "--ray-address (vLLM on Ray) and --nnodes/--node-rank/--dist-init-addr (SGLang) do not go together"
            ),
            (Some(a), false) => Ok(Some(MultiNode::Ray { address: a.clone() })),
            (None, true) => {
                let (Some(nnodes), Some(dist_init_addr)) = (self.nnodes, self.dist_init_addr.clone())
                else {
                    bail!("SGLang across machines needs --nnodes and --dist-init-addr (and --node-rank on each node but the first)")
                };
                Ok(Some(MultiNode::Sglang {
                    nnodes,
                    node_rank: self.node_rank.unwrap_or(0),
                    dist_init_addr,
                }))
            }
            (None, false) => Ok(None),
        }
    }

    /// The spec for `model` on `kind`, with a free port and a fresh key.
    pub fn spec(&self, kind: EngineKind, model: &str, served_name: &str) -> Result<LaunchSpec> {
        self.spec_checked(kind, model, served_name, true)
    }

    /// A watch's spec: its model (each checkpoint) is set per start, so the run folder is not checked as one.
    pub fn watch_spec(&self, kind: EngineKind, run_dir: &Path, name: &str) -> Result<LaunchSpec> {
        if kind == EngineKind::LlamaServer {
            bail!(
                "watch runs checkpoint folders, and llama-server reads only .gguf files; watch on --engine vllm or \
                 sglang (or on vibecheck's own engine)"
            );
        }
        let mut spec = self.spec_checked(kind, &run_dir.to_string_lossy(), name, false)?;
        spec.check_files = true;
        spec.swappable = true;
        Ok(spec)
    }

    fn spec_checked(
        &self,
        kind: EngineKind,
        model: &str,
        served_name: &str,
        check_files: bool,
    ) -> Result<LaunchSpec> {
        let mut spec = LaunchSpec::new(kind, model, served_name);
        spec.check_files = check_files;
        spec.tensor_parallel = self.tensor_parallel;
        spec.pipeline_parallel = self.pipeline_parallel;
        spec.gpus = self.gpus.clone();
        spec.max_model_len = self.max_model_len;
        spec.multi_node = self.multi_node()?;
        spec.engine_args = self.engine_args.clone();
        spec.program = self.engine_bin.clone();
        spec.port = vibecheck_engines::launch::free_port()?;
        spec.api_key = vibecheck_engines::launch::random_key();
        spec.validate()?;
        Ok(spec)
    }

    pub fn ready_timeout(&self) -> Result<Duration> {
        if !(self.engine_timeout.is_finite() && self.engine_timeout > 0.0) {
            bail!("--engine-timeout must be a positive number of seconds");
        }
        Ok(Duration::from_secs_f64(self.engine_timeout))
    }

    /// Where `source` runs: the engine asked for, or for `auto` vibecheck's own engine when it can load the
    /// checkpoint and it fits this machine's memory, vLLM otherwise (logged with the reason).
    pub fn placement(
        &self,
        source: &str,
        opts: &vibecheck_engine::LoadOptions,
    ) -> Result<Placement> {
        let Some(name) = self.engine.as_deref() else {
            return Ok(Placement::Local);
        };
        match name.to_ascii_lowercase().as_str() {
            "local" => Ok(Placement::Local),
            "auto" => {
                let (placement, why) = auto_choice(source, opts, self);
                eprintln!("--engine auto: {why}");
                tracing::info!("--engine auto: {why}");
                Ok(placement)
            }
            other => Ok(Placement::Engine(EngineKind::parse(other)?)),
        }
    }
}

/// `--engine auto`'s choice and its reason.
fn auto_choice(
    source: &str,
    opts: &vibecheck_engine::LoadOptions,
    args: &EngineArgs,
) -> (Placement, String) {
    if args.tensor_parallel * args.pipeline_parallel > 1
        || args.ray_address.is_some()
        || args.nnodes.is_some()
    {
        return (
            Placement::Engine(EngineKind::Vllm),
            "vLLM, because parallelism across GPUs or machines was asked for".into(),
        );
    }
    let resolved = vibecheck_checkpoint::resolve(source)
        .map_err(vibecheck_engine::EngineError::from)
        .and_then(|s| vibecheck_engine::loader::preflight(&s, opts).map(|()| s));
    let s = match resolved {
        Ok(s) => s,
        Err(e) => {
            return (
                Placement::Engine(EngineKind::Vllm),
                format!("vLLM, because vibecheck's engine cannot load {source}: {e}"),
            )
        }
    };
    let size = if s.path.is_dir() {
        vibecheck_checkpoint::run::folder_size(&s.path)
    } else {
        std::fs::metadata(&s.path).map_or(0, |m| m.len())
    };
    // On the CPU 16-bit weights are widened to float32 as they load: twice their size on disk.
    let is_gguf = s.kind == vibecheck_checkpoint::SourceKind::Gguf;
    let need = if opts.device.is_cpu() && !is_gguf && opts.quantize.is_none() {
        size.saturating_mul(2)
    } else {
        size
    };
    match available_memory() {
        Some(avail) if need as f64 > 0.8 * avail as f64 => (
            Placement::Engine(EngineKind::Vllm),
            format!(
                "vLLM, because {source} needs about {:.1} GB loaded and this machine has {:.1} GB available",
                need as f64 / 1e9,
                avail as f64 / 1e9
            ),
        ),
        Some(avail) => (
            Placement::Local,
            format!(
                "vibecheck's own engine, because {source} needs about {:.1} GB loaded and this machine has {:.1} GB \
                 available",
                need as f64 / 1e9,
                avail as f64 / 1e9
            ),
        ),
        None => (
            Placement::Local,
            "vibecheck's own engine (this system does not report its available memory)".into(),
        ),
    }
}

/// `MemAvailable` from /proc/meminfo, in bytes.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The name a launched engine answers to: the checkpoint folder's or file's name, or the hub id.
pub fn served_name(source: &str) -> String {
    let p = Path::new(source);
    if p.exists() {
        let stem = if p.is_file() {
            p.file_stem()
        } else {
            p.file_name()
        };
        if let Some(s) = stem {
            return s.to_string_lossy().into_owned();
        }
    }
    source.to_string()
}

/// Starts the engine, with a spinner until it is ready.
pub fn start(spec: &LaunchSpec, timeout: Duration) -> Result<vibecheck_engines::Engine> {
    eprintln!(
        "starting {} on {} (port {}; its log follows, prefixed [{}]):\n  {}",
        spec.kind.name(),
        spec.model,
        spec.port,
        spec.kind.name(),
        spec.command()?.shell(&spec.api_key)
    );
    let engine = vibecheck_engines::Engine::start(spec, vibecheck_engines::Relay::Stderr, timeout)
        .with_context(|| format!("starting {} on {}", spec.kind.name(), spec.model))?;
    eprintln!(
        "{} is ready at {} (pid {}), serving {:?}",
        spec.kind.name(),
        engine.base_url(),
        engine.pid(),
        engine.served_name
    );
    Ok(engine)
}

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
fn price_table(file: Option<&Path>) -> Result<vibecheck_engines::prices::PriceTable> {
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

/// (hardware, $/hour, source, checked on) from the flags and the table.
fn hourly_price(
    a_gpu: Option<&str>,
    gpus: usize,
    per_hour: Option<f64>,
    table: &vibecheck_engines::prices::PriceTable,
) -> Result<(String, f64, String, String)> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    match (per_hour, a_gpu) {
        (Some(p), _) if !(p.is_finite() && p > 0.0) => {
            bail!("--price-per-hour must be a positive number")
        }
        (Some(p), Some(g)) => Ok((
            format!("{gpus} × {g}"),
            p,
            "--price-per-hour".into(),
            "given".into(),
        )),
        (Some(p), None) => Ok((
            "this machine".into(),
            p,
            "--price-per-hour".into(),
            "given".into(),
        )),
        (None, Some(g)) => {
            if gpus == 0 {
                bail!("--gpus must be at least 1");
            }
            let row = table.gpu(g)?;
            Ok((
                format!("{gpus} × {} ({})", row.name, row.provider),
                row.usd_per_hour * gpus as f64,
                row.source.clone(),
                row.checked_on.clone(),
            ))
        }
        (None, None) => {
            let row = table.cpu().context(
                "the price table has no CPU row: give --price-per-hour (this machine's $/hour) or --gpu",
            )?;
            Ok((
                format!(
                    "this machine: {threads} vCPU at the price of {} ({})",
                    row.name, row.provider
                ),
                row.usd_per_vcpu_hour * threads as f64,
                row.source.clone(),
                row.checked_on.clone(),
            ))
        }
    }
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
    use vibecheck_engines::cost::{load_test, LatencyTarget, LoadSettings, Report};
    let target = LatencyTarget::parse(&a.latency)?;
    let table = price_table(a.prices.as_deref())?;
    let (hardware, usd_per_hour, source, checked_on) =
        hourly_price(a.gpu.as_deref(), a.gpus, a.price_per_hour, &table)?;
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
        &model,
        &base_url,
        &hardware,
        (usd_per_hour, &source, &checked_on),
        &target,
        &settings,
        levels,
        &table,
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
    let table = price_table(a.prices.as_deref())?;
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
