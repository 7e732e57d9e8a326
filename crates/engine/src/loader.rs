//! Turning a model name into a ready [`Model`]: decoder, tokenizer, chat template and generation defaults.

use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use vibecheck_checkpoint::{Source, SourceKind};

use crate::config::{token_ids, ModelConfig};
use crate::gguf::read_gguf;
use crate::model::Decoder;
use crate::sampling::SamplingOverrides;
#[cfg(test)]
use crate::sampling::SamplingParams;
use crate::template::{template_source_from_dir, ChatTemplate};
use crate::tokenizer::Tokenizer;
use crate::weights::Weights;
use crate::{gguf, EngineError};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Compute dtype; `None` picks float32 on CPU (bf16/f16 weights are widened once at load, which is faster
    /// than candle's half-precision CPU matmul) and the stored dtype on a GPU.
    pub dtype: Option<DType>,
    /// Longest prompt plus output this instance will hold (capped by the model's own limit).
    pub max_context: usize,
    /// Round a safetensors checkpoint's dense weights into a compact format as they load (CPU only).
    pub quantize: Option<crate::kernels::Quantize>,
    /// The KV cache's dtype; `None` keeps it in the compute dtype (float32 on the CPU). Float16 halves what a
    /// long context reads per token, as llama.cpp's default cache does.
    pub kv_cache: Option<DType>,
    /// The base model of a LoRA adapter (a folder, GGUF file or hub id), in place of the one its
    /// `adapter_config.json` names (`--base`).
    pub base: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
            max_context: 4096,
            quantize: None,
            kv_cache: None,
            base: None,
        }
    }
}

/// A model ready to generate.
pub struct Model {
    pub decoder: Decoder,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    /// Sampling defaults the checkpoint ships (`generation_config.json`); the CLI starts from them.
    pub defaults: SamplingOverrides,
    /// Token ids that end a generation.
    pub eos_ids: Vec<u32>,
    pub source: Source,
    pub load_time: Duration,
    /// Bytes of the matrices our CPU kernels read (after any quantization; 0 on a GPU). An adapter counts
    /// only its own tensors here: the base's are shared.
    pub packed_bytes: usize,
    /// For a LoRA adapter: the base model it shares with every other adapter over the same base, and what the
    /// adapter changes.
    pub adapter: Option<Adapter>,
    /// The content hash of the source's answer-deciding files, computed once when first asked.
    hash: std::sync::OnceLock<Result<String, String>>,
}

/// A LoRA adapter's link to its base.
pub struct Adapter {
    pub base: Arc<Model>,
    pub summary: crate::lora::AdapterSummary,
    pub config: crate::lora::AdapterConfig,
}

impl Model {
    /// Resolves `spec` (folder, GGUF file or hub id) and loads it.
    pub fn load(spec: &str, opts: &LoadOptions) -> Result<Self, EngineError> {
        let source = vibecheck_checkpoint::resolve(spec)?;
        Self::load_source(source, opts)
    }

    pub fn load_source(source: Source, opts: &LoadOptions) -> Result<Self, EngineError> {
        let started = Instant::now();
        let mut model = match source.kind {
            SourceKind::HfFolder => Self::load_hf(&source, opts)?,
            SourceKind::Gguf => Self::load_gguf(&source, opts)?,
            SourceKind::Adapter => Self::load_adapter(&source, opts)?,
        };
        model.load_time = started.elapsed();
        // Loading frees many transient buffers on several threads; glibc keeps their pages in its arenas. Hand
        // them back, so that a long-running server holds what the model needs rather than the load's high mark.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: `malloc_trim` only returns free heap memory to the system; no allocation is touched.
        unsafe {
            libc::malloc_trim(0);
        }
        tracing::info!(model = %model.source.name, ms = model.load_time.as_millis() as u64, "loaded");
        Ok(model)
    }

    fn load_hf(source: &Source, opts: &LoadOptions) -> Result<Self, EngineError> {
        let dir = &source.path;
        let cfg = ModelConfig::from_hf_dir(dir)?;
        let files = vibecheck_checkpoint::shard_files(dir)?;
        let stored = stored_dtype(dir);
        let dtype = opts.dtype.unwrap_or(if opts.device.is_cpu() {
            DType::F32
        } else {
            stored
        });
        check_kv_cache(opts)?;
        let mut weights = Weights::from_safetensors(files, dtype, &opts.device)?;
        if let Some(q) = opts.quantize {
            if !opts.device.is_cpu() {
                return Err(EngineError::Config(format!(
                    "--quantize {q} runs on the CPU kernels; on a GPU, load the checkpoint as stored (or a GGUF)"
                )));
            }
            weights.quantize = Some(q);
        }
        // The tokenizer builds on another core while the weights are packed.
        let (tokenizer, decoder) = std::thread::scope(|s| {
            let tokenizer = s.spawn(|| Tokenizer::from_hf_dir(dir));
            let decoder = Decoder::load(cfg.clone(), &weights, opts.max_context)
                .map(|d| d.with_kv_cache(opts.kv_cache));
            (
                tokenizer.join().expect("tokenizer thread panicked"),
                decoder,
            )
        });
        let (tokenizer, decoder) = (tokenizer?, decoder?);
        let template = compile_template(template_source_from_dir(dir)?, &tokenizer)?;
        let (defaults, gen_eos) = read_generation_config(&dir.join("generation_config.json"))?;
        let eos_ids = union(&[&gen_eos, &cfg.eos_token_ids, &tokenizer.eos_ids]);
        Ok(Self {
            decoder,
            tokenizer,
            template,
            defaults,
            eos_ids,
            source: source.clone(),
            load_time: Duration::ZERO,
            packed_bytes: weights.packed_bytes(),
            adapter: None,
            hash: Default::default(),
        })
    }

    fn load_gguf(source: &Source, opts: &LoadOptions) -> Result<Self, EngineError> {
        let path = &source.path;
        if let Some(q) = opts.quantize {
            return Err(EngineError::file(
                path,
                format!(
                    "--quantize {q} is for safetensors checkpoints; a GGUF file is used in its own formats \
                     (drop --quantize, or requantize it with llama.cpp's llama-quantize)"
                ),
            ));
        }
        check_kv_cache(opts)?;
        let t = Instant::now();
        let content = read_gguf(path)?;
        let mut cfg = gguf::config_from_gguf(&content).map_err(|m| EngineError::file(path, m))?;
        if let Some(d) =
            gguf::rope_divisors(&content, path).map_err(|m| EngineError::file(path, m))?
        {
            if d.len() != cfg.rotary_dim() / 2 {
                return Err(EngineError::file(
                    path,
                    format!(
                        "rope_freqs.weight has {} factors, expected {}",
                        d.len(),
                        cfg.rotary_dim() / 2
                    ),
                ));
            }
            cfg.rope.scaling = crate::config::RopeScaling::Divisors(d);
        }
        if let Some(scaling) =
            gguf::long_rope(&content, path).map_err(|m| EngineError::file(path, m))?
        {
            if let crate::config::RopeScaling::LongRope { short_factor, .. } = &scaling {
                if short_factor.len() != cfg.rotary_dim() / 2 {
                    return Err(EngineError::file(
                        path,
                        format!(
                            "rope_factors_short.weight has {} factors, expected {}",
                            short_factor.len(),
                            cfg.rotary_dim() / 2
                        ),
                    ));
                }
            }
            cfg.rope.scaling = scaling;
        }
        tracing::debug!(ms = t.elapsed().as_millis() as u64, "gguf header read");
        let template_src = gguf::chat_template(&content);
        // The vocabulary's strings move into the tokenizer; the weights keep only the tensor table and what
        // describes the model.
        let mut content = content;
        let vocab =
            crate::gguf::GgufVocab::take(&mut content).map_err(|m| EngineError::file(path, m))?;
        let layout = (cfg.num_heads, cfg.num_kv_heads, cfg.arch, cfg.vocab_size);
        let mut weights = Weights::from_gguf(content, path, layout, &opts.device)?;
        if let Some(dtype) = opts.dtype {
            weights.dtype = dtype;
        }
        // The tokenizer builds on another core while the weights are packed.
        let (tokenizer, decoder) = std::thread::scope(|s| {
            let tokenizer = s.spawn(|| Tokenizer::from_gguf_vocab(vocab, path));
            let decoder = Decoder::load(cfg.clone(), &weights, opts.max_context)
                .map(|d| d.with_kv_cache(opts.kv_cache));
            (
                tokenizer.join().expect("tokenizer thread panicked"),
                decoder,
            )
        });
        let (tokenizer, decoder) = (tokenizer?, decoder?);
        tracing::debug!(
            ms = t.elapsed().as_millis() as u64,
            "weights and tokenizer loaded"
        );
        let template = compile_template(template_src, &tokenizer)?;
        let eos_ids = union(&[&tokenizer.eos_ids, &cfg.eos_token_ids]);
        Ok(Self {
            decoder,
            tokenizer,
            template,
            defaults: SamplingOverrides::default(),
            eos_ids,
            source: source.clone(),
            load_time: Duration::ZERO,
            packed_bytes: weights.packed_bytes(),
            adapter: None,
            hash: Default::default(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.decoder.cfg
    }

    /// SHA-256 over the source's answer-deciding files ([`vibecheck_checkpoint::run::content_hash`]), computed
    /// once.
    pub fn content_hash(&self) -> Result<String, String> {
        self.hash
            .get_or_init(|| {
                vibecheck_checkpoint::run::content_hash(&self.source.path)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }

    /// A LoRA adapter over a base shared with every other adapter of it in this process.
    fn load_adapter(source: &Source, opts: &LoadOptions) -> Result<Self, EngineError> {
        let dir = &source.path;
        let cfg_path = dir.join("adapter_config.json");
        let json = vibecheck_checkpoint::adapter_config(dir)?;
        let config = crate::lora::AdapterConfig::from_json(&json)
            .map_err(|m| EngineError::file(&cfg_path, m))?;
        let weights_path = dir.join("adapter_model.safetensors");
        if !weights_path.is_file() {
            let bin = dir.join("adapter_model.bin");
            return Err(EngineError::file(
                dir,
                if bin.is_file() {
                    "the adapter's weights are in adapter_model.bin (a pickle, which vibecheck does not execute); \
                     save it with safetensors (peft's save_pretrained does by default)"
                } else {
                    "an adapter folder needs adapter_model.safetensors beside adapter_config.json"
                },
            ));
        }
        let base_spec = match &opts.base {
            Some(b) => b.clone(),
            None => vibecheck_checkpoint::adapter_base(dir)?,
        };
        let base = shared_base(&base_spec, opts).map_err(|e| {
            EngineError::file(
                &cfg_path,
                format!(
                    "the adapter's base model {base_spec:?}{} cannot be loaded: {}. Pass the base with --base \
                     (a folder, a .gguf file or a cached hub id)",
                    if opts.base.is_some() { " (from --base)" } else { " (base_model_name_or_path)" },
                    e.to_string().trim_end_matches('.')
                ),
            )
        })?;
        let files = vec![weights_path.clone()];
        let weights =
            Weights::from_safetensors(files, base.decoder.dtype(), base.decoder.device())?;
        let (decoder, summary) = crate::lora::apply(&base.decoder, &config, &weights)?;
        tracing::info!(
            adapter = %source.name,
            base = %base.source.name,
            adapted = summary.adapted,
            replaced = ?summary.replaced,
            "LoRA adapter applied over a shared base"
        );
        // The adapter folder's own tokenizer and chat template (trainers save them there) where it has them.
        let (tokenizer, template) = if dir.join("tokenizer.json").is_file() {
            let tokenizer = Tokenizer::from_hf_dir(dir)?;
            let template = match template_source_from_dir(dir)? {
                Some(src) => compile_template(Some(src), &tokenizer)?,
                None => base.template.clone(),
            };
            (tokenizer, template)
        } else {
            (base.tokenizer.clone(), base.template.clone())
        };
        let (mut defaults, gen_eos) = read_generation_config(&dir.join("generation_config.json"))?;
        if !dir.join("generation_config.json").is_file() {
            defaults = base.defaults.clone();
        }
        let eos_ids = union(&[&gen_eos, &base.eos_ids, &tokenizer.eos_ids]);
        Ok(Self {
            decoder,
            tokenizer,
            template,
            defaults,
            eos_ids,
            source: source.clone(),
            load_time: Duration::ZERO,
            packed_bytes: weights.packed_bytes() + summary.bytes,
            adapter: Some(Adapter {
                base,
                summary,
                config,
            }),
            hash: Default::default(),
        })
    }
}

/// What a load checks before any tensor is read: the model's description parses (its architecture is one this
/// engine runs), every weight file's header is consistent with the file, and an adapter's own description and
/// base are in order. Headers only, so a server runs it for every source it is given at start, and a source that
/// cannot load fails there with its reason rather than at the first request.
pub fn preflight(source: &Source, opts: &LoadOptions) -> Result<(), EngineError> {
    let path = &source.path;
    match source.kind {
        SourceKind::HfFolder => {
            ModelConfig::from_hf_dir(path)?;
            vibecheck_checkpoint::shard_files(path)?;
        }
        SourceKind::Gguf => {
            let content = read_gguf(path)?;
            gguf::config_from_gguf(&content).map_err(|m| EngineError::file(path, m))?;
        }
        SourceKind::Adapter => {
            let cfg_path = path.join("adapter_config.json");
            let json = vibecheck_checkpoint::adapter_config(path)?;
            crate::lora::AdapterConfig::from_json(&json)
                .map_err(|m| EngineError::file(&cfg_path, m))?;
            let weights = path.join("adapter_model.safetensors");
            vibecheck_checkpoint::safetensors_header::read(&weights)?;
            let spec = match &opts.base {
                Some(b) => b.clone(),
                None => vibecheck_checkpoint::adapter_base(path)?,
            };
            let base = vibecheck_checkpoint::resolve(&spec).map_err(|e| {
                EngineError::file(
                    &cfg_path,
                    format!(
                        "the adapter's base model {spec:?} cannot be found: {}. Pass the base with --base",
                        e.to_string().trim_end_matches('.')
                    ),
                )
            })?;
            if base.kind == SourceKind::Adapter {
                return Err(EngineError::file(
                    &base.path,
                    "is an adapter itself; an adapter's base must be a full model",
                ));
            }
            preflight(&base, opts)?;
        }
    }
    Ok(())
}

/// Bases of LoRA adapters, shared: each is loaded once and lives while an adapter over it does. The most
/// recently used one is also held here, so switching between the adapters of one run never reloads it even
/// when no adapter is loaded in between.
struct Bases {
    loaded: Vec<(String, Weak<Model>)>,
    recent: Option<Arc<Model>>,
}

static BASES: Mutex<Bases> = Mutex::new(Bases {
    loaded: Vec::new(),
    recent: None,
});

/// How many times a base model was actually loaded in this process (shared bases are not counted again).
pub fn base_loads() -> usize {
    BASE_LOADS.load(std::sync::atomic::Ordering::Relaxed)
}

static BASE_LOADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn shared_base(spec: &str, opts: &LoadOptions) -> Result<Arc<Model>, EngineError> {
    let source = vibecheck_checkpoint::resolve(spec)?;
    if source.kind == SourceKind::Adapter {
        return Err(EngineError::file(
            &source.path,
            "is an adapter itself; an adapter's base must be a full model",
        ));
    }
    let place = source
        .path
        .canonicalize()
        .unwrap_or_else(|_| source.path.clone());
    let key = format!(
        "{}|{:?}|{:?}|{:?}|{:?}|{}",
        place.display(),
        opts.device.location(),
        opts.dtype,
        opts.quantize,
        opts.kv_cache,
        opts.max_context
    );
    // Held while loading: two adapters over one base wait for the one load rather than making two.
    let mut bases = BASES.lock().unwrap_or_else(|p| p.into_inner());
    bases.loaded.retain(|(_, w)| w.strong_count() > 0);
    if let Some(m) = bases
        .loaded
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, w)| w.upgrade())
    {
        bases.recent = Some(m.clone());
        return Ok(m);
    }
    let base_opts = LoadOptions {
        base: None,
        ..opts.clone()
    };
    let model = Arc::new(Model::load_source(source, &base_opts)?);
    BASE_LOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    bases.loaded.push((key, Arc::downgrade(&model)));
    bases.recent = Some(model.clone());
    Ok(model)
}

/// Every id of `lists`, first occurrence first.
fn union(lists: &[&[u32]]) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    for id in lists.iter().flat_map(|l| l.iter()) {
        if !out.contains(id) {
            out.push(*id);
        }
    }
    out
}

fn compile_template(
    source: Option<String>,
    tokenizer: &Tokenizer,
) -> Result<Option<ChatTemplate>, EngineError> {
    source
        .map(|src| {
            ChatTemplate::new(
                &src,
                tokenizer.bos_token.as_deref(),
                tokenizer.eos_token.as_deref(),
            )
        })
        .transpose()
}

/// The dtype named in `config.json` (`torch_dtype` or `dtype`), float32 when absent.
fn stored_dtype(dir: &Path) -> DType {
    let text = crate::config::read_small_file(&dir.join("config.json")).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    match json
        .get("torch_dtype")
        .or_else(|| json.get("dtype"))
        .and_then(|v| v.as_str())
    {
        Some("bfloat16") => DType::BF16,
        Some("float16") => DType::F16,
        _ => DType::F32,
    }
}

/// Reads `generation_config.json` (absent is fine): sampling defaults and end-of-sequence ids.
pub fn read_generation_config(path: &Path) -> Result<(SamplingOverrides, Vec<u32>), EngineError> {
    if !path.is_file() {
        return Ok((SamplingOverrides::default(), Vec::new()));
    }
    let text = crate::config::read_small_file(path)?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| EngineError::file(path, format!("not valid JSON: {e}")))?;
    let defaults = SamplingOverrides::from_generation_config(&json);
    Ok((defaults, token_ids(json.get("eos_token_id"))))
}

/// A KV cache dtype other than the compute dtype is for the CPU kernels (the decoding attention reads float16 in
/// place there); on a GPU it would only add a conversion of the whole cache per layer and step.
fn check_kv_cache(opts: &LoadOptions) -> Result<(), EngineError> {
    match opts.kv_cache {
        Some(d) if !opts.device.is_cpu() => Err(EngineError::Config(format!(
            "--kv-cache {} runs on the CPU kernels; on a GPU the cache follows --dtype",
            d.as_str()
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_config_gives_eos_list_and_sampling_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("generation_config.json");
        std::fs::write(&path, r#"{"do_sample": true, "temperature": 0.6, "top_p": 0.9, "eos_token_id": [128001, 128009]}"#).unwrap();
        let (defaults, eos) = read_generation_config(&path).unwrap();
        assert_eq!(eos, vec![128001, 128009]);
        let p = defaults.apply(SamplingParams::greedy(64));
        assert_eq!((p.temperature, p.top_p, p.max_tokens), (0.6, 0.9, 64));
        std::fs::write(&path, r#"{"eos_token_id": 2}"#).unwrap();
        let (defaults, eos) = read_generation_config(&path).unwrap();
        assert_eq!(eos, vec![2]);
        assert_eq!(
            defaults.apply(SamplingParams::greedy(8)).temperature,
            0.0,
            "greedy unless the checkpoint asks to sample"
        );
        std::fs::write(&path, "{oops").unwrap();
        let err = read_generation_config(&path).unwrap_err().to_string();
        assert!(err.contains("generation_config.json"), "{err}");
    }
}
