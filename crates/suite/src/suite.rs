//! Prompt suites: our TOML format (one `[[prompts]]` table per prompt) and MT-Bench's `question.jsonl` read as is.
//! A suite is identified by the SHA-256 of its canonical JSON body, so editing any prompt makes a new version and
//! answers to different versions never mix.
//!
//! ```toml
//! name = "my vibes"
//! [defaults]                 # optional; any prompt may override
//! max_tokens = 256
//! temperature = 0.7          # for seeded samples; the first answer is always greedy
//! # any other sampling setting of the engine's `SamplingOverrides` but `seed` (top_p, stop, ...)
//!
//! [[prompts]]
//! id = "games"
//! category = "open-ended"
//! system = "You are a patient kindergarten teacher."   # optional
//! turns = ["Suggest games for a 3-year-old and a 7-year-old to play together.", "Which needs no toys?"]
//! reference = ["..."]        # optional reference answer(s), per turn
//! ```
//! A single-turn prompt may say `prompt = "..."` instead of `turns`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vibecheck_engine::{SamplingOverrides, SamplingParams};

/// A problem with a suite file; the message names the file and the prompt or line.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct SuiteError {
    pub file: String,
    pub message: String,
}

fn err(file: &str, message: impl Into<String>) -> SuiteError {
    SuiteError {
        file: file.to_string(),
        message: message.into(),
    }
}

/// Sampling settings a suite (`[defaults]`) or a prompt may set: the engine's one [`SamplingOverrides`], under
/// its own names. Checked against the engine's limits table; `seed` is the runner's (sample k is seeded with k).
pub type Overrides = SamplingOverrides;

fn check(o: &Overrides, what: &str) -> Result<(), String> {
    if o.seed.is_some() {
        return Err(format!(
            "{what}: `seed` is set by the runner (the greedy answer needs none, sample k is seeded with k); leave it out"
        ));
    }
    o.apply(SamplingParams::default())
        .validate()
        .map_err(|e| format!("{what}: {} = {} must be {}", e.field, e.value, e.rule))
}

/// One prompt: a conversation of one or more user turns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuitePrompt {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub turns: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub reference: Vec<String>,
    #[serde(skip_serializing_if = "is_default", default)]
    pub params: Overrides,
}

fn is_default(o: &Overrides) -> bool {
    *o == Overrides::default()
}

/// A prompt suite. Its [`Suite::hash`] is its version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suite {
    pub name: String,
    #[serde(skip_serializing_if = "is_default", default)]
    pub defaults: Overrides,
    pub prompts: Vec<SuitePrompt>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSuite {
    name: Option<String>,
    #[serde(default)]
    defaults: Overrides,
    #[serde(default)]
    prompts: Vec<RawPrompt>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
struct RawPrompt {
    id: Option<String>,
    category: Option<String>,
    system: Option<String>,
    prompt: Option<String>,
    turns: Option<Vec<String>>,
    reference: Option<OneOrMany>,
    /// Everything else: the prompt's sampling settings, read as [`Overrides`] (which refuses unknown keys).
    #[serde(flatten)]
    params: toml::Table,
}

/// One line of MT-Bench's `question.jsonl`.
#[derive(Deserialize)]
struct MtBenchQuestion {
    question_id: serde_json::Value,
    category: Option<String>,
    turns: Vec<String>,
    #[serde(default)]
    reference: Option<Vec<String>>,
}

/// The built-in suite of classic vibe prompts.
pub const DEFAULT_SUITE: &str = include_str!("default_suite.toml");

impl Suite {
    /// Reads a suite file: `.jsonl` as MT-Bench questions, anything else as our TOML format.
    pub fn load(path: &Path) -> Result<Self, SuiteError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(&file, format!("cannot read the prompt file: {e}")))?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "suite".into());
        if path.extension().is_some_and(|e| e == "jsonl") {
            Self::from_mt_bench(&text, &stem, &file)
        } else {
            Self::from_toml(&text, &stem, &file)
        }
    }

    /// The built-in default suite.
    pub fn builtin() -> Self {
        Self::from_toml(DEFAULT_SUITE, "default", "built-in default suite")
            .expect("the built-in suite is valid")
    }

    /// Parses our TOML format; `file` names the source in errors.
    pub fn from_toml(text: &str, default_name: &str, file: &str) -> Result<Self, SuiteError> {
        let raw: RawSuite = toml::from_str(text).map_err(|e| err(file, e.to_string()))?;
        check(&raw.defaults, "[defaults]").map_err(|m| err(file, m))?;
        let mut prompts = Vec::new();
        for (i, p) in raw.prompts.into_iter().enumerate() {
            let at = format!("prompt #{} ", i + 1);
            let id = p.id.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
                err(
                    file,
                    format!("{at}has no `id`; give every prompt a short unique id"),
                )
            })?;
            let at = format!("prompt {id:?}");
            let turns = match (p.prompt, p.turns) {
                (Some(t), None) => vec![t],
                (None, Some(t)) => t,
                (Some(_), Some(_)) => {
                    return Err(err(
                        file,
                        format!("{at} has both `prompt` and `turns`; keep one"),
                    ))
                }
                (None, None) => {
                    return Err(err(
                        file,
                        format!("{at} needs `prompt = \"...\"` or `turns = [...]`"),
                    ))
                }
            };
            prompts.push(SuitePrompt {
                id,
                category: p.category,
                system: p.system,
                turns,
                reference: p.reference.map(OneOrMany::into_vec).unwrap_or_default(),
                params: p
                    .params
                    .try_into()
                    .map_err(|e: toml::de::Error| {
                        err(
                            file,
                            format!(
                                "{at}: {} (a prompt's own keys are id, category, system, prompt, turns and reference)",
                                e.message()
                            ),
                        )
                    })?,
            });
        }
        let suite = Suite {
            name: raw.name.unwrap_or_else(|| default_name.to_string()),
            defaults: raw.defaults,
            prompts,
        };
        suite.validate().map_err(|m| err(file, m))?;
        Ok(suite)
    }

    /// Parses MT-Bench's `question.jsonl` (`question_id`, `category`, `turns`, optional `reference`).
    pub fn from_mt_bench(text: &str, name: &str, file: &str) -> Result<Self, SuiteError> {
        let mut prompts = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let q: MtBenchQuestion = serde_json::from_str(line)
                .map_err(|e| err(file, format!("line {}: {e}", n + 1)))?;
            let id = match q.question_id {
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::String(s) => s,
                other => {
                    return Err(err(
                        file,
                        format!(
                            "line {}: question_id {other} is neither a number nor a string",
                            n + 1
                        ),
                    ))
                }
            };
            prompts.push(SuitePrompt {
                id,
                category: q.category,
                system: None,
                turns: q.turns,
                reference: q.reference.unwrap_or_default(),
                params: Overrides::default(),
            });
        }
        let suite = Suite {
            name: name.to_string(),
            defaults: Overrides::default(),
            prompts,
        };
        suite.validate().map_err(|m| err(file, m))?;
        Ok(suite)
    }

    fn validate(&self) -> Result<(), String> {
        if self.prompts.is_empty() {
            return Err("the suite has no prompts; add at least one [[prompts]] entry".into());
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.prompts {
            if !seen.insert(p.id.as_str()) {
                return Err(format!(
                    "two prompts have the id {:?}; ids must be unique",
                    p.id
                ));
            }
            if p.turns.is_empty() || p.turns.iter().any(|t| t.trim().is_empty()) {
                return Err(format!("prompt {:?} has an empty turn", p.id));
            }
            check(&p.params, &format!("prompt {:?}", p.id))?;
        }
        Ok(())
    }

    /// The canonical body: what the hash covers and what the store keeps.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).expect("a suite serializes")
    }

    /// The version: SHA-256 of the canonical body, hex.
    pub fn hash(&self) -> String {
        hex(&Sha256::digest(self.canonical_json().as_bytes()))
    }

    pub fn prompt(&self, id: &str) -> Option<&SuitePrompt> {
        self.prompts.iter().find(|p| p.id == id)
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_suite_is_valid_and_has_the_classic_prompts() {
        let s = Suite::builtin();
        assert!(s.prompts.len() >= 6);
        assert!(
            s.prompts.iter().any(|p| p.turns.len() > 1),
            "a multi-turn follow-up"
        );
        assert!(s.prompt("games").unwrap().turns[0].contains("7-year-old"));
    }

    #[test]
    fn editing_a_prompt_makes_a_new_version() {
        let a = Suite::from_toml("[[prompts]]\nid = \"x\"\nprompt = \"Hi\"\n", "s", "f").unwrap();
        let b = Suite::from_toml("[[prompts]]\nid = \"x\"\nprompt = \"Hi!\"\n", "s", "f").unwrap();
        let a2 = Suite::from_toml(
            "# a comment\n[[prompts]]\nid = 'x'\nprompt = \"Hi\"\n",
            "s",
            "f",
        )
        .unwrap();
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), a2.hash(), "formatting is not content");
        assert_eq!(a.hash().len(), 64);
    }

    #[test]
    fn errors_name_the_file_and_the_prompt() {
        for (text, needle) in [
            ("[[prompts]]\nprompt = \"a\"\n", "prompt #1 has no `id`"),
            ("[[prompts]]\nid = \"a\"\n", "needs `prompt"),
            ("[[prompts]]\nid = \"a\"\nprompt = \"x\"\n[[prompts]]\nid = \"a\"\nprompt = \"y\"\n", "two prompts have the id"),
            ("[[prompts]]\nid = \"a\"\nprompt = \"x\"\ntemperature = 9.0\n", "temperature = 9 must be"),
            ("[[prompts]]\nid = \"a\"\nprompt = \"x\"\ntemprature = 1.0\n", "unknown field `temprature`"),
            ("name = \"empty\"\n", "no prompts"),
            ("[[prompts]\n", "mine.toml"),
        ] {
            let e = Suite::from_toml(text, "s", "mine.toml").unwrap_err().to_string();
            assert!(e.contains(needle) && e.starts_with("mine.toml"), "{text:?}: {e}");
        }
    }

    #[test]
    fn mt_bench_questions_read_as_is() {
        let path = vibecheck_test_support::shared_data().join("mt_bench/question.jsonl");
        let s = Suite::load(&path).unwrap();
        assert_eq!(s.prompts.len(), 80);
        assert!(s.prompts.iter().all(|p| p.turns.len() == 2));
        let math = s
            .prompts
            .iter()
            .filter(|p| p.category.as_deref() == Some("math"))
            .count();
        assert_eq!(math, 10);
        assert!(
            s.prompts.iter().any(|p| !p.reference.is_empty()),
            "reference answers are kept"
        );
        let e = Suite::from_mt_bench(
            "{\"question_id\": 1, \"turns\": [\"a\"]}\nnot json\n",
            "q",
            "q.jsonl",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("q.jsonl: line 2"), "{e}");
    }
}
