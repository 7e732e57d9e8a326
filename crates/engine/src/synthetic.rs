//! A made-up training run for the demo: checkpoints whose weights move from noise toward a real model's, written
//! as genuine Hugging Face checkpoint folders (bf16 `model.safetensors`, config, tokenizer, `trainer_state.json`)
//! the way a trainer writes them (into `tmp-checkpoint-N`, renamed when complete). Answers go from gibberish to
//! coherent across the steps, which is what the watch timeline is for. It is not training: say so wherever it shows.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::EngineError;

/// Weight of the real model at each step: `w = mix * real + (1 - mix) * noise`.
#[derive(Debug, Clone, Copy)]
pub struct SyntheticStep {
    pub step: u64,
    pub mix: f32,
}

/// A deterministic standard-normal stream (SplitMix64 and Box–Muller), so every demo run is the same.
struct Normal(u64);

impl Normal {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn sample(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

/// Writes `run_dir/checkpoint-<step>` for each step from the checkpoint folder `real` (any float dtype). Steps
/// already present are left alone. `on_step` hears each step as it is written.
pub fn write_run(
    real: &Path,
    run_dir: &Path,
    steps: &[SyntheticStep],
    on_step: &mut dyn FnMut(u64),
) -> Result<(), EngineError> {
    let weights_path = real.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu)?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    std::fs::create_dir_all(run_dir).map_err(|e| EngineError::io(run_dir, e))?;
    for s in steps {
        let name = format!("checkpoint-{}", s.step);
        let done = run_dir.join(&name);
        if done.join("model.safetensors").is_file() {
            continue;
        }
        let tmp = run_dir.join(format!("tmp-{name}"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
        let mut out: HashMap<String, Tensor> = HashMap::new();
        for (i, n) in names.iter().enumerate() {
            let t = tensors[*n].to_dtype(DType::F32)?;
            let real_vals = t.flatten_all()?.to_vec1::<f32>()?;
            let len = real_vals.len() as f32;
            let mean = real_vals.iter().sum::<f32>() / len;
            let std = (real_vals.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / len).sqrt();
            // The same noise at every step, so the run moves steadily toward the real weights.
            let mut rng = Normal(0x5EED ^ (i as u64).wrapping_mul(0x1000_0000_01B3));
            let mixed: Vec<f32> = real_vals
                .iter()
                .map(|r| s.mix * r + (1.0 - s.mix) * (mean + std * rng.sample()))
                .collect();
            let mixed = Tensor::from_vec(mixed, t.shape(), &Device::Cpu)?.to_dtype(DType::BF16)?;
            out.insert((*n).clone(), mixed);
        }
        candle_core::safetensors::save(&out, tmp.join("model.safetensors"))?;
        for entry in std::fs::read_dir(real)
            .map_err(|e| EngineError::io(real, e))?
            .flatten()
        {
            let file = entry.file_name();
            let f = file.to_string_lossy();
            if f.ends_with(".json") || f.ends_with(".jinja") {
                let mut text = std::fs::read_to_string(entry.path())
                    .map_err(|e| EngineError::io(entry.path(), e))?;
                if f == "config.json" {
                    let mut cfg: serde_json::Value = serde_json::from_str(&text)
                        .map_err(|e| EngineError::file(entry.path(), e.to_string()))?;
                    cfg["torch_dtype"] = json!("bfloat16");
                    text = serde_json::to_string_pretty(&cfg).expect("json");
                }
                std::fs::write(tmp.join(&file), text).map_err(|e| EngineError::io(&tmp, e))?;
            }
        }
        let state = json!({"global_step": s.step, "synthetic": true,
            "note": format!("vibecheck demo: weights are {:.0}% the real model, {:.0}% noise; not a training run",
                            s.mix * 100.0, (1.0 - s.mix) * 100.0)});
        std::fs::write(
            tmp.join("trainer_state.json"),
            serde_json::to_string_pretty(&state).expect("json"),
        )
        .map_err(|e| EngineError::io(&tmp, e))?;
        std::fs::rename(&tmp, &done).map_err(|e| EngineError::io(&done, e))?;
        on_step(s.step);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_stream_has_unit_variance_and_repeats() {
        let mut a = Normal(7);
        let xs: Vec<f32> = (0..20000).map(|_| a.sample()).collect();
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / xs.len() as f32;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
        assert_eq!(Normal(7).sample(), xs[0]);
    }
}
