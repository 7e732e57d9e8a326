//! `vibecheck judge` (grade a watched run with any OpenAI-compatible judge, then print a table per checkpoint) and
//! `vibecheck plot` (the run's charts as SVG files).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use vibecheck_judge::{Baseline, Endpoint, JudgeOptions, JudgePrompts, Mode};

#[derive(Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Single,
    Previous,
    Baseline,
    All,
}

#[derive(Args)]
pub struct JudgeArgs {
    /// The watched run's name.
    run: String,
    #[command(flatten)]
    db: crate::args::DbArg,
    /// The judge's OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1 or https://api.openai.com/v1.
    #[arg(long)]
    judge: String,
    /// The judge's model name at that endpoint.
    #[arg(long)]
    judge_model: String,
    /// Environment variable holding the judge's API key (never passed on the command line).
    #[arg(long)]
    judge_key_env: Option<String>,
    #[arg(long, value_enum, default_value = "single")]
    mode: ModeArg,
    /// For --mode baseline: a checkpoint of this run (checkpoint-100) or of another run (run/checkpoint-100).
    #[arg(long)]
    baseline: Option<String>,
    /// For --mode baseline: an endpoint that answers the suite itself (with --baseline-model).
    #[arg(long)]
    baseline_url: Option<String>,
    #[arg(long)]
    baseline_model: Option<String>,
    #[arg(long)]
    baseline_key_env: Option<String>,
    /// FastChat's judge_prompts.jsonl (or a file in its format); default: vibecheck's own prompts.
    #[arg(long)]
    judge_prompts: Option<PathBuf>,
    /// A suite version (hash prefix); default the newest with answers.
    #[arg(long)]
    suite: Option<String>,
    /// Judge calls in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Seconds before a judge call counts as failed (it is retried twice with backoff).
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// Longest judge reply.
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
}

fn key(var: &Option<String>) -> Result<Option<String>> {
    match var {
        Some(v) => {
            Ok(Some(std::env::var(v).with_context(|| {
                format!("the API key variable ${v} is not set")
            })?))
        }
        None => Ok(None),
    }
}

fn endpoint(url: &str, model: &str, key: Option<String>, a: &JudgeArgs) -> Result<Endpoint> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("{url:?} is not an http(s) URL; give the endpoint's base URL such as http://127.0.0.1:8080/v1");
    }
    let mut e = Endpoint::new(url, model, key);
    e.timeout = Duration::from_secs_f64(a.timeout.max(0.1));
    e.retries = a.retries;
    Ok(e)
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:5.1}%", x * 100.0)
    } else {
        "    –".into()
    }
}

pub fn judge(a: JudgeArgs) -> Result<()> {
    let mode = match a.mode {
        ModeArg::Single => Mode::Single,
        ModeArg::Previous => Mode::Previous,
        ModeArg::Baseline => Mode::Baseline,
        ModeArg::All => Mode::All,
    };
    let baseline = match (&a.baseline, &a.baseline_url) {
        (Some(_), Some(_)) => bail!("give --baseline or --baseline-url, not both"),
        (Some(ck), None) => Some(Baseline::Checkpoint(ck.clone())),
        (None, Some(url)) => {
            let model = a
                .baseline_model
                .as_deref()
                .context("--baseline-url needs --baseline-model")?;
            Some(Baseline::Endpoint(endpoint(
                url,
                model,
                key(&a.baseline_key_env)?,
                &a,
            )?))
        }
        (None, None) if matches!(mode, Mode::Baseline) => {
            bail!("--mode baseline needs --baseline CHECKPOINT or --baseline-url URL --baseline-model NAME")
        }
        (None, None) => None,
    };
    let prompts = match &a.judge_prompts {
        Some(p) => JudgePrompts::load(p)?,
        None => JudgePrompts::builtin(),
    };
    let judge = endpoint(&a.judge, &a.judge_model, key(&a.judge_key_env)?, &a)?;
    if !judge.is_local() {
        eprintln!(
            "note: this sends the suite's prompts and the run's answers to {} (you named it)",
            judge.base_url
        );
    }
    let mut store = a.db.open_existing()?;
    let opts = JudgeOptions {
        run: a.run.clone(),
        suite: a.suite.clone(),
        mode,
        baseline,
        judge,
        prompts,
        concurrency: a.concurrency.max(1),
        max_tokens: a.max_tokens,
    };
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("judging {bar:30} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    let report = vibecheck_judge::judge_run(&mut store, &opts, &mut |done, total, label| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(label.to_string());
    })?;
    bar.finish_and_clear();
    eprintln!(
        "{} asked ({} verdicts, {} parse failures, {} errors), {} already judged",
        report.asked, report.ok, report.parse_failures, report.errors, report.cached
    );
    let s = vibecheck_judge::summarize(&store, &a.run, Some(&opts.judge.id()))?;
    print_summary(&s);
    Ok(())
}

pub fn print_summary(s: &vibecheck_judge::Summary) {
    outln!(
        "run {} · judge {}",
        s.run,
        s.judge.as_deref().unwrap_or("none")
    );
    outln!(
        "{:<22} {:>6} {:>13} {:>22} {:>8} {:>8}  opponent",
        "checkpoint",
        "words",
        "score ± se",
        "win (tie-adj) ± se",
        "LC win",
        "n"
    );
    for c in &s.checkpoints {
        let score = c
            .score
            .map(|(m, se, n)| format!("{m:5.2} ± {se:4.2} ({n})"))
            .unwrap_or_else(|| "–".into());
        if c.versus.is_empty() {
            outln!("{:<22} {:>6.0} {:>13}", c.checkpoint, c.mean_words, score);
        }
        for v in &c.versus {
            outln!(
                "{:<22} {:>6.0} {:>13} {:>13} ± {:>5} {:>8} {:>8}  {} ({})",
                c.checkpoint,
                c.mean_words,
                score,
                pct(v.win.tie_adjusted),
                pct(v.win.se).trim(),
                v.length_controlled
                    .map(|l| pct(l.win_rate))
                    .unwrap_or_else(|| "–".into()),
                v.win.n,
                v.opponent,
                v.relation
            );
        }
    }
    for c in &s.checkpoints {
        for v in &c.versus {
            if let Some(l) = v.length_controlled {
                if l.length_coefficient.abs() > 0.5 {
                    outln!(
                        "  {} vs {}: the judge favours {} answers (length coefficient {:+.2}; raw − LC = {:+.1} points)",
                        c.checkpoint,
                        v.opponent,
                        if l.length_coefficient > 0.0 { "longer" } else { "shorter" },
                        l.length_coefficient,
                        l.length_bias * 100.0
                    );
                }
            }
        }
    }
    for (flag, n) in &s.flags {
        println!(
            "{n} verdict{} flagged: {flag} (a token quoted from an answer never decides its verdict)",
            if *n == 1 { "" } else { "s" }
        );
    }
    if !s.failures.is_empty() {
        outln!(
            "{} judge calls gave no verdict (stored with the raw reply; none counts as a score):",
            s.failures.len()
        );
        for f in s.failures.iter().take(10) {
            let raw: String = f.raw.chars().take(100).collect();
            outln!(
                "  {} · {} · turn {} · {}: {}",
                f.checkpoint,
                f.prompt_id,
                f.turn + 1,
                f.status,
                raw.replace('\n', " ")
            );
        }
    }
}

#[derive(Args)]
pub struct PlotArgs {
    run: String,
    #[command(flatten)]
    db: crate::args::DbArg,
    /// Folder for the SVG files.
    #[arg(long, short, default_value = "plots")]
    out: PathBuf,
    /// Which judge's verdicts (model@url); default the one with most verdicts.
    #[arg(long)]
    judge: Option<String>,
}

pub fn plot(a: PlotArgs) -> Result<()> {
    let store = a.db.open_existing()?;
    let s = vibecheck_judge::summarize(&store, &a.run, a.judge.as_deref())?;
    let arena = vibecheck_judge::arena::leaderboard(&store.voted_battles()?);
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    for (name, svg) in vibecheck_judge::plot::run_charts(&s, &arena) {
        let path = a.out.join(format!("{name}.svg"));
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        outln!("{}", path.display());
    }
    Ok(())
}
