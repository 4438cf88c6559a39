//! Chat templates: a chat request's `messages` turned into the model's prompt by the Jinja
//! template its tokenizer ships (`chat_template` in `tokenizer_config.json`, or
//! `chat_template.jinja`), rendered by minijinja as Hugging Face's `apply_chat_template` does
//! (`trim_blocks`, `lstrip_blocks`, loop controls, Python's string methods, `raise_exception`;
//! `messages`, `add_generation_prompt = true`, `bos_token`, `eos_token`).
//!
//! The gateway holds no model: it reads templates from the model repository named by
//! `repository.path`, the workers' own key, so a gateway that shares the workers' repository
//! (the same volume, or a copy of the tokenizer files) renders with the template of the newest
//! version there. A model without a template there refuses `messages`, saying where it looked.
//!
//! The worker tokenizes a job's text with the tokenizer's special tokens (a BOS where the
//! tokenizer's post-processor adds one), so a rendered prompt that starts with `bos_token`
//! loses it here when the post-processor adds it again: the model sees one BOS, as with
//! `apply_chat_template(tokenize=True)`.

use std::path::{Path, PathBuf};

use minijinja::{Environment, ErrorKind};
use serde_json::Value;

/// A model's chat template, compiled.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// Whether the worker's tokenizer adds `bos_token` itself.
    strip_bos: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("strip_bos", &self.strip_bos)
            .finish_non_exhaustive()
    }
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `source`; the error is the template's syntax error.
    pub fn new(
        source: String,
        bos_token: Option<String>,
        eos_token: Option<String>,
        strip_bos: bool,
    ) -> Result<ChatTemplate, String> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| format!("the chat template's syntax: {e}"))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, _> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned(NAME, source)
            .map_err(|e| format!("the chat template does not compile: {e}"))?;
        Ok(ChatTemplate {
            env,
            bos_token,
            eos_token,
            strip_bos,
        })
    }

    /// The prompt for `messages` (objects with `role` and string `content`), ending with the
    /// template's generation prompt.
    pub fn render(&self, messages: &[Value]) -> Result<String, String> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| format!("the chat template: {e}"))?;
        let context = minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => true,
            bos_token => self.bos_token.as_deref().unwrap_or(""),
            eos_token => self.eos_token.as_deref().unwrap_or(""),
        };
        let rendered = template.render(context).map_err(|e| {
            // A template's own refusal (`raise_exception`) says what it wants.
            match e.kind() {
                ErrorKind::InvalidOperation => e.detail().unwrap_or("refused").to_string(),
                _ => format!("the chat template failed: {e}"),
            }
        })?;
        match &self.bos_token {
            Some(bos) if self.strip_bos && !bos.is_empty() => {
                match rendered.strip_prefix(bos.as_str()) {
                    Some(rest) => Ok(rest.to_string()),
                    None => Ok(rendered),
                }
            }
            _ => Ok(rendered),
        }
    }
}

/// The chat template of `model` in `repository`: from its newest version directory (digits),
/// `tokenizer_config.json`'s `chat_template` (a string, or a list of named templates, of which
/// `default`), else `chat_template.jinja`. The error says why there is none.
pub fn find(repository: &Path, model: &str) -> Result<ChatTemplate, String> {
    let model_dir = repository.join(model);
    let Some(version_dir) = newest_version(&model_dir) else {
        return Err(format!(
            "model {model:?} has no chat template: the gateway reads templates from \
             repository.path ({}), which has no version directory of it",
            repository.display()
        ));
    };
    let config: Option<Value> = std::fs::read(version_dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let config = config.unwrap_or(Value::Null);
    let source = match template_in_config(&config) {
        Some(source) => source,
        None => std::fs::read_to_string(version_dir.join("chat_template.jinja")).map_err(|_| {
            format!(
                "model {model:?} has no chat template (no chat_template in {} nor a \
                 chat_template.jinja beside it); send a prompt to /v1/completions instead",
                version_dir.join("tokenizer_config.json").display()
            )
        })?,
    };
    let token = |key: &str| match config.get(key) {
        Some(Value::String(token)) => Some(token.clone()),
        // An AddedToken written out: {"content": "<s>", ...}.
        Some(Value::Object(token)) => token
            .get("content")
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    };
    let bos_token = token("bos_token");
    let strip_bos = bos_token
        .as_deref()
        .is_some_and(|bos| post_processor_adds(&version_dir.join("tokenizer.json"), bos));
    ChatTemplate::new(source, bos_token, token("eos_token"), strip_bos)
        .map_err(|e| format!("model {model:?}: {e}"))
}

/// The directory of the highest numbered version under `model_dir`.
fn newest_version(model_dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(model_dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| entry.path().is_dir())
        .filter_map(|entry| {
            let number: u64 = entry.file_name().to_str()?.parse().ok()?;
            Some((number, entry.path()))
        })
        .max_by_key(|(number, _)| *number)
        .map(|(_, path)| path)
}

fn template_in_config(config: &Value) -> Option<String> {
    match config.get("chat_template")? {
        Value::String(source) => Some(source.clone()),
        Value::Array(named) => {
            let source = |entry: &Value| entry.get("template")?.as_str().map(str::to_string);
            named
                .iter()
                .find(|entry| entry.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(source)
        }
        _ => None,
    }
}

/// Whether `tokenizer.json`'s post-processor names `token` (it adds it to every encoding).
fn post_processor_adds(tokenizer: &Path, token: &str) -> bool {
    fn names(value: &Value, token: &str) -> bool {
        match value {
            Value::String(s) => s == token,
            Value::Array(items) => items.iter().any(|v| names(v, token)),
            Value::Object(map) => map.values().any(|v| names(v, token)),
            _ => false,
        }
    }
    let Ok(bytes) = std::fs::read(tokenizer) else {
        return false;
    };
    let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
        return false;
    };
    value
        .get("post_processor")
        .is_some_and(|processor| names(processor, token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn messages() -> Vec<Value> {
        vec![
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": "Who made the light?"}),
        ]
    }

    #[test]
    fn the_storyteller_template_renders_as_transformers_does() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let template = find(&root.join("models"), "storyteller").unwrap();
        // transformers' apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert_eq!(
            template.render(&messages()).unwrap(),
            "system: Be brief.\nuser: Who made the light?\nassistant:"
        );
        // The genai layout keeps it in chat_template.jinja.
        let genai = tempfile::tempdir().unwrap();
        let version = genai.path().join("genai/1");
        std::fs::create_dir_all(&version).unwrap();
        for file in [
            "chat_template.jinja",
            "tokenizer_config.json",
            "tokenizer.json",
        ] {
            std::fs::copy(root.join("tests/llm/genai").join(file), version.join(file)).unwrap();
        }
        let template = find(genai.path(), "genai").unwrap();
        assert_eq!(
            template.render(&messages()).unwrap(),
            "system: Be brief.\nuser: Who made the light?\nassistant:"
        );
    }

    #[test]
    fn a_leading_bos_is_left_to_the_tokenizer_that_adds_one() {
        let source = "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content.strip() }}\n{% endfor %}";
        let render = |strip| {
            ChatTemplate::new(source.into(), Some("<s>".into()), None, strip)
                .unwrap()
                .render(&[json!({"role": "user", "content": "  hi  "})])
                .unwrap()
        };
        assert_eq!(render(true), "[user] hi\n");
        assert_eq!(render(false), "<s>[user] hi\n");
    }

    #[test]
    fn templates_refuse_with_their_own_words_and_bad_ones_are_named() {
        let source = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with user') }}{% endif %}ok";
        let template = ChatTemplate::new(source.into(), None, None, false).unwrap();
        assert_eq!(
            template.render(&[json!({"role": "system", "content": "x"})]),
            Err("Conversations must start with user".to_string())
        );
        assert_eq!(
            template
                .render(&[json!({"role": "user", "content": "x"})])
                .as_deref(),
            Ok("ok")
        );
        let error = ChatTemplate::new("{% for %}".into(), None, None, false).unwrap_err();
        assert!(
            error.starts_with("the chat template does not compile"),
            "{error}"
        );
    }

    #[test]
    fn a_model_without_a_template_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("iris/1")).unwrap();
        std::fs::create_dir_all(dir.path().join("iris/3")).unwrap();
        let error = find(dir.path(), "iris").unwrap_err();
        assert!(
            error.contains("has no chat template (no chat_template in"),
            "{error}"
        );
        assert!(error.contains("iris/3/tokenizer_config.json"), "{error}");
        let error = find(dir.path(), "ghost").unwrap_err();
        assert!(
            error.contains("which has no version directory of it"),
            "{error}"
        );
        // A list of named templates: the default one.
        let named = json!({"chat_template": [{"name": "tool_use", "template": "t"},
            {"name": "default", "template": "d"}]});
        assert_eq!(template_in_config(&named).as_deref(), Some("d"));
    }
}
