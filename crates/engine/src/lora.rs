//! peft LoRA adapters over a shared base: what TRL's `SFTTrainer` with a `peft_config` saves in every
//! `checkpoint-N` (`adapter_config.json`, `adapter_model.safetensors`).
//!
//! An adapter is applied unmerged, as peft runs it: each adapted projection computes `base(x) + s · (x Aᵀ) Bᵀ`
//! with `s = lora_alpha / r` (`/ √r` with `use_rslora`). The adapter's decoder is a clone of the base's that
//! shares every base matrix, so N adapter checkpoints of one run cost the base once plus N small `A`/`B` pairs,
//! and switching between them never reloads the base. (Merging `W + s·BA` into a copy would make each adapter
//! cost a whole model and its load a full repack; unmerged, an adapter's extra work per token is two skinny
//! products per adapted projection.)
//!
//! Only LoRA is implemented; other peft methods (prefix tuning, IA3, DoRA, …) and LoRA options that change the
//! computation in ways not implemented here are refused by name.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::linear::LoraPart;
use crate::model::Decoder;
use crate::weights::Weights;
use crate::EngineError;

/// What `adapter_config.json` says about the computation.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    pub r: usize,
    pub alpha: f64,
    pub use_rslora: bool,
    pub modules_to_save: Vec<String>,
}

impl AdapterConfig {
    /// Parses and checks an `adapter_config.json`; the error names the key and says why.
    pub fn from_json(json: &Value) -> Result<Self, String> {
        let peft_type = json
            .get("peft_type")
            .and_then(|v| v.as_str())
            .unwrap_or("LORA");
        if peft_type != "LORA" {
            return Err(format!(
                "peft_type {peft_type:?} is not supported: vibecheck runs LoRA adapters (peft_type \"LORA\"); \
                 merge this adapter into its base with peft's merge_and_unload() and save that instead"
            ));
        }
        let on = |key: &str| json.get(key).and_then(|v| v.as_bool()) == Some(true);
        let set = |key: &str| match json.get(key) {
            None | Some(Value::Null) => false,
            Some(Value::Object(m)) => !m.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Bool(b)) => *b,
            Some(_) => true,
        };
        for (key, what) in [
            ("use_dora", "DoRA"),
            ("lora_bias", "LoRA biases"),
            ("use_qalora", "QA-LoRA"),
            ("use_bdlora", "block-diagonal LoRA"),
        ] {
            if on(key) {
                return Err(format!(
                    "`{key}: true` ({what}) is not supported yet; merge the adapter with peft's \
                     merge_and_unload() and serve the merged model"
                ));
            }
        }
        for key in [
            "rank_pattern",
            "alpha_pattern",
            "target_parameters",
            "trainable_token_indices",
            "layer_replication",
            "alora_invocation_tokens",
        ] {
            if set(key) {
                return Err(format!(
                    "`{key}` is set, which vibecheck does not implement yet; merge the adapter with peft's \
                     merge_and_unload() and serve the merged model"
                ));
            }
        }
        match json.get("bias").and_then(|v| v.as_str()).unwrap_or("none") {
            "none" => {}
            other => {
                return Err(format!(
                    "`bias: {other:?}` trains biases beside the adapter, which is not supported yet (only \"none\")"
                ))
            }
        }
        let r = json
            .get("r")
            .and_then(|v| v.as_u64())
            .filter(|&r| r > 0 && r <= 1 << 16)
            .ok_or("`r` (the adapter's rank) must be a positive integer")? as usize;
        let alpha = match json.get("lora_alpha") {
            None | Some(Value::Null) => 8.0,
            Some(v) => v
                .as_f64()
                .filter(|a| a.is_finite())
                .ok_or("`lora_alpha` must be a number")?,
        };
        let modules_to_save = match json.get("modules_to_save") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|m| m.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or("`modules_to_save` must be a list of module names")?,
            Some(_) => return Err("`modules_to_save` must be a list of module names".into()),
        };
        Ok(Self {
            r,
            alpha,
            use_rslora: on("use_rslora"),
            modules_to_save,
        })
    }

    /// The factor of every update: `lora_alpha / r`, or `lora_alpha / √r` with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// What an adapter changed in its base.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdapterSummary {
    /// Projections with a LoRA update.
    pub adapted: usize,
    /// Whole modules the adapter replaces (`modules_to_save`: `lm_head`, `embed_tokens`).
    pub replaced: Vec<String>,
    /// Bytes of the adapter's own tensors.
    pub bytes: usize,
}

const PREFIX: &str = "base_model.model.";

/// The module path and which factor a LoRA tensor name holds (`base_model.model.<module>.lora_A.weight`,
/// with peft's older `.lora_A.default.weight` too).
fn lora_factor(name: &str) -> Option<(&str, bool)> {
    for (suffix, is_a) in [
        (".lora_A.weight", true),
        (".lora_B.weight", false),
        (".lora_A.default.weight", true),
        (".lora_B.default.weight", false),
    ] {
        if let Some(module) = name.strip_suffix(suffix) {
            return Some((module, is_a));
        }
    }
    None
}

/// A clone of `base` with the adapter in `w` applied: LoRA updates on the projections it names, and its
/// `modules_to_save` replacing the head or the embeddings. Every tensor of the file is used or refused by name.
pub fn apply(
    base: &Decoder,
    cfg: &AdapterConfig,
    w: &Weights,
) -> Result<(Decoder, AdapterSummary), EngineError> {
    let file = w.origin_path().to_path_buf();
    let bad = |m: String| EngineError::file(&file, m);
    let mut decoder = base.clone();
    let mut factors: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
    let mut summary = AdapterSummary::default();
    let (embed, head) = decoder.embedding_and_head_names();
    for name in w.tensor_names() {
        let Some(inner) = name.strip_prefix(PREFIX) else {
            return Err(bad(format!(
                "tensor {name:?} does not start with {PREFIX:?}, as peft names an adapter's tensors"
            )));
        };
        if let Some((module, is_a)) = lora_factor(inner) {
            let slot = factors.entry(module.to_string()).or_default();
            if is_a {
                slot.0 = Some(name.clone());
            } else {
                slot.1 = Some(name.clone());
            }
            continue;
        }
        if inner.contains("lora_embedding_") || inner.contains("lora_magnitude") {
            return Err(bad(format!(
                "tensor {name:?}: LoRA on embeddings and DoRA magnitudes are not supported yet"
            )));
        }
        // `modules_to_save`: a whole module's new weights.
        let module = inner
            .strip_suffix(".weight")
            .map(|m| m.trim_end_matches(".modules_to_save.default"));
        match module {
            Some(m) if m == head => {
                decoder.replace_head(w, &name[..name.len() - ".weight".len()])?;
                summary.replaced.push(head.to_string());
            }
            Some(m) if m == embed => {
                decoder.replace_embedding(w, &name)?;
                summary.replaced.push(embed.to_string());
            }
            _ => {
                return Err(bad(format!(
                    "tensor {name:?} is neither a LoRA factor nor a replaced head or embedding matrix; vibecheck \
                     cannot apply it (merge the adapter with peft's merge_and_unload() instead)"
                )))
            }
        }
    }
    let scale = cfg.scale();
    for (module, (a, b)) in factors {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(bad(format!(
                "module {module:?} has only one of its lora_A and lora_B tensors (is the save complete?)"
            )));
        };
        let (a, b) = (w.dense(&a)?, w.dense(&b)?);
        summary.bytes += (a.elem_count() + b.elem_count()) * a.dtype().size_in_bytes();
        let Some((lin, offset, rows)) = decoder.projection_mut(&module) else {
            return Err(bad(format!(
                "the adapter updates {module:?}, which is not a projection of this {} base (is it the base the \
                 adapter was trained on? pass the right one with --base)",
                base.cfg.arch.hf_name()
            )));
        };
        let (ad, bd) = (a.dims().to_vec(), b.dims().to_vec());
        let fits = ad.len() == 2
            && bd.len() == 2
            && ad[0] == cfg.r
            && bd[1] == cfg.r
            && ad[1] == lin.in_dim()
            && bd[0] == rows;
        if !fits {
            return Err(bad(format!(
                "{module}: lora_A is {ad:?} and lora_B is {bd:?}, but rank {} over this base's projection \
                 needs [{}, {}] and [{rows}, {}] (a different base, or rank_pattern?)",
                cfg.r,
                cfg.r,
                lin.in_dim(),
                cfg.r
            )));
        }
        let taken = lin.clone();
        *lin = taken.with_lora(LoraPart::new(a, b, scale, offset)?);
        summary.adapted += 1;
    }
    if summary.adapted == 0 && summary.replaced.is_empty() {
        return Err(bad(
            "holds no LoRA tensors: the adapter changes nothing (was it saved before training?)"
                .into(),
        ));
    }
    Ok((decoder, summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scale_follows_rslora() {
        let plain = AdapterConfig::from_json(&json!({"r": 4, "lora_alpha": 8})).unwrap();
        assert_eq!(plain.scale(), 2.0);
        let rs = AdapterConfig::from_json(&json!({"r": 4, "lora_alpha": 8, "use_rslora": true}))
            .unwrap();
        assert_eq!(rs.scale(), 4.0);
    }

    #[test]
    fn other_peft_methods_and_options_are_refused_by_name() {
        for (cfg, word) in [
            (json!({"peft_type": "PREFIX_TUNING"}), "PREFIX_TUNING"),
            (json!({"peft_type": "IA3", "r": 4}), "IA3"),
            (json!({"r": 4, "use_dora": true}), "DoRA"),
            (json!({"r": 4, "bias": "all"}), "bias"),
            (
                json!({"r": 4, "rank_pattern": {"q_proj": 8}}),
                "rank_pattern",
            ),
            (json!({"r": 0}), "`r`"),
        ] {
            let e = AdapterConfig::from_json(&cfg).unwrap_err();
            assert!(e.contains(word), "{cfg}: {e}");
        }
    }

    #[test]
    fn factor_names() {
        assert_eq!(
            lora_factor("model.layers.0.self_attn.q_proj.lora_A.weight"),
            Some(("model.layers.0.self_attn.q_proj", true))
        );
        assert_eq!(
            lora_factor("model.layers.0.mlp.up_proj.lora_B.default.weight"),
            Some(("model.layers.0.mlp.up_proj", false))
        );
        assert_eq!(lora_factor("lm_head.weight"), None);
    }
}
