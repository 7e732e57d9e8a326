//! Tokenizers: `tokenizer.json` from a checkpoint folder, or one rebuilt from GGUF metadata alone, plus the
//! UTF-8-safe incremental decoder used for streaming.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value as GValue};
use serde_json::{json, Value};

use crate::EngineError;

/// A tokenizer with the special tokens a chat template refers to.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// End-of-sequence ids known to the tokenizer files (generation_config may add more).
    pub eos_ids: Vec<u32>,
}

impl Tokenizer {
    /// Loads `tokenizer.json` and the special tokens of `tokenizer_config.json` from a checkpoint folder.
    pub fn from_hf_dir(dir: &Path) -> Result<Self, EngineError> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(EngineError::file(
                dir,
                "no tokenizer.json in this checkpoint folder; copy it from the base model (trainers save it with \
                 `tokenizer.save_pretrained`)",
            ));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| EngineError::file(&path, format!("cannot load tokenizer: {e}")))?;
        let cfg = read_json_opt(&dir.join("tokenizer_config.json"))?;
        let token_str = |key: &str| -> Option<String> {
            let v = cfg.as_ref()?.get(key)?;
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .map(str::to_string),
                _ => None,
            }
        };
        let bos_token = token_str("bos_token");
        let eos_token = token_str("eos_token");
        let eos_ids = eos_token
            .iter()
            .filter_map(|t| inner.token_to_id(t))
            .collect();
        Ok(Self {
            inner,
            bos_token,
            eos_token,
            eos_ids,
        })
    }

    /// Rebuilds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self, EngineError> {
        let json = gguf_tokenizer_json(content).map_err(|m| EngineError::file(path, m))?;
        Self::from_gguf_json(json, &GgufSpecialTokens::read(content), path)
    }

    /// Builds the tokenizer from [`gguf_tokenizer_json`]'s document (the slow part, so it can run on its own
    /// thread while weights load).
    pub fn from_gguf_json(
        json: Value,
        special: &GgufSpecialTokens,
        path: &Path,
    ) -> Result<Self, EngineError> {
        let inner = serde_json::from_value::<tokenizers::Tokenizer>(json).map_err(|e| {
            EngineError::file(
                path,
                format!("cannot build the tokenizer from GGUF metadata: {e}"),
            )
        })?;
        let tok = |id: Option<u32>| id.and_then(|i| inner.id_to_token(i));
        let mut eos_ids: Vec<u32> = special.eos.into_iter().collect();
        if let Some(eot) = special.eot {
            if !eos_ids.contains(&eot) {
                eos_ids.push(eot);
            }
        }
        Ok(Self {
            bos_token: tok(special.bos),
            eos_token: tok(special.eos),
            eos_ids,
            inner,
        })
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, EngineError> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, EngineError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// The special token ids a GGUF file names.
#[derive(Debug, Clone, Copy, Default)]
pub struct GgufSpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
}

impl GgufSpecialTokens {
    pub fn read(content: &gguf_file::Content) -> Self {
        let id_of = |k: &str| content.metadata.get(k).and_then(|v| v.to_u32().ok());
        Self {
            bos: id_of("tokenizer.ggml.bos_token_id"),
            eos: id_of("tokenizer.ggml.eos_token_id"),
            eot: id_of("tokenizer.ggml.eot_token_id"),
        }
    }
}

fn read_json_opt(path: &Path) -> Result<Option<Value>, EngineError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| EngineError::file(path, format!("not valid JSON: {e}")))
}

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(pattern: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
}

/// A `tokenizer.json` document equivalent to the GGUF's embedded vocabulary: byte-level BPE
/// (`tokenizer.ggml.model = "gpt2"`) or SentencePiece BPE (`"llama"`), built as transformers builds them from a GGUF.
pub fn gguf_tokenizer_json(content: &gguf_file::Content) -> Result<Value, String> {
    let md = &content.metadata;
    let model = md
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .ok_or("missing `tokenizer.ggml.model`: this GGUF carries no tokenizer")?;
    let strings = |key: &str| -> Result<Vec<String>, String> {
        match md.get(key) {
            Some(GValue::Array(a)) => a
                .iter()
                .map(|v| {
                    v.to_string()
                        .cloned()
                        .map_err(|_| format!("`{key}` holds a non-string"))
                })
                .collect(),
            _ => Err(format!("missing `{key}`")),
        }
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
        Some(GValue::Array(a)) => a.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    let add_bos = md
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.to_bool().ok());
    let bos_id = md
        .get("tokenizer.ggml.bos_token_id")
        .and_then(|v| v.to_u32().ok());
    let pair = |l: &str, r: &str| json!([l, r]);
    // What differs between the two kinds; the document around it is shared.
    let (pre_tokenizer, decoder, merges, sentencepiece) = match model.as_str() {
        "gpt2" => {
            let merges: Vec<Value> =
                strings("tokenizer.ggml.merges")?.iter().filter_map(|m| m.split_once(' ')).map(|(l, r)| pair(l, r)).collect();
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            (byte_level_pre_tokenizer(md)?, decoder, merges, false)
        }
        "llama" => {
            let merges: Vec<Value> = match md.get("tokenizer.ggml.merges") {
                Some(GValue::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.to_string().ok())
                    .filter_map(|m| m.split_once(' '))
                    .map(|(l, r)| pair(l, r))
                    .collect(),
                _ => {
                    let scores: Vec<f32> = match md.get("tokenizer.ggml.scores") {
                        Some(GValue::Array(a)) => a.iter().map(|v| v.to_f32().unwrap_or(0.0)).collect(),
                        _ => return Err("a SentencePiece vocabulary needs `tokenizer.ggml.merges` or `tokenizer.ggml.scores`".into()),
                    };
                    merges_from_scores(&tokens, &scores).iter().map(|(l, r)| pair(l, r)).collect()
                }
            };
            let pre = json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false});
            let decoder = json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]});
            (pre, decoder, merges, true)
        }
        other => {
            return Err(format!(
                "tokenizer.ggml.model = {other:?} is not supported (supported: \"gpt2\", the byte-level BPE of SmolLM, \
                 Llama 3 and Qwen, and \"llama\", the SentencePiece BPE of Llama 2, TinyLlama and Mistral); \
                 convert the original checkpoint folder instead"
            ))
        }
    };
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        vocab.insert(tok.clone(), json!(id));
        // 3 = control (special), 4 = user-defined: matched as whole strings before BPE.
        let kind = types.get(id).copied().unwrap_or(1);
        if kind == 3 || kind == 4 {
            added.push(json!({"id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                              "normalized": false, "special": kind == 3}));
        }
    }
    // SentencePiece vocabularies (Llama 2) start every prompt with BOS unless the file says otherwise.
    let post_processor = bos_post_processor(add_bos.unwrap_or(sentencepiece), bos_id, &tokens);
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": sentencepiece, "byte_fallback": sentencepiece,
                  "ignore_merges": false, "vocab": vocab, "merges": merges}
    }))
}

/// The pre-tokenizer a byte-level vocabulary's `tokenizer.ggml.pre` names.
fn byte_level_pre_tokenizer(
    md: &std::collections::HashMap<String, GValue>,
) -> Result<Value, String> {
    let pre = md
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
        .unwrap_or("default");
    Ok(match pre {
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "gpt2" | "default" | "gpt-2" => byte_level(true),
        "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe" => json!({"type": "Sequence", "pretokenizers": [
            split(LLAMA3_SPLIT), byte_level(false)]}),
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false)]}),
        other => {
            return Err(format!(
                "tokenizer.ggml.pre = {other:?} is not supported yet (supported: smollm, gpt2, default, llama3, qwen2)"
            ))
        }
    })
}

/// Merges implied by a scored vocabulary, in transformers' order (`generate_merges`): every split of every token
/// into two known pieces, best score first, then shorter left and right pieces, ties in vocabulary order.
pub fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let ids: std::collections::HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    for (tok, &score) in tokens.iter().zip(scores) {
        let mut local: Vec<(&str, &str, f32)> = tok
            .char_indices()
            .skip(1)
            .map(|(i, _)| (&tok[..i], &tok[i..]))
            .filter(|(l, r)| ids.contains_key(l) && ids.contains_key(r))
            .map(|(l, r)| (l, r, score))
            .collect();
        local.sort_by_key(|(l, r, _)| (ids[l], ids[r]));
        merges.extend(local);
    }
    let key = |m: &(&str, &str, f32)| (m.2, m.0.chars().count(), m.1.chars().count());
    merges.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect()
}

fn bos_post_processor(add_bos: bool, bos_id: Option<u32>, tokens: &[String]) -> Value {
    match (add_bos, bos_id) {
        (true, Some(id)) => {
            let bos = tokens.get(id as usize).cloned().unwrap_or_default();
            json!({"type": "TemplateProcessing",
                   "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                   "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                            {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                   "special_tokens": {bos.clone(): {"id": bos, "ids": [id], "tokens": [bos]}}})
        }
        _ => Value::Null,
    }
}

/// Turns a growing list of token ids into text pieces, never splitting a UTF-8 character: a piece is released
/// only once the bytes decoded so far form complete characters.
pub struct DecodeStream {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
    skip_special: bool,
}

impl DecodeStream {
    pub fn new(skip_special: bool) -> Self {
        Self {
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            skip_special,
        }
    }

    /// Adds one token; returns the new text it completes, if any.
    pub fn step(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>, EngineError> {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let now = tok.decode(&self.ids[self.prefix..], self.skip_special)?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
            if let Some(delta) = now.get(before.len()..) {
                if now.starts_with(&before) {
                    let delta = delta.to_string();
                    self.prefix = self.read;
                    self.read = self.ids.len();
                    return Ok(Some(delta));
                }
            }
        }
        Ok(None)
    }

    /// Whatever is still held back at the end of generation (an incomplete character decodes to U+FFFD).
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<Option<String>, EngineError> {
        let before = tok.decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let now = tok.decode(&self.ids[self.prefix..], self.skip_special)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(now
            .get(before.len()..)
            .filter(|d| !d.is_empty())
            .map(str::to_string))
    }
}
