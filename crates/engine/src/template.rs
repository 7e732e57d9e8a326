//! Chat templates, rendered as transformers renders them, inside a sandbox.
//!
//! Templates arrive inside untrusted checkpoints, so rendering runs with a fuel budget (no endless loops), a
//! recursion limit, a cap on template and output size, and no access to anything but the values passed in.
//! The environment mirrors transformers' `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`
//! with `raise_exception`, `strftime_now`, a Python-compatible `tojson`, loop controls and Python string
//! methods.

use std::io::Write;

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior};
use serde::{Deserialize, Serialize};

use crate::EngineError;

/// Fuel for one render: enough for long multi-turn conversations with real templates.
pub const TEMPLATE_FUEL: u64 = 2_000_000;
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;
pub const MAX_OUTPUT_BYTES: usize = 8 << 20;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template with the special tokens it may refer to.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    pub source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bytes", &self.source.len())
            .finish()
    }
}

impl ChatTemplate {
    pub fn new(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<Self, EngineError> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(EngineError::Template(format!(
                "the template is {} bytes, over the {MAX_TEMPLATE_BYTES}-byte limit",
                source.len()
            )));
        }
        let mut env = Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_recursion_limit(100);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| EngineError::Template(format!("cannot compile: {e}")))?;
        Ok(Self {
            env,
            source: source.to_string(),
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.unwrap_or_default().to_string(),
        })
    }

    /// Renders `messages`; `add_generation_prompt` opens the assistant's turn.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| EngineError::Template(e.to_string()))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        };
        let mut out = LimitedWriter {
            buf: Vec::new(),
            limit: MAX_OUTPUT_BYTES,
        };
        tmpl.render_captured_to(ctx, &mut out).map_err(|e| {
            let mut msg = e.to_string();
            if e.kind() == ErrorKind::WriteFailure {
                msg = format!("the rendered prompt exceeds {MAX_OUTPUT_BYTES} bytes");
            }
            EngineError::Template(msg)
        })?;
        String::from_utf8(out.buf)
            .map_err(|_| EngineError::Template("rendered text is not UTF-8".into()))
    }
}

struct LimitedWriter {
    buf: Vec<u8>,
    limit: usize,
}

impl Write for LimitedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            return Err(std::io::Error::other("output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("the template raised: {message}"),
    ))
}

fn strftime_now(format: String) -> Result<String, Error> {
    use std::fmt::Write as _;
    let mut s = String::new();
    write!(s, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("bad strftime format {format:?}"),
        )
    })?;
    Ok(s)
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=..., sort_keys=...)`, which
/// separates with `", "` and `": "` (minijinja's own filter is compact and escapes HTML characters).
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_py_json(&value, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_py_json(
    v: &Value,
    indent: Option<usize>,
    sort: bool,
    depth: usize,
    out: &mut String,
) -> Result<(), Error> {
    use minijinja::value::ValueKind;
    if depth > 64 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Seq | ValueKind::Iterable if v.len() != Some(0) => {
            out.push('[');
            for (i, item) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_py_json(&item, indent, sort, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map if v.len() != Some(0) => {
            out.push('{');
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if sort {
                keys.sort();
            }
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                let key = k
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| k.to_string());
                out.push_str(&serde_json::to_string(&key).unwrap_or_default());
                out.push_str(": ");
                write_py_json(&v.get_item(k)?, indent, sort, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => out.push_str("[]"),
        ValueKind::Map => out.push_str("{}"),
        ValueKind::None | ValueKind::Undefined => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            let json = serde_json::to_string(v).unwrap_or_else(|_| v.to_string());
            out.push_str(&json);
        }
        _ => {
            let s = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            out.push_str(&serde_json::to_string(&s).unwrap_or_default());
        }
    }
    Ok(())
}

/// Picks the chat template from a folder's `tokenizer_config.json` (a string, or a list of named templates of
/// which `default` wins) or its `chat_template.jinja` file.
pub fn template_source_from_dir(dir: &std::path::Path) -> Result<Option<String>, EngineError> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| EngineError::io(&jinja, e));
    }
    let cfg_path = dir.join("tokenizer_config.json");
    if !cfg_path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| EngineError::io(&cfg_path, e))?;
    let cfg: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| EngineError::file(&cfg_path, format!("not valid JSON: {e}")))?;
    match cfg.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(list)) => {
            let named = |name: &str| {
                list.iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))
            };
            let chosen = named("default").or_else(|| list.first());
            chosen
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| {
                    EngineError::file(
                        &cfg_path,
                        "`chat_template` is a list without a {name, template} entry",
                    )
                })
        }
        Some(_) => Err(EngineError::file(
            &cfg_path,
            "`chat_template` must be a string or a list of {name, template}",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_generation_prompt() {
        let t = ChatTemplate::new(CHATML, None, None).unwrap();
        let out = t
            .render(
                &[
                    ChatMessage::new("system", "Be brief."),
                    ChatMessage::new("user", "Hi"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(out, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn raise_exception_is_an_error_with_its_message() {
        let t = ChatTemplate::new("{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}", None, None).unwrap();
        let err = t
            .render(&[ChatMessage::new("assistant", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("first must be user"), "{err}");
    }

    #[test]
    fn endless_loops_run_out_of_fuel() {
        let t = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            None,
            None,
        )
        .unwrap();
        assert!(t.render(&[], false).is_err());
    }

    #[test]
    fn unbounded_recursion_is_stopped() {
        let t = ChatTemplate::new(
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            None,
            None,
        )
        .unwrap();
        assert!(t.render(&[], false).is_err());
    }

    #[test]
    fn huge_output_is_refused() {
        let t = ChatTemplate::new(
            "{% for i in range(9000) %}{{ 'y' * 1000 }}{% endfor %}",
            None,
            None,
        )
        .unwrap();
        let err = t.render(&[], false).unwrap_err().to_string();
        assert!(err.contains("exceeds") || err.contains("fuel"), "{err}");
    }

    #[test]
    fn python_internals_are_not_reachable() {
        let t = ChatTemplate::new(
            "{{ ''.__class__.__mro__ }}{{ messages.__init__ }}",
            None,
            None,
        )
        .unwrap();
        let out = t.render(&[], false).unwrap_or_default();
        assert!(!out.contains("class"), "{out}");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = ChatTemplate::new(
            "{{ messages[0] | tojson }}|{{ [1, 2] | tojson(indent=2) }}",
            None,
            None,
        )
        .unwrap();
        let out = t
            .render(&[ChatMessage::new("user", "<b>é</b>")], false)
            .unwrap();
        assert_eq!(
            out,
            "{\"role\": \"user\", \"content\": \"<b>é</b>\"}|[\n  1,\n  2\n]"
        );
    }

    #[test]
    fn loop_controls_strftime_and_string_methods_work() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content.strip().upper() }}{% endfor %}{{ strftime_now('%Y')|length }}",
            None,
            None,
        )
        .unwrap();
        let out = t
            .render(
                &[
                    ChatMessage::new("user", " a "),
                    ChatMessage::new("user", "b"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(out, "A4");
    }
}
