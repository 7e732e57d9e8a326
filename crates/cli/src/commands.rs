//! Command-line arguments and the commands behind them. The work itself lives in the library crates.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use vibecheck_engine::{
    parse_device, parse_dtype, ChatMessage, Generation, LoadOptions, Model, Prompt, SamplingParams,
};

#[derive(Parser)]
#[command(
    name = "vibecheck",
    version,
    about = "Chat with, watch and judge training checkpoints."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate one answer and print only its text on stdout (statistics go to stderr).
    Generate(GenerateArgs),
    /// Chat with a model in the terminal; the conversation is kept until /reset.
    Chat(ChatArgs),
    /// Write a GGUF file out as a Hugging Face checkpoint folder.
    Convert(ConvertArgs),
    /// Measure load time, prefill and decode speed.
    Bench(BenchArgs),
    /// The demo: a synthetic training run made from the bundled SmolLM2 model, watched and served.
    Demo(crate::runs::DemoArgs),
    /// Run a prompt suite on every checkpoint of a training run as it appears, storing every answer.
    Watch(crate::runs::WatchArgs),
    /// What changed at a run's newest checkpoint, with a word diff for one prompt.
    Log(crate::runs::LogArgs),
    /// Write stored answers as jsonl, csv or alpaca_eval's model_outputs.json (or judge verdicts).
    Export(crate::runs::ExportArgs),
    /// Grade a watched run with any OpenAI-compatible judge: single ratings or position-swapped pairs.
    Judge(crate::judging::JudgeArgs),
    /// Write a run's charts (judge score, win rates, answer length, arena rating by step) as SVG files.
    Plot(crate::judging::PlotArgs),
    /// Serve checkpoints, GGUF files, hub ids and training-run folders behind an OpenAI-compatible API.
    Serve(ServeArgs),
    /// Measure what --quantize costs: perplexity, agreement with the unquantized model, size and speed.
    QuantEval(crate::quality::QuantEvalArgs),
    /// What serving a model costs: a load test at rising concurrency, $/hour, $/1M tokens and break-even against
    /// hosted APIs (prices with their sources and dates).
    Cost(crate::cost::CostArgs),
    /// Write a SkyPilot task, a Slurm script or Helm values that keep a checkpoint up as a demo.
    Deploy(crate::deploy::DeployArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Checkpoint folders, GGUF files, hub ids, or run folders (sub-folders `checkpoint-N`, `step_N`, ...).
    #[arg(required_unless_present = "remote")]
    sources: Vec<String>,
    /// Also serve a remote OpenAI-compatible endpoint (vLLM, TGI, llama.cpp server, a hosted API) as one of
    /// the models: `id=NAME,url=BASE_URL[,model=UPSTREAM_NAME][,key-env=ENV_VAR_WITH_THE_KEY]`. Repeatable.
    #[arg(long, value_name = "SPEC", value_parser = parse_remote)]
    remote: Vec<vibecheck_server::RemoteEndpoint>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (the URL printed says which).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests generating at once; each model decodes its running requests together in one batch
    /// (continuous batching: requests join and leave it between tokens).
    #[arg(long, default_value_t = 8)]
    max_concurrent: usize,
    /// Prompt tokens prefilled per step for requests joining a running batch (smaller: running streams slow
    /// down less while a long prompt comes in; larger: the new request's first token comes sooner).
    #[arg(long, default_value_t = 64)]
    prefill_chunk: usize,
    /// Requests that may wait for a slot before new ones get 429.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// The largest `max_tokens` a request may ask for (at most 32768, the engine's limit; the prompt and
    /// `max_tokens` must also fit the model's context).
    #[arg(long, default_value_t = 4096)]
    max_tokens_cap: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Round safetensors checkpoints' weights into q8_0, q4_1 or q4_0 as they load (CPU).
    #[arg(long)]
    quantize: Option<vibecheck_engine::kernels::Quantize>,
    /// KV cache precision on the CPU: f32 (default: the compute dtype) or f16 (half the memory and reading per
    /// token of a long context, ~3 significant digits per key and value and none beyond ±65504, as llama.cpp's
    /// default).
    #[arg(long, value_parser = crate::args::parse_kv_cache)]
    kv_cache: Option<vibecheck_engine::DType>,
    /// The base model of LoRA adapter checkpoints (a folder, .gguf file or cached hub id), in place of the
    /// `base_model_name_or_path` their adapter_config.json names. Every adapter over one base shares it.
    #[arg(long)]
    base: Option<String>,
    /// Keep loaded models under this size (e.g. 8G, 512M), unloading the least recently used.
    #[arg(long, value_parser = parse_size)]
    memory_budget: Option<u64>,
    #[command(flatten)]
    access: crate::args::AccessArgs,
    /// On Ctrl-C or SIGTERM, seconds running generations may go on before they are cut (queued requests get 503
    /// at once); a launched engine then gets SIGTERM, and SIGKILL if it is still running this long after.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    shutdown_grace: f64,
    #[command(flatten)]
    engine: crate::engines::EngineArgs,
    /// With --engine: print the command that would start the engine, and exit.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: crate::args::ModelArgs,
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    system: Option<String>,
    /// Skip the chat template and feed the prompt as is.
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    sampling: crate::args::SamplingArgs,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: crate::args::ModelArgs,
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: crate::args::SamplingArgs,
}

#[derive(Args)]
struct ConvertArgs {
    /// A .gguf file (written out as a Hugging Face folder), or a checkpoint folder whose weights are
    /// pytorch_model.bin files (written out as safetensors; the pickles are read as data, never run).
    source: PathBuf,
    out_dir: PathBuf,
    /// The weights' dtype for a GGUF source (f32, bf16, f16); a .bin folder keeps its stored dtypes.
    #[arg(long)]
    dtype: Option<String>,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: crate::args::ModelArgs,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens decoded for the decode measurement.
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Also measure the aggregate decode speed of this many sequences decoded together in one batch.
    #[arg(long)]
    batch: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // candle looks up its thread count on every matrix product and, without this variable, reads
        // /proc/cpuinfo each time (about 5 % of a decode step). The value is rayon's own default.
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIBECHECK_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Generate(a) => generate(a),
        Command::Chat(a) => chat(a),
        Command::Convert(a) => convert(a),
        Command::Bench(a) => bench(a),
        Command::Demo(a) => crate::runs::demo(a),
        Command::Watch(a) => crate::runs::watch(a),
        Command::Log(a) => crate::runs::log(a),
        Command::Export(a) => crate::runs::export(a),
        Command::Judge(a) => crate::judging::judge(a),
        Command::Plot(a) => crate::judging::plot(a),
        Command::Serve(a) => serve(a),
        Command::QuantEval(a) => crate::quality::quant_eval(a),
        Command::Cost(a) => crate::cost::cost(a),
        Command::Deploy(a) => crate::deploy::deploy(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`| head`): nothing more to say to anyone.
        Err(e) if crate::output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_stats(g: &Generation) {
    let t = &g.timings;
    eprintln!(
        "[{} prompt + {} generated tokens, finish: {}, seed {} | load {:.0} ms, first token {:.0} ms, prefill {:.1} tok/s, decode {:.1} tok/s]",
        g.usage.prompt_tokens,
        g.usage.completion_tokens,
        g.finish_reason.as_str(),
        g.seed,
        t.load_ms,
        t.first_token_ms,
        t.prefill_tokens_per_s,
        t.decode_tokens_per_s
    );
}

fn stream_to_stdout(model: &Model, prompt: &Prompt, params: &SamplingParams) -> Result<Generation> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let g = model.generate_stream(prompt, params, &mut |piece| {
        out.write_all(piece.as_bytes()).is_ok() && out.flush().is_ok()
    })?;
    Ok(g)
}

fn generate(a: GenerateArgs) -> Result<()> {
    let model = a.model.load()?;
    let params = a.sampling.params(&model);
    let prompt = if a.raw {
        if a.system.is_some() {
            bail!(
                "--system needs the chat template; drop --raw or put the system text in the prompt"
            );
        }
        Prompt::Text(a.prompt)
    } else {
        let mut messages = Vec::new();
        if let Some(s) = &a.system {
            messages.push(ChatMessage::new("system", s));
        }
        messages.push(ChatMessage::new("user", &a.prompt));
        Prompt::Chat(messages)
    };
    let g = stream_to_stdout(&model, &prompt, &params)?;
    outln!();
    print_stats(&g);
    Ok(())
}

fn chat(a: ChatArgs) -> Result<()> {
    let model = a.model.load()?;
    let params = a.sampling.params(&model);
    eprintln!(
        "Chatting with {} (load {:.0} ms). Type a message; /reset clears the conversation, /exit or Ctrl-D quits.",
        model.source.name,
        model.load_time.as_secs_f64() * 1000.0
    );
    let mut history: Vec<ChatMessage> = Vec::new();
    if let Some(s) = &a.system {
        history.push(ChatMessage::new("system", s));
    }
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        std::io::stderr().flush().ok();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.retain(|m| m.role == "system");
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage::new("user", line));
        match stream_to_stdout(&model, &Prompt::Chat(history.clone()), &params) {
            Ok(g) => {
                outln!();
                print_stats(&g);
                history.push(ChatMessage::new("assistant", &g.text));
            }
            Err(e) => {
                history.pop();
                eprintln!("error: {e}");
            }
        }
    }
    Ok(())
}

fn convert(a: ConvertArgs) -> Result<()> {
    let bar = indicatif::ProgressBar::new_spinner()
        .with_message(format!("converting {}", a.source.display()));
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let (report, kind) = if a.source.is_dir() {
        if a.dtype.is_some() {
            bail!("--dtype is for GGUF sources; a .bin folder is converted in its stored dtypes");
        }
        let r = vibecheck_engine::convert::bin_to_safetensors(&a.source, &a.out_dir)
            .with_context(|| format!("converting {}", a.source.display()))?;
        (r, "safetensors".to_string())
    } else {
        let name = a.dtype.as_deref().unwrap_or("f32");
        let r = vibecheck_engine::convert::gguf_to_hf(&a.source, &a.out_dir, parse_dtype(name)?)
            .with_context(|| format!("converting {}", a.source.display()))?;
        (r, format!("{name} weights"))
    };
    bar.finish_and_clear();
    eprintln!(
        "wrote {} ({} tensors, {:.1} MB of {kind})",
        a.out_dir.display(),
        report.tensors,
        report.bytes as f64 / 1e6,
    );
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let model = a.model.load()?;
    let load_s = started.elapsed().as_secs_f64();
    let r = vibecheck_engine::generate::bench(&model, a.prompt_tokens, a.decode_tokens)?;
    let batched = match a.batch {
        Some(n) => Some(vibecheck_engine::generate::bench_batch(
            &model,
            a.prompt_tokens,
            a.decode_tokens,
            n,
        )?),
        None => None,
    };
    let threads = a
        .model
        .threads
        .map_or_else(|| "all".to_string(), |t| t.to_string());
    const MIB: f64 = 1024.0 * 1024.0;
    let weights_mib = model.packed_bytes as f64 / MIB;
    let peak_mib = peak_resident_bytes().map(|b| b as f64 / MIB);
    if a.json {
        outln!(
            "{}",
            serde_json::json!({
                "model": a.model.model, "threads": threads, "load_s": load_s,
                "prefill_tokens": a.prompt_tokens, "prefill_tok_s": r.prefill_tok_s,
                "decode_tokens": a.decode_tokens, "decode_tok_s": r.decode_tok_s,
                "first_token_s": load_s + r.first_token_s,
                "batch": a.batch, "batch_decode_tok_s": batched,
                "weights_mib": weights_mib, "peak_resident_mib": peak_mib,
            })
        );
    } else {
        outln!("model           {}", a.model.model);
        outln!("threads         {threads}");
        outln!("load            {:.3} s", load_s);
        outln!("load→1st token  {:.3} s", load_s + r.first_token_s);
        outln!(
            "prefill         {:.1} tok/s ({} tokens)",
            r.prefill_tok_s,
            a.prompt_tokens
        );
        outln!(
            "decode          {:.1} tok/s ({} tokens)",
            r.decode_tok_s,
            a.decode_tokens
        );
        if let (Some(n), Some(b)) = (a.batch, batched) {
            outln!("decode, batch {n:<2} {b:.1} tok/s (all sequences together)");
        }
        match peak_mib {
            Some(p) => outln!(
                "memory          {p:.0} MiB peak resident ({weights_mib:.0} MiB of weights as packed)"
            ),
            None => outln!("memory          {weights_mib:.0} MiB of weights as packed"),
        }
    }
    Ok(())
}

/// This process's peak resident memory (`VmHWM`), where the system reports it (Linux).
fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `8G`, `512M`, `64K` or a plain number of bytes.
fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{text:?}: use a number with K, M, G or T")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 8G or 512M"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("{text:?} must be positive"));
    }
    Ok((n * mult as f64) as u64)
}

fn parse_remote(spec: &str) -> Result<vibecheck_server::RemoteEndpoint, String> {
    vibecheck_server::RemoteEndpoint::parse(spec)
}

fn serve(a: ServeArgs) -> Result<()> {
    let opts = LoadOptions {
        device: parse_device(&a.device)?,
        quantize: a.quantize,
        kv_cache: a.kv_cache,
        base: a.base.clone(),
        ..LoadOptions::default()
    };
    // With --engine, the one source runs on the engine vibecheck starts (or, for `auto`, perhaps on ours).
    let mut engine = None;
    let mut local_sources = a.sources.clone();
    if a.engine.wants_engine() {
        let [source] = &a.sources[..] else {
            bail!(
                "--engine serves one checkpoint (an engine holds one model); give one source, or start one \
                 vibecheck per model"
            );
        };
        if let crate::engines::Placement::Engine(kind) = a.engine.placement(source, &opts)? {
            let spec = a
                .engine
                .spec(kind, source, &crate::engines::served_name(source))?;
            if a.dry_run {
                eprintln!(
                    "# vibecheck would run this (on 127.0.0.1:{}; it gives the engine a fresh key, shown as \
                     $VIBECHECK_ENGINE_KEY):",
                    spec.port
                );
                outln!("{}", spec.command()?.shell(&spec.api_key));
                return Ok(());
            }
            engine = Some(std::sync::Arc::new(crate::engines::start(
                &spec,
                a.engine.ready_timeout()?,
            )?));
            local_sources.clear();
        }
    }
    if a.dry_run && engine.is_none() {
        bail!("--dry-run prints an engine's command: vibecheck's own engine was chosen, so there is none to print");
    }
    for s in &local_sources {
        crate::args::fetch_if_hub_id(s)?;
    }
    let registry = vibecheck_server::Registry::from_sources(&local_sources, opts)
        .context("reading the sources")?
        .with_batching(vibecheck_engine::BatcherSettings {
            max_batch: a.max_concurrent.max(1),
            prefill_chunk: a.prefill_chunk.max(1),
        })
        .with_memory_budget(a.memory_budget);
    for r in a.remote {
        registry.add_remote(r)?;
    }
    if let Some(e) = &engine {
        registry.add_engine(e.clone())?;
    }
    if registry.entries().is_empty() {
        bail!("no complete checkpoint found in {}", a.sources.join(", "));
    }
    let mut settings = vibecheck_server::ServeSettings {
        host: a.host,
        port: a.port,
        max_concurrent: a.max_concurrent.max(1),
        queue: a.queue,
        max_tokens_cap: a.max_tokens_cap,
        ..Default::default()
    };
    let limit = vibecheck_engine::sampling::limits::MAX_TOKENS;
    if !(1..=limit).contains(&settings.max_tokens_cap) {
        bail!("--max-tokens-cap must be between 1 and {limit}");
    }
    a.access.apply(&mut settings);
    if !(a.shutdown_grace.is_finite() && (0.0..=86400.0).contains(&a.shutdown_grace)) {
        bail!("--shutdown-grace must be between 0 and 86400 seconds");
    }
    settings.shutdown_grace = std::time::Duration::from_secs_f64(a.shutdown_grace);
    settings.check_exposure().map_err(anyhow::Error::msg)?;
    let models: Vec<String> = registry.entries().iter().map(|e| e.id.clone()).collect();
    let state = vibecheck_server::AppState::new(registry, settings);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let served = runtime.block_on(vibecheck_server::serve(state, |addr| {
        eprintln!("serving {} model(s): {}", models.len(), models.join(", "));
        outln!("http://{addr}/v1");
        let _ = std::io::stdout().flush();
    }));
    // The server has drained (or failed): the engine goes with it, its whole process group.
    if let Some(e) = engine {
        e.stop(settings_grace(a.shutdown_grace));
    }
    served?;
    Ok(())
}

fn settings_grace(secs: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(secs.clamp(1.0, 86400.0))
}
