//! Arguments several commands share, declared once and flattened into each.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use vibecheck_engine::{
    parse_device, parse_dtype, LoadOptions, Model, SamplingOverrides, SamplingParams,
    DEFAULT_MAX_TOKENS,
};
use vibecheck_store::Store;

/// Who may use a server: its API key, and the explicit opt-out needed to serve beyond this machine without one.
#[derive(Args, Clone, Debug, Default)]
pub struct AccessArgs {
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long, env = "VIBECHECK_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Serve a non-loopback --host without --api-key (refused otherwise): anyone who can reach the port can
    /// generate, read every stored answer and vote.
    #[arg(long)]
    pub insecure_no_key: bool,
}

impl AccessArgs {
    /// The settings' key (an empty key counts as none) and opt-out.
    pub fn apply(&self, settings: &mut vibecheck_server::ServeSettings) {
        settings.api_key = self.api_key.clone().filter(|k| !k.is_empty());
        settings.insecure_no_key = self.insecure_no_key;
    }
}

/// Where the store lives unless `--db` or `VIBECHECK_DB` says otherwise.
pub const DEFAULT_DB: &str = "vibecheck.db";

/// The store a command works on (`--db`).
#[derive(Args, Clone, Debug)]
pub struct DbArg {
    /// The SQLite store (created by `vibecheck watch`).
    #[arg(long = "db", env = "VIBECHECK_DB", default_value = DEFAULT_DB, value_name = "PATH")]
    pub path: PathBuf,
}

impl DbArg {
    /// The store, created (with its folder) when it does not exist yet: for commands that write a run.
    pub fn open(&self) -> Result<Store> {
        open_store(&self.path)
    }

    /// The store for a command that only reads or adds to what a watch stored: a path that does not exist is an
    /// error (rather than a new, empty database that then has nothing to show).
    pub fn open_existing(&self) -> Result<Store> {
        if !self.path.exists() {
            bail!(
                "there is no store at {}: `vibecheck watch RUN_DIR` creates one there (or pass --db with the path a \
                 watch wrote to)",
                self.path.display()
            );
        }
        open_store(&self.path)
    }
}

/// The store at `path`, created when missing, with the path in any error.
pub fn open_store(path: &Path) -> Result<Store> {
    Store::open(path).with_context(|| format!("opening the store {}", path.display()))
}

/// Which model to load and how: `generate`, `chat` and `bench`.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A checkpoint folder, a .gguf file, or a hub id in the local Hugging Face cache.
    pub model: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: f32, bf16 or f16 (default: f32 on CPU, the stored dtype on GPU).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Threads for the CPU kernels (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Round a safetensors checkpoint's weights into q8_0, q4_1 or q4_0 as it loads (CPU; `vibecheck
    /// quant-eval` measures the quality cost).
    #[arg(long)]
    pub quantize: Option<vibecheck_engine::kernels::Quantize>,
    /// KV cache precision on the CPU: f32 (default: the compute dtype) or f16 (half the memory and reading per
    /// token of a long context, ~3 significant digits per key and value and none beyond ±65504, as llama.cpp's
    /// default).
    #[arg(long, value_parser = parse_kv_cache)]
    pub kv_cache: Option<vibecheck_engine::DType>,
    /// The base model of LoRA adapter checkpoints (a folder, .gguf file or cached hub id), in place of the
    /// `base_model_name_or_path` their adapter_config.json names. Every adapter over one base shares it.
    #[arg(long)]
    pub base: Option<String>,
}

/// Sampling flags: a thin adapter over the engine's [`SamplingOverrides`] (a new knob is a field there and a flag
/// here), layered over the checkpoint's `generation_config.json`.
#[derive(Args, Clone)]
pub struct SamplingArgs {
    #[arg(long, default_value_t = DEFAULT_MAX_TOKENS)]
    pub max_tokens: usize,
    /// 0 = greedy (the default unless generation_config.json asks to sample).
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub min_p: Option<f32>,
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    #[arg(long)]
    pub frequency_penalty: Option<f32>,
    #[arg(long)]
    pub presence_penalty: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop before this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens until --max-tokens (for timing runs).
    #[arg(long)]
    pub ignore_eos: bool,
}

impl ModelArgs {
    /// Loads the model (downloading a hub id that is not cached yet), with `--threads` applied first.
    pub fn load(&self) -> Result<Model> {
        let args = self;
        if let Some(n) = args.threads {
            if n == 0 {
                bail!("--threads must be at least 1");
            }
            // Read lazily by candle's CPU kernels (rayon and gemm), so it must be set before the first tensor op.
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
        fetch_if_hub_id(&args.model)?;
        let opts = LoadOptions {
            device: parse_device(&args.device)?,
            dtype: args.dtype.as_deref().map(parse_dtype).transpose()?,
            quantize: args.quantize,
            kv_cache: args.kv_cache,
            base: args.base.clone(),
            ..LoadOptions::default()
        };
        Model::load(&args.model, &opts).with_context(|| format!("loading {}", args.model))
    }
}

impl SamplingArgs {
    /// The flags that were given, as overrides.
    pub fn overrides(&self) -> SamplingOverrides {
        SamplingOverrides {
            max_tokens: Some(self.max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            seed: self.seed,
            stop: (!self.stop.is_empty()).then(|| self.stop.clone()),
        }
    }

    /// The parameters for `model`: these flags over the checkpoint's defaults over greedy decoding. The engine
    /// checks them against its limits table when generating.
    pub fn params(&self, model: &Model) -> SamplingParams {
        let mut p = self
            .overrides()
            .or(&model.defaults)
            .apply(SamplingParams::default());
        p.ignore_eos = self.ignore_eos;
        p
    }
}

/// Downloads a hub id that is not in the local cache yet, with a progress bar (loading then finds it cached).
pub fn fetch_if_hub_id(spec: &str) -> Result<()> {
    use vibecheck_checkpoint::hub;
    if Path::new(spec).exists() || !hub::looks_like_repo_id(spec) {
        return Ok(());
    }
    let opts = hub::HubOptions::from_env();
    if opts.offline || hub::resolve_in(spec, &opts.caches).is_ok() {
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg:30} {bytes:>10}/{total_bytes:10} {bar:30} {bytes_per_sec}",
        )
        .expect("valid template"),
    );
    hub::download(spec, &opts, &mut |event| match event {
        hub::DownloadEvent::File { name, size } => {
            bar.set_message(name);
            bar.set_length(size.unwrap_or(0));
            bar.set_position(0);
        }
        hub::DownloadEvent::Bytes(done) => bar.set_position(done),
    })
    .with_context(|| format!("downloading {spec}"))?;
    bar.finish_and_clear();
    Ok(())
}

/// `--kv-cache`: float32 or float16.
pub fn parse_kv_cache(name: &str) -> Result<vibecheck_engine::DType, String> {
    match name.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(vibecheck_engine::DType::F32),
        "f16" | "float16" => Ok(vibecheck_engine::DType::F16),
        other => Err(format!(
            "unknown KV cache precision {other:?}; use f32 or f16"
        )),
    }
}

/// Runs the server of `state` on a thread of its own and returns `http://ADDR` once it listens. With
/// `exit_when_done`, the process ends when the server does (a watcher's UI, stopped by Ctrl-C).
pub fn spawn_server(state: vibecheck_server::AppState, exit_when_done: bool) -> Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let tx2 = tx.clone();
        let result = runtime.block_on(vibecheck_server::serve(state, move |addr| {
            let _ = tx2.send(Ok(format!("http://{addr}")));
        }));
        if let Err(e) = result {
            let _ = tx.send(Err(e.to_string()));
        }
        if exit_when_done {
            std::process::exit(0);
        }
    });
    match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(Ok(url)) => Ok(url),
        Ok(Err(e)) => bail!("{e}"),
        Err(_) => bail!("the server did not start within 60 s"),
    }
}
