//! Tokenizers: `tokenizer.json` from a checkpoint folder, or one rebuilt from GGUF metadata alone, plus the
//! UTF-8-safe incremental decoder used for streaming.

use std::path::Path;

use candle_core::quantized::gguf_file;
use serde_json::Value;

use crate::gguf::GgufVocab;

use crate::EngineError;

/// A tokenizer with the special tokens a chat template refers to.
#[derive(Clone)]
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
        let inner = read_tokenizer_json(&path)?;
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

    /// Rebuilds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata (left in place).
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self, EngineError> {
        let vocab = GgufVocab::read(content).map_err(|m| EngineError::file(path, m))?;
        Self::from_gguf_vocab(vocab, path)
    }

    /// Builds the tokenizer from a GGUF vocabulary (the slow part, so it can run on its own thread while
    /// weights load).
    pub fn from_gguf_vocab(vocab: GgufVocab, path: &Path) -> Result<Self, EngineError> {
        let special = vocab.special;
        let inner = vocab.into_tokenizer().map_err(|e| {
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

/// Reads a `tokenizer.json`. A BPE model (nearly every chat model's) is deserialized straight from its part of
/// the document: `tokenizers` would first copy any model into an intermediate value (~17 MB for a 49 152-token
/// vocabulary, freed after loading but part of the process's peak memory). Other models load as `tokenizers`
/// loads them; a test checks both ways give the same tokenizer on every reference tokenizer.
pub fn read_tokenizer_json(path: &Path) -> Result<tokenizers::Tokenizer, EngineError> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    tokenizer_from_json(&text)
        .map_err(|e| EngineError::file(path, format!("cannot load tokenizer: {e}")))
}

/// A `tokenizer.json` document's text as a tokenizer (see [`read_tokenizer_json`]); the error is the message.
pub fn tokenizer_from_json(text: &str) -> Result<tokenizers::Tokenizer, String> {
    use serde_json::value::RawValue;
    use std::collections::BTreeMap;
    let bad = |e: &dyn std::fmt::Display| e.to_string();
    let whole = || text.parse::<tokenizers::Tokenizer>().map_err(|e| bad(&e));
    // A document that is not well-formed JSON is refused here: `tokenizers` parses the `decoder` section with an
    // `expect`, so a syntax error inside it panicked (found by the tokenizer_json fuzz target). Reading the
    // document as an object of raw values checks all of its syntax (and nesting depth) first.
    let mut doc = serde_json::from_str::<BTreeMap<String, &RawValue>>(text)
        .map_err(|e| format!("not a JSON object: {e}"))?;
    #[derive(serde::Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    let Some(model) = doc.get("model").copied() else {
        return whole();
    };
    match serde_json::from_str::<Kind>(model.get()) {
        Ok(Kind { kind: Some(k) }) if k == "BPE" => {}
        _ => return whole(),
    }
    // Anything the direct route cannot read goes through `tokenizers`' own loading, whose error names the
    // document's line and column.
    let Ok(bpe) = serde_json::from_str::<tokenizers::models::bpe::BPE>(model.get()) else {
        return whole();
    };
    #[derive(serde::Deserialize)]
    struct AddedWithId {
        #[allow(dead_code)]
        id: u32,
        #[serde(flatten)]
        token: tokenizers::AddedToken,
    }
    let added: Vec<AddedWithId> = match doc
        .get("added_tokens")
        .map(|raw| serde_json::from_str(raw.get()))
    {
        Some(Ok(added)) => added,
        Some(Err(_)) => return whole(),
        None => Vec::new(),
    };
    // The rest of the document around an empty model; the added tokens go in once the real model is in place
    // (their ids come from its vocabulary), as `tokenizers` adds them after building.
    let empty_model = RawValue::from_string(r#"{"type":"BPE","vocab":{},"merges":[]}"#.into())
        .map_err(|e| bad(&e))?;
    let no_tokens = RawValue::from_string("[]".into()).map_err(|e| bad(&e))?;
    doc.insert("model".into(), &empty_model);
    doc.insert("added_tokens".into(), &no_tokens);
    let shell = serde_json::to_string(&doc).map_err(|e| bad(&e))?;
    let Ok(mut tokenizer) = shell.parse::<tokenizers::Tokenizer>() else {
        return whole();
    };
    tokenizer.with_model(bpe);
    let added: Vec<tokenizers::AddedToken> = added.into_iter().map(|a| a.token).collect();
    tokenizer.add_tokens(&added);
    Ok(tokenizer)
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
