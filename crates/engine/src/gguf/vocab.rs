//! A GGUF file's embedded vocabulary and special tokens, read into the parts a tokenizer is made of.

use candle_core::quantized::gguf_file::{self, Value as GValue};
use serde_json::{json, Value};

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(pattern: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
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

/// The metadata arrays a GGUF vocabulary is stored in (a few MB of strings on a 50 000-token vocabulary).
const VOCAB_ARRAYS: [&str; 4] = [
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
];

/// A GGUF file's embedded vocabulary, read into the parts a tokenizer is made of: byte-level BPE
/// (`tokenizer.ggml.model = "gpt2"`) or SentencePiece BPE (`"llama"`), built as transformers builds them from a
/// GGUF. [`GgufVocab::into_tokenizer`] builds the tokenizer directly; [`GgufVocab::to_json`] writes the same
/// tokenizer as a `tokenizer.json` document (for conversion to a folder).
pub struct GgufVocab {
    tokens: Vec<String>,
    /// GGUF token types (1 normal, 3 control, 4 user-defined, ...), one per token.
    types: Vec<i32>,
    merges: Vec<(String, String)>,
    /// SentencePiece-style (Llama 2): unknown bytes fall back to `<0xNN>` tokens.
    sentencepiece: bool,
    pre_tokenizer: Value,
    decoder: Value,
    post_processor: Value,
    pub special: GgufSpecialTokens,
}

impl GgufVocab {
    /// Reads the vocabulary, leaving the metadata as it is.
    pub fn read(content: &gguf_file::Content) -> Result<Self, String> {
        let arrays = VOCAB_ARRAYS
            .iter()
            .filter_map(|k| content.metadata.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect();
        Self::build(content, arrays)
    }

    /// Reads the vocabulary, moving its strings out of the metadata (whose vocabulary arrays are removed):
    /// loading then holds each token string once rather than in the metadata, a document and the tokenizer.
    pub fn take(content: &mut gguf_file::Content) -> Result<Self, String> {
        let arrays = VOCAB_ARRAYS
            .iter()
            .filter_map(|k| content.metadata.remove_entry(*k))
            .collect();
        Self::build(content, arrays)
    }

    fn build(
        content: &gguf_file::Content,
        mut arrays: std::collections::HashMap<String, GValue>,
    ) -> Result<Self, String> {
        let md = &content.metadata;
        let model = md
            .get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .ok_or("missing `tokenizer.ggml.model`: this GGUF carries no tokenizer")?;
        let mut array = |key: &str| match arrays.remove(key) {
            Some(GValue::Array(a)) => Some(a),
            _ => None,
        };
        let strings = |key: &str, values: Option<Vec<GValue>>| -> Result<Vec<String>, String> {
            values
                .ok_or_else(|| format!("missing `{key}`"))?
                .into_iter()
                .map(|v| match v {
                    GValue::String(s) => Ok(s),
                    _ => Err(format!("`{key}` holds a non-string")),
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens", array("tokenizer.ggml.tokens"))?;
        let types: Vec<i32> = match array("tokenizer.ggml.token_type") {
            Some(a) => a.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        let split_merges = |merges: Vec<String>| -> Vec<(String, String)> {
            merges
                .iter()
                .filter_map(|m| m.split_once(' '))
                .map(|(l, r)| (l.to_string(), r.to_string()))
                .collect()
        };
        // What differs between the two kinds; the rest of the tokenizer is shared.
        let (pre_tokenizer, decoder, merges, sentencepiece) = match model.as_str() {
            "gpt2" => {
                let merges = strings("tokenizer.ggml.merges", array("tokenizer.ggml.merges"))?;
                let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
                (byte_level_pre_tokenizer(md)?, decoder, split_merges(merges), false)
            }
            "llama" => {
                let merges = match array("tokenizer.ggml.merges") {
                    Some(a) => split_merges(
                        a.into_iter()
                            .filter_map(|v| match v {
                                GValue::String(s) => Some(s),
                                _ => None,
                            })
                            .collect(),
                    ),
                    None => {
                        let scores: Vec<f32> = match array("tokenizer.ggml.scores") {
                            Some(a) => a.iter().map(|v| v.to_f32().unwrap_or(0.0)).collect(),
                            None => return Err("a SentencePiece vocabulary needs `tokenizer.ggml.merges` or `tokenizer.ggml.scores`".into()),
                        };
                        merges_from_scores(&tokens, &scores)
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
        let add_bos = md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok());
        let special = GgufSpecialTokens::read(content);
        // SentencePiece vocabularies (Llama 2) start every prompt with BOS unless the file says otherwise.
        let post_processor =
            bos_post_processor(add_bos.unwrap_or(sentencepiece), special.bos, &tokens);
        Ok(Self {
            tokens,
            types,
            merges,
            sentencepiece,
            pre_tokenizer,
            decoder,
            post_processor,
            special,
        })
    }

    /// Ids of the tokens matched as whole strings before BPE (GGUF type 3 = control, i.e. special, and
    /// 4 = user-defined), with whether each is special.
    fn added(&self) -> impl Iterator<Item = (usize, bool)> + '_ {
        self.types
            .iter()
            .take(self.tokens.len())
            .enumerate()
            .filter(|(_, &kind)| kind == 3 || kind == 4)
            .map(|(id, &kind)| (id, kind == 3))
    }

    /// The tokenizer document around a model and added tokens (shared by both ways of building).
    fn document(&self, model: Value, added: Value) -> Value {
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": self.pre_tokenizer,
            "post_processor": self.post_processor,
            "decoder": self.decoder,
            "model": model,
        })
    }

    fn bpe_json(&self, vocab: Value, merges: Value) -> Value {
        json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
               "end_of_word_suffix": null, "fuse_unk": self.sentencepiece, "byte_fallback": self.sentencepiece,
               "ignore_merges": false, "vocab": vocab, "merges": merges})
    }

    /// The vocabulary as a `tokenizer.json` document.
    pub fn to_json(&self) -> Value {
        let mut vocab = serde_json::Map::with_capacity(self.tokens.len());
        for (id, tok) in self.tokens.iter().enumerate() {
            vocab.insert(tok.clone(), json!(id));
        }
        let merges: Vec<Value> = self.merges.iter().map(|(l, r)| json!([l, r])).collect();
        let added: Vec<Value> = self
            .added()
            .map(|(id, special)| {
                json!({"id": id, "content": self.tokens[id], "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": special})
            })
            .collect();
        self.document(self.bpe_json(json!(vocab), json!(merges)), json!(added))
    }

    /// Builds the tokenizer without a document in between: the vocabulary and merges go straight into the BPE
    /// model (the same tokenizer [`Self::to_json`] describes; a test compares the two).
    pub fn into_tokenizer(self) -> Result<tokenizers::Tokenizer, String> {
        use tokenizers::models::bpe::{Vocab, BPE};
        let added: Vec<tokenizers::AddedToken> = self
            .added()
            .map(|(id, special)| {
                tokenizers::AddedToken::from(self.tokens[id].clone(), special)
                    .single_word(false)
                    .lstrip(false)
                    .rstrip(false)
                    .normalized(false)
            })
            .collect();
        // The small parts (pre-tokenizer, decoder, post-processor) come from the document with an empty model.
        let shell = self.document(self.bpe_json(json!({}), json!([])), json!([]));
        let mut tokenizer: tokenizers::Tokenizer =
            serde_json::from_value(shell).map_err(|e| e.to_string())?;
        let vocab: Vocab = self
            .tokens
            .into_iter()
            .enumerate()
            .map(|(id, tok)| (tok, id as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, self.merges)
            .fuse_unk(self.sentencepiece)
            .byte_fallback(self.sentencepiece)
            .build()
            .map_err(|e| e.to_string())?;
        tokenizer.with_model(bpe);
        tokenizer.add_tokens(&added);
        Ok(tokenizer)
    }
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
