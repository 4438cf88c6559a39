//! The OpenAI-compatible API's wire shapes, apart from I/O: a `/v1/completions` or
//! `/v1/chat/completions` body read into a generation job's fields ([`Request::parse`]), the
//! answers and stream chunks made from the job's ([`Reply`]), and errors in that API's shape
//! `{"error": {"message", "type", "param", "code"}}` ([`ApiError`]). Used by the gateway's `/v1`
//! routes and by batch files (`infermq batch`), which answer in the same shapes.
//!
//! What is taken: `model`, `prompt` (a string, or a list of one) or `messages`, `max_tokens`
//! (`max_completion_tokens` in chat), `temperature`, `top_p`, `top_k` (as vLLM takes it),
//! `seed`, `stop`, `stream`, `stream_options.include_usage`. Fields that change nothing at
//! their neutral value (`n` 1, penalties 0, no `logit_bias`, no `logprobs`, `echo` false, …)
//! are accepted at that value and refused at any other; `user`, `metadata`, `store`,
//! `service_tier` and `parallel_tool_calls` are ignored; any other field is refused, as
//! OpenAI's API does. Parameters the request leaves out take the model's defaults
//! (`[generate]`: greedy unless `temperature` is given), except `max_tokens` of a completion,
//! which is OpenAI's 16.

use axum::http::StatusCode;
use serde_json::{json, Map, Value};

use super::job::{Failure, Usage};

/// `max_tokens` of a completion that names none (OpenAI's default).
pub const COMPLETION_MAX_TOKENS: u64 = 16;

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/completions`: a prompt, answered `text_completion`.
    Completion,
    /// `/v1/chat/completions`: messages, answered `chat.completion`.
    Chat,
}

impl Kind {
    /// What the job's prompt came from, as the client named it.
    fn prompt_field(self) -> &'static str {
        match self {
            Kind::Completion => "prompt",
            Kind::Chat => "messages",
        }
    }
}

/// An error in the OpenAI API's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ApiError {
    /// A 400 naming `param`.
    pub fn invalid(param: &str, message: String) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message,
            param: Some(param.to_string()),
            code: None,
        }
    }

    /// `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> Value {
        let kind = match self.status.as_u16() {
            429 => "requests",
            500.. => "server_error",
            _ => "invalid_request_error",
        };
        json!({"error": {"message": self.message, "type": kind, "param": self.param,
            "code": self.code}})
    }

    /// A failed job, told in the API's words: the worker's field names become the request's
    /// (`parameters.top_p` is `top_p`, `text_input` is `prompt` or `messages`), and the first
    /// field the message names is `param`.
    pub fn from_failure(failure: &Failure, kind: Kind) -> ApiError {
        let message = failure
            .message
            .replace("parameters.", "")
            .replace("text_input", kind.prompt_field());
        let (param, code) = match failure.code.as_str() {
            "unknown_model" => (Some("model".to_string()), Some("model_not_found")),
            "invalid_request" => (named_field(&message), None),
            "timeout" | "deadline_exceeded" => (None, Some("timeout")),
            _ => (None, None),
        };
        ApiError {
            status: failure.status,
            message,
            param,
            code: code.map(str::to_string),
        }
    }
}

/// The field a refusal names first: `max_tokens` in "prompt and max_tokens: …", `stop` in
/// "stop[3]: …".
fn named_field(message: &str) -> Option<String> {
    let (head, _) = message.split_once(':')?;
    let last = head.rsplit(" and ").next()?.trim();
    let field = last.split('[').next()?;
    let plain = !field.is_empty()
        && field
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    plain.then(|| field.to_string())
}

/// What the job is asked for: text, or messages to render with the model's chat template.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    /// Each message an object with a string `role` and a string `content` (text parts joined).
    Messages(Vec<Value>),
}

/// A completion or chat request, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub kind: Kind,
    pub model: String,
    pub prompt: Prompt,
    /// The job's `parameters` (without `stream`, which the route sets).
    pub parameters: Map<String, Value>,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with `usage` and no choices.
    pub include_usage: bool,
}

/// Fields of both endpoints that are read.
const COMMON: [&str; 9] = [
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stream",
    "stream_options",
];
/// Fields that change nothing and are ignored.
const IGNORED: [&str; 5] = [
    "user",
    "metadata",
    "store",
    "service_tier",
    "parallel_tool_calls",
];

impl Request {
    /// Reads a body of `kind`; the error names the field.
    pub fn parse(kind: Kind, body: &[u8]) -> Result<Request, ApiError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("body: not valid JSON ({e})"),
            param: None,
            code: None,
        })?;
        let Value::Object(object) = value else {
            return Err(ApiError {
                status: StatusCode::BAD_REQUEST,
                message: "body: expected a JSON object".into(),
                param: None,
                code: None,
            });
        };
        Request::from_object(kind, object)
    }

    /// Reads a request already parsed as a JSON object (a batch file's `body`).
    pub fn from_object(kind: Kind, object: Map<String, Value>) -> Result<Request, ApiError> {
        let given = |key: &str| object.get(key).filter(|v| !v.is_null());
        for key in object.keys() {
            let key = key.as_str();
            let own = match kind {
                Kind::Completion => key == "prompt",
                Kind::Chat => ["messages", "max_completion_tokens"].contains(&key),
            };
            if own || COMMON.contains(&key) || IGNORED.contains(&key) {
                continue;
            }
            let Some(neutral) = Neutral::of(key) else {
                return Err(ApiError::invalid(
                    key,
                    format!("Unrecognized request argument supplied: {key}"),
                ));
            };
            if let Some(v) = given(key).filter(|v| !(neutral.is)(v)) {
                let only = neutral.said;
                return Err(ApiError::invalid(
                    key,
                    format!("{key}: {v} is not supported here (only {only})"),
                ));
            }
        }
        let model = match given("model") {
            Some(Value::String(model)) => model.clone(),
            Some(_) => {
                return Err(ApiError::invalid(
                    "model",
                    "model: expected a string".into(),
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    "model",
                    "model: missing (the name of a served model)".into(),
                ))
            }
        };
        let prompt = match kind {
            Kind::Completion => Prompt::Text(prompt(given("prompt"))?),
            Kind::Chat => Prompt::Messages(messages(given("messages"))?),
        };
        let stream = match given("stream") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::invalid(
                    "stream",
                    "stream: expected true or false".into(),
                ))
            }
        };
        let include_usage = match given("stream_options") {
            None => false,
            Some(Value::Object(o)) => match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(ApiError::invalid(
                        "stream_options",
                        "stream_options.include_usage: expected true or false".into(),
                    ))
                }
            },
            Some(_) => {
                return Err(ApiError::invalid(
                    "stream_options",
                    "stream_options: expected an object".into(),
                ))
            }
        };
        let mut parameters = Map::new();
        let max_tokens = given("max_completion_tokens").or(given("max_tokens"));
        match (max_tokens, kind) {
            (Some(v), _) => {
                parameters.insert("max_tokens".into(), v.clone());
            }
            (None, Kind::Completion) => {
                parameters.insert("max_tokens".into(), COMPLETION_MAX_TOKENS.into());
            }
            (None, Kind::Chat) => {}
        }
        // The worker checks each value and names the field; its names are the API's.
        for key in ["temperature", "top_p", "top_k", "stop"] {
            if let Some(v) = given(key) {
                parameters.insert(key.into(), v.clone());
            }
        }
        if let Some(seed) = given("seed") {
            // OpenAI's seeds are 64-bit signed; a job's are unsigned: the same bits.
            let seed = match seed.as_i64() {
                Some(s) if s < 0 => Value::from(s as u64),
                _ => seed.clone(),
            };
            parameters.insert("seed".into(), seed);
        }
        Ok(Request {
            kind,
            model,
            prompt,
            parameters,
            stream,
            include_usage,
        })
    }

    /// The generation job's body for the prompt's text.
    pub fn job(&self, text_input: String) -> Map<String, Value> {
        let mut job = Map::new();
        job.insert("text_input".into(), Value::String(text_input));
        job.insert("parameters".into(), Value::Object(self.parameters.clone()));
        job
    }
}

/// The value at which a field changes nothing: the only one it is taken at.
struct Neutral {
    is: fn(&Value) -> bool,
    /// The value, as the refusal names it.
    said: &'static str,
}

impl Neutral {
    fn of(key: &str) -> Option<Neutral> {
        let (is, said): (fn(&Value) -> bool, _) = match key {
            "n" | "best_of" => (|v| v == &json!(1), "1"),
            "presence_penalty" | "frequency_penalty" | "top_logprobs" => {
                (|v| v.as_f64() == Some(0.0), "0")
            }
            "logit_bias" => (|v| v.as_object().is_some_and(Map::is_empty), "{}"),
            "logprobs" => (|v| v == &json!(false) || v == &json!(0), "false"),
            "echo" => (|v| v == &json!(false), "false"),
            "suffix" => (|v| v == &json!(""), "\"\""),
            "response_format" => (|v| v == &json!({"type": "text"}), "{\"type\": \"text\"}"),
            "tools" | "functions" => (|v| v.as_array().is_some_and(Vec::is_empty), "[]"),
            "tool_choice" | "function_call" => {
                (|v| v == &json!("none") || v == &json!("auto"), "\"none\"")
            }
            _ => return None,
        };
        Some(Neutral { is, said })
    }
}

/// A completion's `prompt`: a string, or a list of one string.
fn prompt(value: Option<&Value>) -> Result<String, ApiError> {
    match value {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            Ok(items[0].as_str().unwrap_or_default().to_string())
        }
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => Err(ApiError::invalid(
            "prompt",
            format!(
                "prompt: a list of {} prompts; send one prompt per request",
                items.len()
            ),
        )),
        Some(_) => Err(ApiError::invalid(
            "prompt",
            "prompt: expected a string (token ids are not taken)".into(),
        )),
        None => Err(ApiError::invalid(
            "prompt",
            "prompt: missing (the text to continue)".into(),
        )),
    }
}

/// Chat `messages`: objects with a string `role` and a `content` that is a string, a list of
/// text parts (joined by newlines), or null (empty).
fn messages(value: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    let items = match value {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "messages",
                "messages: empty; expected at least one".into(),
            ))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "messages",
                "messages: expected a list of messages".into(),
            ))
        }
        None => {
            return Err(ApiError::invalid(
                "messages",
                "messages: missing (the conversation)".into(),
            ))
        }
    };
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(message) = item else {
            return Err(ApiError::invalid(
                "messages",
                format!("messages[{i}]: expected an object with role and content"),
            ));
        };
        if !message.get("role").is_some_and(Value::is_string) {
            return Err(ApiError::invalid(
                "messages",
                format!("messages[{i}].role: expected a string"),
            ));
        }
        let content = match message.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(text)) => text.clone(),
            Some(Value::Array(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for (j, part) in parts.iter().enumerate() {
                    match (part.get("type").and_then(Value::as_str), part.get("text")) {
                        (Some("text"), Some(Value::String(text))) => texts.push(text.as_str()),
                        _ => {
                            return Err(ApiError::invalid(
                                "messages",
                                format!("messages[{i}].content[{j}]: expected a text part ({{\"type\": \"text\", \"text\": ...}}); this model takes text only"),
                            ))
                        }
                    }
                }
                texts.join("\n")
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "messages",
                    format!("messages[{i}].content: expected a string or a list of text parts"),
                ))
            }
        };
        let mut message = message.clone();
        message.insert("content".into(), Value::String(content));
        messages.push(Value::Object(message));
    }
    Ok(messages)
}

/// The API's `finish_reason` for a job's: `eos` and `stop` are `stop`; `length`, and a job
/// cut by its deadline or a cancel message (the text so far), are `length`.
pub fn finish_reason(job: &str) -> &'static str {
    match job {
        "eos" | "stop" => "stop",
        _ => "length",
    }
}

/// `usage` with its total.
pub fn usage(usage: Usage) -> Value {
    json!({"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens})
}

/// The answers of one request: its id, creation time and model, in every answer and chunk.
#[derive(Debug, Clone)]
pub struct Reply {
    pub kind: Kind,
    /// `cmpl-…` or `chatcmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
}

impl Reply {
    /// `job_id` names the job the answer comes from.
    pub fn new(kind: Kind, job_id: &str, created: u64, model: &str) -> Reply {
        let prefix = match kind {
            Kind::Completion => "cmpl",
            Kind::Chat => "chatcmpl",
        };
        Reply {
            kind,
            id: format!("{prefix}-{job_id}"),
            created,
            model: model.to_string(),
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    /// The whole answer: `text` and the job's finish reason and usage.
    pub fn whole(&self, text: &str, finish: &str, used: Option<Usage>) -> Value {
        let choice = match self.kind {
            Kind::Completion => json!({"index": 0, "text": text, "logprobs": null,
                "finish_reason": finish_reason(finish)}),
            Kind::Chat => json!({"index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null, "finish_reason": finish_reason(finish)}),
        };
        json!({"id": self.id, "object": self.object(false), "created": self.created,
            "model": self.model, "choices": [choice], "usage": used.map(usage)})
    }

    /// A stream's chunk: a piece of text (a chat's first chunk names the role; `text` None
    /// gives an empty delta) and, on the last, the finish reason. With `include_usage` every
    /// chunk has `usage: null`, as OpenAI's do.
    pub fn chunk(
        &self,
        text: Option<&str>,
        role: bool,
        finish: Option<&str>,
        include_usage: bool,
    ) -> Value {
        let finish = finish.map(finish_reason);
        let choice = match self.kind {
            Kind::Completion => json!({"index": 0, "text": text.unwrap_or(""),
                "logprobs": null, "finish_reason": finish}),
            Kind::Chat => {
                let mut delta = Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(text) = text {
                    delta.insert("content".into(), json!(text));
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
        };
        let mut chunk = json!({"id": self.id, "object": self.object(true),
            "created": self.created, "model": self.model, "choices": [choice]});
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// The last chunk of a stream with `include_usage`: no choices, the usage.
    pub fn usage_chunk(&self, used: Usage) -> Value {
        json!({"id": self.id, "object": self.object(true), "created": self.created,
            "model": self.model, "choices": [], "usage": usage(used)})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(kind: Kind, body: Value) -> Result<Request, ApiError> {
        Request::parse(kind, body.to_string().as_bytes())
    }

    #[test]
    fn a_completion_becomes_a_job() {
        let request = parse(
            Kind::Completion,
            json!({"model": "storyteller", "prompt": "And God said", "temperature": 0.5,
                "top_p": 0.9, "seed": -1, "stop": ["\n"], "n": 1, "user": "u",
                "stream": true, "stream_options": {"include_usage": true},
                "presence_penalty": 0, "logprobs": null}),
        )
        .unwrap();
        assert_eq!(request.model, "storyteller");
        assert_eq!(request.prompt, Prompt::Text("And God said".into()));
        assert!(request.stream && request.include_usage);
        assert_eq!(
            Value::Object(request.job("And God said".into())),
            json!({"text_input": "And God said", "parameters": {"max_tokens": 16,
                "temperature": 0.5, "top_p": 0.9, "seed": u64::MAX, "stop": ["\n"]}})
        );
        // A list of one prompt is one prompt; max_tokens given is kept.
        let request = parse(
            Kind::Completion,
            json!({"model": "m", "prompt": ["In"], "max_tokens": 3}),
        )
        .unwrap();
        assert_eq!(request.prompt, Prompt::Text("In".into()));
        assert_eq!(request.parameters["max_tokens"], 3);
    }

    #[test]
    fn a_chat_keeps_its_messages_with_text_content() {
        let request = parse(
            Kind::Chat,
            json!({"model": "m", "max_completion_tokens": 5, "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "a"},
                    {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null}]}),
        )
        .unwrap();
        let Prompt::Messages(messages) = &request.prompt else {
            panic!("messages expected");
        };
        assert_eq!(messages[1], json!({"role": "user", "content": "a\nb"}));
        assert_eq!(messages[2], json!({"role": "assistant", "content": ""}));
        // Chat has no default max_tokens: the model's.
        assert_eq!(Value::Object(request.parameters), json!({"max_tokens": 5}));
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (Kind::Chat, json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}),
                "n", "n: 2 is not supported here (only 1)"),
            (Kind::Chat, json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "temprature": 1}),
                "temprature", "Unrecognized request argument supplied: temprature"),
            (Kind::Chat, json!({"model": "m", "messages": []}), "messages",
                "messages: empty; expected at least one"),
            (Kind::Chat, json!({"model": "m", "messages": [{"content": "x"}]}), "messages",
                "messages[0].role: expected a string"),
            (Kind::Chat, json!({"model": "m", "messages": [{"role": "user",
                "content": [{"type": "image_url", "image_url": {}}]}]}), "messages",
                "messages[0].content[0]: expected a text part ({\"type\": \"text\", \"text\": ...}); this model takes text only"),
            (Kind::Completion, json!({"prompt": "x"}), "model",
                "model: missing (the name of a served model)"),
            (Kind::Completion, json!({"model": "m", "prompt": [1, 2]}), "prompt",
                "prompt: expected a string (token ids are not taken)"),
            (Kind::Completion, json!({"model": "m", "prompt": ["a", "b"]}), "prompt",
                "prompt: a list of 2 prompts; send one prompt per request"),
            (Kind::Completion, json!({"model": "m", "prompt": "x", "echo": true}), "echo",
                "echo: true is not supported here (only false)"),
            (Kind::Completion, json!({"model": "m", "prompt": "x", "stream": "yes"}), "stream",
                "stream: expected true or false"),
            (Kind::Completion, json!({"model": "m", "prompt": "x", "messages": []}), "messages",
                "Unrecognized request argument supplied: messages"),
        ];
        for (kind, body, param, message) in cases {
            let error = parse(kind, body.clone()).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(error.param.as_deref(), Some(param), "{body}");
            assert_eq!(error.message, message, "{body}");
        }
        let error = Request::parse(Kind::Chat, b"[]").unwrap_err();
        assert_eq!(
            error.body(),
            json!({"error": {"message": "body: expected a JSON object",
                "type": "invalid_request_error", "param": null, "code": null}})
        );
    }

    #[test]
    fn worker_refusals_are_told_in_the_apis_words() {
        let failure = |code: &str, status: StatusCode, message: &str| Failure {
            status,
            code: code.into(),
            message: message.into(),
            body: None,
        };
        let error = ApiError::from_failure(
            &failure(
                "invalid_request",
                StatusCode::BAD_REQUEST,
                "text_input and parameters.max_tokens: a prompt of 4 tokens and max_tokens 300 exceed the context length of 256 tokens",
            ),
            Kind::Chat,
        );
        assert_eq!(
            error.message,
            "messages and max_tokens: a prompt of 4 tokens and max_tokens 300 exceed the context length of 256 tokens"
        );
        assert_eq!(error.param.as_deref(), Some("max_tokens"));
        let error = ApiError::from_failure(
            &failure(
                "invalid_request",
                StatusCode::BAD_REQUEST,
                "parameters.stop[3]: expected 1 to 256 bytes",
            ),
            Kind::Completion,
        );
        assert_eq!(error.param.as_deref(), Some("stop"));
        let error = ApiError::from_failure(
            &failure(
                "unknown_model",
                StatusCode::NOT_FOUND,
                "unknown model \"x\"",
            ),
            Kind::Completion,
        );
        assert_eq!(
            error.body(),
            json!({"error": {"message": "unknown model \"x\"", "type": "invalid_request_error",
                "param": "model", "code": "model_not_found"}})
        );
        let error = ApiError::from_failure(
            &failure(
                "timeout",
                StatusCode::GATEWAY_TIMEOUT,
                "no answer within 1s",
            ),
            Kind::Completion,
        );
        assert_eq!(error.body()["error"]["type"], "server_error");
        assert_eq!(error.body()["error"]["code"], "timeout");
    }

    #[test]
    fn answers_and_chunks_have_the_apis_shape() {
        let used = Usage {
            prompt_tokens: 4,
            completion_tokens: 2,
        };
        let chat = Reply::new(Kind::Chat, "j-1", 7, "m");
        assert_eq!(
            chat.whole(" unto", "eos", Some(used)),
            json!({"id": "chatcmpl-j-1", "object": "chat.completion", "created": 7, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": " unto"},
                    "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}})
        );
        assert_eq!(
            chat.chunk(Some(""), true, None, false)["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        let last = chat.chunk(None, false, Some("length"), true);
        assert_eq!(last["choices"][0]["delta"], json!({}));
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        assert!(last["usage"].is_null() && last.get("usage").is_some());
        assert_eq!(chat.usage_chunk(used)["choices"], json!([]));
        let completion = Reply::new(Kind::Completion, "j-2", 7, "m");
        assert_eq!(
            completion.chunk(Some("a"), false, None, false),
            json!({"id": "cmpl-j-2", "object": "text_completion", "created": 7, "model": "m",
                "choices": [{"index": 0, "text": "a", "logprobs": null, "finish_reason": null}]})
        );
        for (job, api) in [
            ("eos", "stop"),
            ("stop", "stop"),
            ("length", "length"),
            ("deadline", "length"),
            ("cancelled", "length"),
        ] {
            assert_eq!(finish_reason(job), api);
        }
    }
}
