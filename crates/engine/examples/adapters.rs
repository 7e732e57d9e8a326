//! Ten LoRA adapter checkpoints over one base against ten merged full checkpoints (the same weights, `W + s·BA`
//! written out): resident memory with all ten loaded, the time to switch to another checkpoint (load it and
//! answer one token), and decode speed of an unmerged adapter beside its merged copy, measured in one process.
//!
//! `cargo run --release -p vibecheck-engine --example adapters -- BASE_FOLDER [RANK]`, where BASE_FOLDER is a
//! float32 checkpoint folder (for SmolLM2: `vibecheck convert .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
//! /tmp/smollm2-f32`). Needs about 11 × the base's size of free disk in the temp folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use vibecheck_engine::{LoadOptions, Model, Prompt, SamplingParams};

const TARGETS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn trim() {
    // SAFETY: only returns free heap pages to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Writes adapter `i` (random A and B, seeded) and its merged full checkpoint.
fn make(
    base_dir: &Path,
    base: &HashMap<String, Tensor>,
    layers: usize,
    rank: usize,
    i: usize,
    root: &Path,
) -> (PathBuf, PathBuf) {
    let adapter = root.join(format!("adapter-{i}"));
    let merged = root.join(format!("merged-{i}"));
    std::fs::create_dir_all(&adapter).unwrap();
    std::fs::create_dir_all(&merged).unwrap();
    let dev = Device::Cpu;
    let scale = 2.0; // lora_alpha 2r
    let mut lora: HashMap<String, Tensor> = HashMap::new();
    let mut full = base.clone();
    for l in 0..layers {
        for t in TARGETS {
            let name = format!("model.layers.{l}.{t}");
            let w = &base[&format!("{name}.weight")];
            let (out, inp) = w.dims2().unwrap();
            let seed = (i * 1000 + l * 10) as u64;
            let _ = dev.set_seed(seed);
            let a = (Tensor::randn(0f32, 1.0, (rank, inp), &dev).unwrap() / (inp as f64).sqrt())
                .unwrap();
            let b = (Tensor::randn(0f32, 1.0, (out, rank), &dev).unwrap() * 0.02).unwrap();
            let delta = (b.matmul(&a).unwrap() * scale).unwrap();
            full.insert(format!("{name}.weight"), (w + delta).unwrap());
            lora.insert(format!("base_model.model.{name}.lora_A.weight"), a);
            lora.insert(format!("base_model.model.{name}.lora_B.weight"), b);
        }
    }
    candle_core::safetensors::save(&lora, adapter.join("adapter_model.safetensors")).unwrap();
    let cfg = serde_json::json!({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
        "base_model_name_or_path": base_dir.display().to_string(), "bias": "none",
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]});
    std::fs::write(adapter.join("adapter_config.json"), cfg.to_string()).unwrap();
    candle_core::safetensors::save(&full, merged.join("model.safetensors")).unwrap();
    for f in std::fs::read_dir(base_dir).unwrap().flatten() {
        let n = f.file_name().to_string_lossy().into_owned();
        if n.ends_with(".json") || n.ends_with(".jinja") {
            std::fs::copy(f.path(), merged.join(&n)).unwrap();
        }
    }
    (adapter, merged)
}

fn one_token(m: &Model) {
    m.generate(&Prompt::Text("Hello".into()), &SamplingParams::greedy(1))
        .unwrap();
}

fn decode_tps(m: &Model) -> f64 {
    let p = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(64)
    };
    let g = m
        .generate(&Prompt::Text("The history of".into()), &p)
        .unwrap();
    g.usage.completion_tokens as f64 / (g.timings.decode_ms / 1000.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base_dir = PathBuf::from(args.get(1).expect("usage: adapters BASE_FOLDER [RANK]"));
    let rank: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(16);
    let base = candle_core::safetensors::load(base_dir.join("model.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F32).unwrap()))
        .collect::<HashMap<_, _>>();
    let layers = (0..)
        .take_while(|l| base.contains_key(&format!("model.layers.{l}.self_attn.q_proj.weight")))
        .count();
    let tmp = tempfile::tempdir().unwrap();
    eprintln!(
        "writing 10 adapters (rank {rank}) and 10 merged checkpoints under {}",
        tmp.path().display()
    );
    let made: Vec<(PathBuf, PathBuf)> = (0..10)
        .map(|i| make(&base_dir, &base, layers, rank, i, tmp.path()))
        .collect();
    drop(base);
    trim();
    let opts = LoadOptions::default();

    // All ten adapters loaded at once, then all ten merged copies.
    let before = rss();
    let t = Instant::now();
    let adapters: Vec<Model> = made
        .iter()
        .map(|(a, _)| Model::load(a.to_str().unwrap(), &opts).unwrap())
        .collect();
    let adapters_load = t.elapsed().as_secs_f64();
    trim();
    let adapters_mem = rss().saturating_sub(before);
    drop(adapters);
    trim();

    let before = rss();
    let t = Instant::now();
    let merged: Vec<Model> = made
        .iter()
        .map(|(_, m)| Model::load(m.to_str().unwrap(), &opts).unwrap())
        .collect();
    let merged_load = t.elapsed().as_secs_f64();
    trim();
    let merged_mem = rss().saturating_sub(before);
    drop(merged);
    trim();

    // Decode speed, interleaved rounds (adapter, merged, ...) so a busy moment of the machine hits both alike;
    // the ratio is the median of the rounds' ratios.
    let adapter = Model::load(made[0].0.to_str().unwrap(), &opts).unwrap();
    let merged_one = Model::load(made[0].1.to_str().unwrap(), &opts).unwrap();
    let (mut ta, mut tm, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..7 {
        let a = decode_tps(&adapter);
        let m = decode_tps(&merged_one);
        ta.push(a);
        tm.push(m);
        ratios.push(a / m);
    }
    let (adapter_tps, merged_tps, ratio) = (median(ta), median(tm), median(ratios));
    drop((adapter, merged_one));
    trim();

    // Switching with one checkpoint held at a time (a server's LRU of one): load the next, answer one token.
    let switch = |dirs: Vec<&PathBuf>| -> f64 {
        let mut times = Vec::new();
        let mut held: Option<Model> = None;
        for d in dirs {
            let t = Instant::now();
            drop(held.take());
            let m = Model::load(d.to_str().unwrap(), &opts).unwrap();
            one_token(&m);
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            held = Some(m);
        }
        median(times)
    };
    let adapter_switch = switch(made.iter().map(|(a, _)| a).collect());
    let merged_switch = switch(made.iter().map(|(_, m)| m).collect());
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "10 checkpoints of {} ({layers} layers), LoRA rank {rank} on all 7 projections",
        base_dir.display()
    );
    println!(
        "resident memory, all 10 loaded: adapters {:.0} MB (base once + adapters), merged {:.0} MB ({:.1}x)",
        mb(adapters_mem),
        mb(merged_mem),
        merged_mem as f64 / adapters_mem.max(1) as f64
    );
    println!(
        "loading all 10: adapters {adapters_load:.2} s, merged {merged_load:.2} s ({:.1}x)",
        merged_load / adapters_load
    );
    println!(
        "switch (load the next checkpoint, answer one token), median of 10: adapters {adapter_switch:.0} ms, merged \
         {merged_switch:.0} ms ({:.1}x)",
        merged_switch / adapter_switch
    );
    println!(
        "decode, 64 tokens, 7 interleaved rounds: unmerged adapter {adapter_tps:.1} tok/s, merged {merged_tps:.1} \
         tok/s (median ratio {ratio:.2}x)"
    );
}
