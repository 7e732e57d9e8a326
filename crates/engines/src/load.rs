//! The bounded load test behind `vibecheck cost`: streamed chat requests of one shape (3 prompt tokens per
//! generated one by default, `ignore_eos` so every answer is as long as asked) at rising concurrency against any
//! OpenAI-compatible endpoint, each request's time to first token and every gap between tokens after it, the
//! engine's own token counters around each level, and the latency target a level must meet.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use vibecheck_client::{Client, Timeouts};

use crate::EngineError;

/// A latency target: limits on time to first token and inter-token latency at a percentile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyTarget {
    /// (percentile, seconds).
    pub ttft: Option<(u8, f64)>,
    pub itl: Option<(u8, f64)>,
}

impl Default for LatencyTarget {
    fn default() -> Self {
        Self {
            ttft: Some((99, 2.0)),
            itl: Some((99, 0.1)),
        }
    }
}

impl LatencyTarget {
    /// `p99-ttft=2s,itl=50ms`: each key is `ttft` or `itl`, optionally after `p50-`, `p90-`, `p95-` or `p99-`
    /// (p99 when left out); each value a number of `s` or `ms`.
    pub fn parse(spec: &str) -> Result<Self, EngineError> {
        let mut t = Self {
            ttft: None,
            itl: None,
        };
        let bad = |m: String| EngineError::Config(m);
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                bad(format!(
                    "{part:?} in --latency is not key=value (such as p99-ttft=2s,itl=50ms)"
                ))
            })?;
            let (pct, what) = match key.trim().split_once('-') {
                Some((p, w)) => (
                    p.strip_prefix('p')
                        .and_then(|n| n.parse::<u8>().ok())
                        .filter(|n| [50, 90, 95, 99].contains(n))
                        .ok_or_else(|| {
                            bad(format!(
                                "{p:?} in --latency is not a percentile; use p50, p90, p95 or p99"
                            ))
                        })?,
                    w,
                ),
                None => (99, key.trim()),
            };
            let secs = parse_duration(value.trim()).ok_or_else(|| {
                bad(format!(
                    "{value:?} in --latency is not a duration such as 2s or 50ms"
                ))
            })?;
            match what {
                "ttft" => t.ttft = Some((pct, secs)),
                "itl" => t.itl = Some((pct, secs)),
                other => {
                    return Err(bad(format!(
                        "{other:?} in --latency is not a latency; the keys are ttft (time to first token) and itl \
                         (inter-token latency)"
                    )))
                }
            }
        }
        if t.ttft.is_none() && t.itl.is_none() {
            return Err(bad(
                "--latency names no limit (such as p99-ttft=2s,itl=50ms)".into(),
            ));
        }
        Ok(t)
    }

    /// `p99 TTFT ≤ 2 s, p99 ITL ≤ 100 ms`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some((p, s)) = self.ttft {
            parts.push(format!("p{p} TTFT ≤ {}", show_secs(s)));
        }
        if let Some((p, s)) = self.itl {
            parts.push(format!("p{p} ITL ≤ {}", show_secs(s)));
        }
        parts.join(", ")
    }

    /// Whether a level's latencies meet the target (a level without an ITL sample, every answer one token long,
    /// meets an ITL limit).
    pub fn met_by(&self, level: &Level) -> bool {
        let ok = |limit: Option<(u8, f64)>, values: &[f64]| match limit {
            None => true,
            Some((p, s)) => percentile(values, p).is_none_or(|v| v <= s),
        };
        ok(self.ttft, &level.ttft_s) && ok(self.itl, &level.itl_s)
    }
}

fn show_secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s} s")
    }
}

/// `2s`, `1.5s`, `50ms` in seconds.
pub fn parse_duration(text: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v > 0.0).then_some(v * scale)
}

/// The `p`th percentile (nearest rank) of `values`; `None` when there are none.
pub fn percentile(values: &[f64], p: u8) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((f64::from(p) / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// The shape of the load.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// The model name to ask for.
    pub model: String,
    /// Concurrency levels, rising; the test stops at the first level that misses the target.
    pub levels: Vec<usize>,
    /// Requests per level: this many times the concurrency, at least `min_requests`.
    pub requests_per_slot: usize,
    pub min_requests: usize,
    /// Prompt length in tokens (about: the prompt is a passage of that many words' worth), and tokens generated per
    /// answer (with `ignore_eos`, which vLLM, SGLang, llama.cpp and vibecheck honour).
    pub input_tokens: usize,
    pub output_tokens: usize,
    /// A single request's limit.
    pub request_timeout: Duration,
}

impl Default for LoadSettings {
    fn default() -> Self {
        Self {
            model: String::new(),
            levels: vec![1, 2, 4, 8, 16],
            requests_per_slot: 3,
            min_requests: 8,
            input_tokens: 192,
            output_tokens: 64,
            request_timeout: Duration::from_secs(300),
        }
    }
}

/// What one concurrency level measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Level {
    pub concurrency: usize,
    pub requests: usize,
    pub failed: usize,
    /// The first failure's message.
    pub error: Option<String>,
    pub seconds: f64,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    /// Each request's time to its first token, and every gap between tokens after it.
    #[serde(skip)]
    pub ttft_s: Vec<f64>,
    #[serde(skip)]
    pub itl_s: Vec<f64>,
    pub ttft_p50_s: Option<f64>,
    pub ttft_p99_s: Option<f64>,
    pub itl_p50_s: Option<f64>,
    pub itl_p99_s: Option<f64>,
    /// Output tokens per second over the level, as the client counted them.
    pub output_tok_s: f64,
    /// Prompt and output tokens per second.
    pub total_tok_s: f64,
    pub requests_per_s: f64,
    /// The engine's own count of generated tokens per second over the level, from its Prometheus counters.
    pub engine_output_tok_s: Option<f64>,
    /// Whose counters those were (`vllm`, `sglang`, `llama.cpp`, `tgi`, `vibecheck`).
    pub engine_counters: Option<String>,
    pub meets_target: bool,
    /// $/1M output tokens at this load (filled in by [`Report::new`]).
    pub usd_per_1m_output: Option<f64>,
}

impl Level {
    fn finish(&mut self) {
        self.ttft_p50_s = percentile(&self.ttft_s, 50);
        self.ttft_p99_s = percentile(&self.ttft_s, 99);
        self.itl_p50_s = percentile(&self.itl_s, 50);
        self.itl_p99_s = percentile(&self.itl_s, 99);
        if self.seconds > 0.0 {
            self.output_tok_s = self.output_tokens as f64 / self.seconds;
            self.total_tok_s = (self.output_tokens + self.prompt_tokens) as f64 / self.seconds;
            self.requests_per_s = (self.requests - self.failed) as f64 / self.seconds;
        }
    }
}

/// A passage of about `tokens` tokens (English prose runs about 0.75 words per token).
pub fn prompt_of(tokens: usize) -> String {
    const PASSAGE: &str = "The river bends twice before it reaches the town, and each bend has a mill whose wheel \
        has turned for longer than anyone remembers. Traders come down from the hills in spring with wool and \
        honey, and they leave with salt, iron and news. ";
    let words: Vec<&str> = PASSAGE.split_whitespace().collect();
    let want = (tokens * 3 / 4).max(1);
    let body: Vec<&str> = words.iter().cycle().take(want).copied().collect();
    format!(
        "Read this and then write a long story that continues it.\n\n{}",
        body.join(" ")
    )
}

/// One streamed request's timings.
struct Timed {
    ttft: f64,
    gaps: Vec<f64>,
    prompt_tokens: u64,
    output_tokens: u64,
}

fn one_request(client: &Client, body: &Value, timeout: Duration) -> Result<Timed, String> {
    let started = Instant::now();
    let t = Timeouts::Phases {
        connect: Duration::from_secs(10),
        read: timeout,
    };
    let reply = client
        .post_json("/chat/completions", body, t)
        .map_err(|e| e.to_string())?;
    if reply.status != 200 {
        let status = reply.status;
        let text = reply.text(1 << 16).unwrap_or_default();
        return Err(format!(
            "HTTP {status}: {}",
            vibecheck_client::error_detail(&text, 200)
        ));
    }
    let mut first: Option<Instant> = None;
    let mut last = started;
    let mut gaps = Vec::new();
    let mut pieces = 0u64;
    let mut usage: Option<(u64, u64)> = None;
    let mut bad = None;
    reply
        .events(&mut |data| {
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                bad = Some(format!(
                    "an event that is not JSON: {}",
                    vibecheck_client::clip_chars(data, 120)
                ));
                return std::ops::ControlFlow::Break(());
            };
            if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                usage = Some((
                    u["prompt_tokens"].as_u64().unwrap_or(0),
                    u["completion_tokens"].as_u64().unwrap_or(0),
                ));
            }
            let text = v["choices"][0]["delta"]["content"].as_str().unwrap_or("");
            if !text.is_empty() {
                let now = Instant::now();
                match first {
                    None => first = Some(now),
                    Some(_) => gaps.push((now - last).as_secs_f64()),
                }
                last = now;
                pieces += 1;
            }
            std::ops::ControlFlow::Continue(())
        })
        .map_err(|e| e.to_string())?;
    if let Some(b) = bad {
        return Err(b);
    }
    let first = first.ok_or("the answer had no text")?;
    let (prompt_tokens, output_tokens) = usage.unwrap_or((0, pieces));
    Ok(Timed {
        ttft: (first - started).as_secs_f64(),
        gaps,
        prompt_tokens,
        output_tokens,
    })
}

/// Reads the engine's token counters from `metrics_url`, if it has any.
fn counters(metrics: Option<&Client>) -> Option<crate::metrics::TokenCounters> {
    let c = metrics?;
    let t = Timeouts::Phases {
        connect: Duration::from_secs(2),
        read: Duration::from_secs(5),
    };
    let r = c.get("/metrics", t).ok()?;
    if r.status != 200 {
        return None;
    }
    crate::metrics::token_counters(&r.text(8 << 20).ok()?)
}

/// Runs the levels against `client` (the OpenAI base URL), reading `metrics` (the engine's root URL) around
/// each. Stops after the first level that misses `target` or has a failed request. `on_level` sees each level
/// as it finishes.
pub fn load_test(
    client: &Client,
    metrics: Option<&Client>,
    s: &LoadSettings,
    target: &LatencyTarget,
    on_level: &mut dyn FnMut(&Level),
) -> Vec<Level> {
    let body = json!({
        "model": s.model, "max_tokens": s.output_tokens, "temperature": 0, "ignore_eos": true, "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": prompt_of(s.input_tokens)}],
    });
    let mut levels = Vec::new();
    for &c in &s.levels {
        let total = (c * s.requests_per_slot).max(s.min_requests);
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Result<Timed, String>>> = Mutex::new(Vec::new());
        let before = counters(metrics);
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..c {
                scope.spawn(|| {
                    while next.fetch_add(1, Ordering::SeqCst) < total {
                        let r = one_request(client, &body, s.request_timeout);
                        results.lock().expect("not poisoned").push(r);
                    }
                });
            }
        });
        let seconds = started.elapsed().as_secs_f64();
        let after = counters(metrics);
        let mut level = Level {
            concurrency: c,
            requests: total,
            seconds,
            ..Level::default()
        };
        for r in results.into_inner().expect("not poisoned") {
            match r {
                Ok(t) => {
                    level.ttft_s.push(t.ttft);
                    level.itl_s.extend(t.gaps);
                    level.prompt_tokens += t.prompt_tokens;
                    level.output_tokens += t.output_tokens;
                }
                Err(e) => {
                    level.failed += 1;
                    level.error.get_or_insert(e);
                }
            }
        }
        if let (Some(b), Some(a)) = (before, after) {
            if a.engine == b.engine && seconds > 0.0 {
                level.engine_output_tok_s = Some((a.generated - b.generated) / seconds);
                level.engine_counters = Some(a.engine.to_string());
            }
        }
        level.finish();
        level.meets_target = level.failed == 0 && target.met_by(&level);
        on_level(&level);
        let stop = !level.meets_target;
        levels.push(level);
        if stop {
            break;
        }
    }
    levels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_targets_parse_and_name_their_mistakes() {
        let t = LatencyTarget::parse("p99-ttft=2s,itl=50ms").unwrap();
        assert_eq!(t.ttft, Some((99, 2.0)));
        assert_eq!(t.itl, Some((99, 0.05)));
        assert_eq!(
            LatencyTarget::parse("p50-ttft=1.5s").unwrap().ttft,
            Some((50, 1.5))
        );
        for (bad, needle) in [
            ("ttft", "key=value"),
            ("p42-ttft=1s", "percentile"),
            ("ttft=fast", "duration"),
            ("e2e=1s", "not a latency"),
            ("", "names no limit"),
        ] {
            let e = LatencyTarget::parse(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        let level = Level {
            ttft_s: vec![0.1, 0.2, 3.0],
            itl_s: vec![0.01; 50],
            ..Level::default()
        };
        assert!(!LatencyTarget::parse("p99-ttft=2s").unwrap().met_by(&level));
        assert!(LatencyTarget::parse("p50-ttft=2s,itl=20ms")
            .unwrap()
            .met_by(&level));
        assert_eq!(percentile(&[5.0, 1.0, 3.0, 2.0, 4.0], 50), Some(3.0));
        assert_eq!(percentile(&[5.0, 1.0, 3.0, 2.0, 4.0], 99), Some(5.0));
    }
}
