//! The engine flags `serve` and `watch` share (`--engine vllm|sglang|llama-server|auto|local` and the
//! parallelism, GPUs and pass-through arguments), `--engine auto`'s choice, and starting an engine. The `cost` and
//! `deploy` commands (`cost.rs`, `deploy.rs`) use them.

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

/// The name a launched engine answers to: the id vibecheck's own engine would serve the checkpoint under (its
/// folder's or file's name), or the hub id as given (never resolved here: that could download it).
pub fn served_name(source: &str) -> String {
    if Path::new(source).exists() {
        if let Ok(s) = vibecheck_checkpoint::resolve(source) {
            return s.name;
        }
    }
    source.to_string()
}

/// Starts the engine, printing the command it runs and where it is once ready.
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
