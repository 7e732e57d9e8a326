//! Prometheus text (the exposition format every engine's `/metrics` speaks) and the token counters of the
//! engines vibecheck knows, so that a load test can state the rate the engine itself counted beside the one the
//! client saw.

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: String,
    pub value: f64,
}

/// The samples of a Prometheus text page; comment lines and lines that do not parse are passed over.
pub fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) if line.as_bytes()[i] == b'{' => {
                let Some(close) = line[i..].find('}') else {
                    continue;
                };
                (
                    &line[..i],
                    (&line[i + 1..i + close], &line[i + close + 1..]),
                )
            }
            Some(i) => (&line[..i], ("", &line[i..])),
            None => continue,
        };
        let (labels, tail) = rest;
        let Some(value) = tail.split_whitespace().next() else {
            continue;
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        out.push(Sample {
            name: name.to_string(),
            labels: labels.to_string(),
            value,
        });
    }
    out
}

/// The token counters of one engine, summed over their labels (models, engines).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenCounters {
    /// Which engine's names were found: `vllm`, `sglang`, `llama.cpp`, `tgi` or `vibecheck`.
    pub engine: &'static str,
    pub generated: f64,
    pub prompt: Option<f64>,
}

/// (engine, generated-tokens counter, prompt-tokens counter): vLLM's and SGLang's counters, llama.cpp's
/// (`--metrics`), TGI's histograms' sums, and our own.
const COUNTERS: [(&str, &str, &str); 5] = [
    (
        "vllm",
        "vllm:generation_tokens_total",
        "vllm:prompt_tokens_total",
    ),
    (
        "sglang",
        "sglang:generation_tokens_total",
        "sglang:prompt_tokens_total",
    ),
    (
        "llama.cpp",
        "llamacpp:tokens_predicted_total",
        "llamacpp:prompt_tokens_total",
    ),
    (
        "tgi",
        "tgi_request_generated_tokens_sum",
        "tgi_request_input_length_sum",
    ),
    (
        "vibecheck",
        "vibecheck_completion_tokens_total",
        "vibecheck_prompt_tokens_total",
    ),
];

/// The first known engine's token counters on the page, if any.
pub fn token_counters(text: &str) -> Option<TokenCounters> {
    let samples = parse(text);
    let sum = |name: &str| -> Option<f64> {
        let found: Vec<f64> = samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .collect();
        (!found.is_empty()).then(|| found.iter().sum())
    };
    COUNTERS.iter().find_map(|(engine, gen, prompt)| {
        sum(gen).map(|generated| TokenCounters {
            engine,
            generated,
            prompt: sum(prompt),
        })
    })
}

/// SGLang's own throughput gauge (`sglang:gen_throughput`, tokens per second), when the page has it.
pub fn sglang_gen_throughput(text: &str) -> Option<f64> {
    let v: Vec<f64> = parse(text)
        .into_iter()
        .filter(|s| s.name == "sglang:gen_throughput")
        .map(|s| s.value)
        .collect();
    (!v.is_empty()).then(|| v.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_engines_counters_and_sums_labels() {
        let vllm = "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n\
                    # TYPE vllm:generation_tokens_total counter\n\
                    vllm:generation_tokens_total{engine=\"0\",model_name=\"m\"} 120.0\n\
                    vllm:generation_tokens_total{engine=\"1\",model_name=\"m\"} 30.0\n\
                    vllm:prompt_tokens_total{engine=\"0\",model_name=\"m\"} 400.0\n";
        assert_eq!(
            token_counters(vllm),
            Some(TokenCounters {
                engine: "vllm",
                generated: 150.0,
                prompt: Some(400.0)
            })
        );
        let llama =
            "# TYPE llamacpp:tokens_predicted_total counter\nllamacpp:tokens_predicted_total 77\n";
        let c = token_counters(llama).unwrap();
        assert_eq!((c.engine, c.generated, c.prompt), ("llama.cpp", 77.0, None));
        let tgi = "tgi_request_generated_tokens_bucket{le=\"+Inf\"} 3\ntgi_request_generated_tokens_sum 96\n\
                   tgi_request_generated_tokens_count 3\n";
        assert_eq!(token_counters(tgi).unwrap().generated, 96.0);
        let sg = "sglang:gen_throughput{model_name=\"m\"} 512.5\nsglang:generation_tokens_total{model_name=\"m\"} 9e3\n";
        assert_eq!(sglang_gen_throughput(sg), Some(512.5));
        assert_eq!(token_counters(sg).unwrap().generated, 9000.0);
        assert_eq!(token_counters("process_cpu_seconds_total 3\n"), None);
        // Lines that are not samples are passed over, not misread.
        assert!(parse("garbage{\nname{a=\"1\"} notanumber\n").is_empty());
    }
}
