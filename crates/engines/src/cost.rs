//! What serving a model costs: the highest load of a load test (`load.rs`) that meets the latency target, and the
//! arithmetic that turns its throughput and an hourly price into $/1M tokens and the traffic at which self-hosting
//! breaks even against each hosted API.
//!
//! The arithmetic is in plain functions ([`usd_per_million`], [`breakeven_requests_per_day`], [`Report::new`]) so
//! that it is tested against hand-computed cases apart from any measurement.

use serde::Serialize;

use crate::load::{LatencyTarget, Level, LoadSettings};
use crate::prices::{ApiPrice, PriceTable};
use crate::EngineError;

/// What serving costs by the hour, and where the figure comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct HourlyPrice {
    /// What the price is for (`2 × H100-80GB-SXM (Lambda)`, `this machine: 2 vCPU at the price of …`).
    pub hardware: String,
    pub usd_per_hour: f64,
    pub source: String,
    pub checked_on: String,
}

impl HourlyPrice {
    /// The price from `cost`'s flags: `per_hour` as given; else `gpus` of the table's `gpu` row; else this
    /// machine's `vcpus` at the table's CPU price.
    pub fn from_table(
        table: &PriceTable,
        gpu: Option<&str>,
        gpus: usize,
        per_hour: Option<f64>,
        vcpus: usize,
    ) -> Result<Self, EngineError> {
        let given = |hardware: String, p: f64| Self {
            hardware,
            usd_per_hour: p,
            source: "--price-per-hour".into(),
            checked_on: "given".into(),
        };
        match (per_hour, gpu) {
            (Some(p), _) if !(p.is_finite() && p > 0.0) => Err(EngineError::Config(
                "--price-per-hour must be a positive number".into(),
            )),
            (Some(p), Some(g)) => Ok(given(format!("{gpus} × {g}"), p)),
            (Some(p), None) => Ok(given("this machine".into(), p)),
            (None, Some(_)) if gpus == 0 => {
                Err(EngineError::Config("--gpus must be at least 1".into()))
            }
            (None, Some(g)) => {
                let row = table.gpu(g)?;
                Ok(Self {
                    hardware: format!("{gpus} × {} ({})", row.name, row.provider),
                    usd_per_hour: row.usd_per_hour * gpus as f64,
                    source: row.source.clone(),
                    checked_on: row.checked_on.clone(),
                })
            }
            (None, None) => {
                let row = table.cpu().ok_or_else(|| {
                    EngineError::Config(
                        "the price table has no CPU row: give --price-per-hour (this machine's $/hour) or --gpu"
                            .into(),
                    )
                })?;
                Ok(Self {
                    hardware: format!(
                        "this machine: {vcpus} vCPU at the price of {} ({})",
                        row.name, row.provider
                    ),
                    usd_per_hour: row.usd_per_vcpu_hour * vcpus as f64,
                    source: row.source.clone(),
                    checked_on: row.checked_on.clone(),
                })
            }
        }
    }
}

/// $ per 1M tokens at `tokens_per_s` for `usd_per_hour`.
pub fn usd_per_million(usd_per_hour: f64, tokens_per_s: f64) -> Option<f64> {
    (tokens_per_s > 0.0).then(|| usd_per_hour / (tokens_per_s * 3600.0) * 1e6)
}

/// A hosted API's price per 1M tokens blended 3 input : 1 output.
pub fn blended_3_to_1(input_per_1m: f64, output_per_1m: f64) -> f64 {
    (3.0 * input_per_1m + output_per_1m) / 4.0
}

/// Requests a day at which a server costing `usd_per_hour` costs the same as the API does for requests of
/// `prompt_tokens` in and `output_tokens` out.
pub fn breakeven_requests_per_day(
    usd_per_hour: f64,
    api: &ApiPrice,
    prompt_tokens: f64,
    output_tokens: f64,
) -> Option<f64> {
    let per_request =
        (prompt_tokens * api.usd_per_1m_input + output_tokens * api.usd_per_1m_output) / 1e6;
    (per_request > 0.0).then(|| usd_per_hour * 24.0 / per_request)
}

/// One hosted API beside the measured server.
#[derive(Debug, Clone, Serialize)]
pub struct ApiComparison {
    pub name: String,
    pub provider: String,
    pub usd_per_1m_input: f64,
    pub usd_per_1m_output: f64,
    pub usd_per_1m_blended: f64,
    pub source: String,
    pub checked_on: String,
    /// Requests a day (of the measured shape) at which self-hosting costs what the API does.
    pub breakeven_requests_per_day: Option<f64>,
    /// That traffic as a share of what the server sustains within the target (above 1: it never breaks even).
    pub breakeven_utilisation: Option<f64>,
}

/// The figures of a cost run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub endpoint: String,
    /// What the hourly price is for (`2 × H100-80GB (Lambda)`, `this machine: 2 vCPU`).
    pub hardware: String,
    pub usd_per_hour: f64,
    pub price_source: String,
    pub price_checked_on: String,
    pub target: String,
    pub input_tokens: usize,
    pub output_tokens: usize,
    pub levels: Vec<Level>,
    /// The highest concurrency that met the target (`None`: not even the first).
    pub chosen: Option<usize>,
    pub output_tok_s: Option<f64>,
    pub requests_per_day: Option<f64>,
    pub usd_per_1m_output: Option<f64>,
    pub usd_per_1m_blended: Option<f64>,
    pub apis: Vec<ApiComparison>,
}

impl Report {
    /// The figures from measured levels and an hourly price, with every API of `prices` beside them.
    pub fn new(
        model: &str,
        endpoint: &str,
        price: &HourlyPrice,
        target: &LatencyTarget,
        s: &LoadSettings,
        mut levels: Vec<Level>,
        prices: &PriceTable,
    ) -> Self {
        let usd_per_hour = price.usd_per_hour;
        for l in &mut levels {
            l.usd_per_1m_output = usd_per_million(usd_per_hour, l.output_tok_s);
        }
        let best = levels
            .iter()
            .filter(|l| l.meets_target)
            .max_by_key(|l| l.concurrency);
        let chosen = best.map(|l| l.concurrency);
        let output_tok_s = best.map(|l| l.output_tok_s);
        let requests_per_day = best.map(|l| l.requests_per_s * 86400.0);
        let usd_per_1m_output = best.and_then(|l| usd_per_million(usd_per_hour, l.output_tok_s));
        let usd_per_1m_blended = best.and_then(|l| usd_per_million(usd_per_hour, l.total_tok_s));
        // The measured request shape (the prompt as the server tokenized it, template included).
        let ok = best.map_or(0, |l| l.requests - l.failed).max(1) as f64;
        let (p_tok, o_tok) = best.map_or((s.input_tokens as f64, s.output_tokens as f64), |l| {
            (l.prompt_tokens as f64 / ok, l.output_tokens as f64 / ok)
        });
        let p_tok = if p_tok > 0.0 {
            p_tok
        } else {
            s.input_tokens as f64
        };
        let apis = prices
            .apis
            .iter()
            .map(|a| {
                let be = breakeven_requests_per_day(usd_per_hour, a, p_tok, o_tok);
                ApiComparison {
                    name: a.name.clone(),
                    provider: a.provider.clone(),
                    usd_per_1m_input: a.usd_per_1m_input,
                    usd_per_1m_output: a.usd_per_1m_output,
                    usd_per_1m_blended: blended_3_to_1(a.usd_per_1m_input, a.usd_per_1m_output),
                    source: a.source.clone(),
                    checked_on: a.checked_on.clone(),
                    breakeven_requests_per_day: be,
                    breakeven_utilisation: match (be, requests_per_day) {
                        (Some(b), Some(cap)) if cap > 0.0 => Some(b / cap),
                        _ => None,
                    },
                }
            })
            .collect();
        Self {
            model: model.to_string(),
            endpoint: endpoint.to_string(),
            hardware: price.hardware.clone(),
            usd_per_hour,
            price_source: price.source.clone(),
            price_checked_on: price.checked_on.clone(),
            target: target.describe(),
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
            levels,
            chosen,
            output_tok_s,
            requests_per_day,
            usd_per_1m_output,
            usd_per_1m_blended,
            apis,
        }
    }

    /// As a table for the terminal.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("{:.0}", s * 1000.0));
        out.push_str(&format!(
            "model {} at {}\nhardware {}: ${:.4}/hour ({}, checked {})\ntarget {}; requests of ~{} prompt and {} \
             output tokens\n\n",
            self.model,
            self.endpoint,
            self.hardware,
            self.usd_per_hour,
            self.price_source,
            self.price_checked_on,
            self.target,
            self.input_tokens,
            self.output_tokens
        ));
        out.push_str("concurrency  requests  failed  out tok/s  engine tok/s  p50 TTFT ms  p99 TTFT ms  p99 ITL ms  $/1M out  meets\n");
        for l in &self.levels {
            out.push_str(&format!(
                "{:>11}  {:>8}  {:>6}  {:>9.1}  {:>12}  {:>11}  {:>11}  {:>10}  {:>8}  {}\n",
                l.concurrency,
                l.requests,
                l.failed,
                l.output_tok_s,
                l.engine_output_tok_s
                    .map_or("-".into(), |v| format!("{v:.1}")),
                ms(l.ttft_p50_s),
                ms(l.ttft_p99_s),
                ms(l.itl_p99_s),
                l.usd_per_1m_output.map_or("-".into(), money),
                if l.meets_target { "yes" } else { "no" }
            ));
            if let Some(e) = &l.error {
                out.push_str(&format!("             first failure: {e}\n"));
            }
        }
        match (self.chosen, self.usd_per_1m_output, self.usd_per_1m_blended) {
            (Some(c), Some(o), Some(b)) => out.push_str(&format!(
                "\nat concurrency {c} (the highest within the target): {:.1} output tok/s, {:.0} requests/day\n\
                 ${:.4}/hour, {} per 1M output tokens, {} per 1M tokens blended 3:1\n",
                self.output_tok_s.unwrap_or(0.0),
                self.requests_per_day.unwrap_or(0.0),
                self.usd_per_hour,
                money(o),
                money(b)
            )),
            _ => out.push_str("\nno level met the target: no sustainable load, so no $/1M tokens\n"),
        }
        if !self.apis.is_empty() {
            out.push_str("\nhosted API                     $/1M in  $/1M out  blended 3:1  break-even requests/day  at utilisation  checked on\n");
            for a in &self.apis {
                out.push_str(&format!(
                    "{:<30} {:>7}  {:>8}  {:>11}  {:>23}  {:>14}  {}\n",
                    format!("{} ({})", a.name, a.provider),
                    money(a.usd_per_1m_input),
                    money(a.usd_per_1m_output),
                    money(a.usd_per_1m_blended),
                    a.breakeven_requests_per_day
                        .map_or("-".into(), |v| format!("{v:.0}")),
                    a.breakeven_utilisation.map_or("-".into(), |u| if u > 1.0 {
                        format!("{:.0}% (never)", u * 100.0)
                    } else {
                        format!("{:.1}%", u * 100.0)
                    }),
                    a.checked_on
                ));
            }
        }
        out
    }
}

/// `$0.123`, `$12.50`.
pub fn money(v: f64) -> String {
    if v.abs() >= 10.0 {
        format!("${v:.2}")
    } else if v.abs() >= 0.01 {
        format!("${v:.3}")
    } else {
        format!("${v:.5}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(i: f64, o: f64) -> ApiPrice {
        ApiPrice {
            name: "x".into(),
            provider: "p".into(),
            usd_per_1m_input: i,
            usd_per_1m_output: o,
            source: "s".into(),
            checked_on: "2025-01-01".into(),
            note: String::new(),
        }
    }

    #[test]
    fn arithmetic_matches_hand_computed_cases() {
        // $3.60/hour at 1000 tok/s: 3.6 M tokens an hour, so $1 per 1M.
        assert!((usd_per_million(3.6, 1000.0).unwrap() - 1.0).abs() < 1e-12);
        // 8 GPUs at $2.99: $23.92/hour; at 2500 tok/s that is 9 M tokens/hour: $2.6577... per 1M.
        assert!((usd_per_million(8.0 * 2.99, 2500.0).unwrap() - 23.92 / 9.0).abs() < 1e-9);
        assert_eq!(usd_per_million(1.0, 0.0), None);
        // gpt-4o-mini style prices: (3 × 0.15 + 0.60) / 4 = 0.2625.
        assert!((blended_3_to_1(0.15, 0.60) - 0.2625).abs() < 1e-12);
        // $2/hour is $48/day; a request of 1000 in and 250 out at $1/$4 costs $0.002: 24 000 requests/day.
        let be = breakeven_requests_per_day(2.0, &api(1.0, 4.0), 1000.0, 250.0).unwrap();
        assert!((be - 24_000.0).abs() < 1e-6, "{be}");
        assert_eq!(
            breakeven_requests_per_day(2.0, &api(0.0, 0.0), 1.0, 1.0),
            None
        );
    }

    #[test]
    fn the_report_picks_the_highest_level_within_the_target() {
        let level = |c: usize, tok_s: f64, meets: bool| Level {
            concurrency: c,
            requests: 10,
            seconds: 10.0,
            prompt_tokens: 3000,
            output_tokens: (tok_s * 10.0) as u64,
            output_tok_s: tok_s,
            total_tok_s: tok_s + 300.0,
            requests_per_s: 1.0,
            meets_target: meets,
            ..Level::default()
        };
        let prices = PriceTable {
            gpus: vec![],
            cpus: vec![],
            apis: vec![api(1.0, 4.0)],
        };
        let r = Report::new(
            "m",
            "http://x/v1",
            &HourlyPrice {
                hardware: "cpu".into(),
                usd_per_hour: 3.6,
                source: "mine".into(),
                checked_on: "2026-01-01".into(),
            },
            &LatencyTarget::default(),
            &LoadSettings::default(),
            vec![
                level(1, 100.0, true),
                level(2, 180.0, true),
                level(4, 250.0, false),
            ],
            &prices,
        );
        assert_eq!(r.chosen, Some(2));
        // $3.60/hour at 180 tok/s: 648 000 tokens/hour, $5.5556 per 1M.
        assert!((r.usd_per_1m_output.unwrap() - 3.6 / 0.648).abs() < 1e-9);
        assert!((r.usd_per_1m_blended.unwrap() - 3.6 / (480.0 * 3600.0) * 1e6).abs() < 1e-9);
        assert_eq!(r.requests_per_day, Some(86400.0));
        // Requests of 300 in / 180 out at $1/$4: $0.00102 each; $86.40/day → 84 705.9 requests/day, 98.0 % of
        // the 86 400 the server sustains.
        let a = &r.apis[0];
        assert!((a.breakeven_requests_per_day.unwrap() - 86.4 / 0.00102).abs() < 1e-6);
        assert!((a.breakeven_utilisation.unwrap() - 86.4 / 0.00102 / 86400.0).abs() < 1e-9);
        // Every level has its own $/1M, the one that missed too.
        assert!(r.levels[2].usd_per_1m_output.is_some());
        let text = r.text();
        assert!(text.contains("at concurrency 2"), "{text}");
        assert!(text.contains("2025-01-01"), "{text}");
    }
}
