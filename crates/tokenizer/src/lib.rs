//! A model's own tokenizer and chat template, so that a request sent as text can be matched
//! block for block against what a server's KV events say it caches.
//!
//! Why the real ones: vLLM caches token blocks, and two prompts share blocks exactly as far as
//! their token ids agree, so only the model's tokenizer (`tokenizer.json`, Hugging Face's
//! `tokenizers`) and its chat template (`tokenizer_config.json`'s `chat_template`, or
//! `chat_template.jinja`, rendered with `minijinja` as `transformers` renders Jinja) give the ids
//! the server computes. The router loads one per model (`[models."NAME"] tokenizer =
//! "/path/to/dir"`; a model without one is matched by the learned fingerprint instead), and
//! `mvllm sim --tokenizer DIR` tokenizes with the same one, so that the simulator's KV events and
//! the router's blocks agree.

use std::path::Path;

use minijinja::Environment;
use serde_json::Value;

/// Why a tokenizer could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {why}")]
    Load { path: String, why: String },
    #[error("tokenizing: {0}")]
    Encode(String),
    #[error("the chat template: {0}")]
    Template(String),
}

pub struct ModelTokenizer {
    tokenizer: tokenizers::Tokenizer,
    /// The chat template, compiled (`None`: the model has none; chat requests are not matched).
    template: Option<Environment<'static>>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ModelTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTokenizer")
            .field("chat_template", &self.template.is_some())
            .finish_non_exhaustive()
    }
}

/// A special token as `tokenizer_config.json` writes it: a string or `{"content": ...}`.
fn special(config: &Value, key: &str) -> String {
    match config.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        None => String::new(),
    }
}

/// The default chat template: `chat_template` as a string, or the one named `default` in a list.
fn chat_template(config: &Value, dir: &Path) -> Option<String> {
    match config.get("chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template")?.as_str())
            .map(str::to_string),
        _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
    }
}

impl ModelTokenizer {
    /// Loads `dir/tokenizer.json` and, if present, `dir/tokenizer_config.json`.
    pub fn load(dir: &Path) -> Result<Self, TokenizerError> {
        let err = |path: &Path, why: String| TokenizerError::Load {
            path: path.display().to_string(),
            why,
        };
        let file = dir.join("tokenizer.json");
        let tokenizer =
            tokenizers::Tokenizer::from_file(&file).map_err(|e| err(&file, e.to_string()))?;
        let config_file = dir.join("tokenizer_config.json");
        let config: Value = match std::fs::read_to_string(&config_file) {
            Ok(text) => {
                serde_json::from_str(&text).map_err(|e| err(&config_file, e.to_string()))?
            }
            Err(_) => Value::Null,
        };
        let template = match chat_template(&config, dir) {
            Some(source) => {
                let mut env = Environment::new();
                minijinja_contrib::add_to_environment(&mut env);
                env.set_unknown_method_callback(
                    minijinja_contrib::pycompat::unknown_method_callback,
                );
                env.add_function(
                    "raise_exception",
                    |msg: String| -> Result<String, minijinja::Error> {
                        Err(minijinja::Error::new(
                            minijinja::ErrorKind::InvalidOperation,
                            msg,
                        ))
                    },
                );
                env.add_template_owned("chat", source)
                    .map_err(|e| err(&config_file, format!("chat template: {e}")))?;
                Some(env)
            }
            None => None,
        };
        Ok(ModelTokenizer {
            tokenizer,
            template,
            bos_token: special(&config, "bos_token"),
            eos_token: special(&config, "eos_token"),
        })
    }

    /// A completion's text prompt, as vLLM tokenizes it (special tokens added).
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.tokenizer
            .encode_fast(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// A chat's `messages`, rendered by the template with the generation prompt, then
    /// tokenized without adding special tokens (the template writes them), as vLLM does.
    pub fn encode_chat(&self, messages: &Value) -> Result<Vec<u32>, TokenizerError> {
        let text = self.render_chat(messages)?;
        self.tokenizer
            .encode_fast(text.as_str(), false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// A request body's prompt as token ids: its `messages` (chat) or its text `prompt`
    /// (completion); `None` when it has neither or they cannot be tokenized (logged).
    pub fn request_tokens(&self, body: &[u8]) -> Option<Vec<u32>> {
        #[derive(serde::Deserialize)]
        struct Prompted {
            messages: Option<Value>,
            prompt: Option<Value>,
        }
        let p: Prompted = serde_json::from_slice(body).ok()?;
        let tokens = match (&p.messages, &p.prompt) {
            (Some(m), _) => self.encode_chat(m),
            (None, Some(Value::String(text))) => self.encode_text(text),
            _ => return None,
        };
        tokens
            .map_err(|e| tracing::debug!(error = %e, "prompt not tokenized: matched approximately"))
            .ok()
    }

    /// Token ids back to text, special tokens left out (as vLLM writes an answer).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// A token's own string in the vocabulary (`Ġthe`, `<s>`), as `/tokenize` returns it.
    pub fn token_str(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    /// How many ids the vocabulary has, added tokens included.
    pub fn vocab_size(&self) -> u32 {
        self.tokenizer.get_vocab_size(true) as u32
    }

    /// Whether `id` is one of the special tokens (`<s>`, the chat roles, ...).
    pub fn is_special(&self, id: u32) -> bool {
        self.tokenizer
            .get_added_tokens_decoder()
            .get(&id)
            .is_some_and(|t| t.special)
    }

    /// Plain text as ids, no special tokens added (an answer's text, a piece of a prompt).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.tokenizer
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// The chat as the template renders it.
    pub fn render_chat(&self, messages: &Value) -> Result<String, TokenizerError> {
        let env = self
            .template
            .as_ref()
            .ok_or_else(|| TokenizerError::Template("the model has no chat template".into()))?;
        let t = env
            .get_template("chat")
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        t.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| TokenizerError::Template(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mvllm_testkit::tokenizer::*;
    use serde_json::json;

    #[test]
    fn a_chat_is_rendered_by_its_template_and_tokenized_as_vllm_does() {
        let dir = tempfile::tempdir().unwrap();
        write_word_tokenizer(dir.path()).unwrap();
        let t = ModelTokenizer::load(dir.path()).unwrap();
        let messages = json!([
            {"role": "system", "content": "w1 w2"},
            {"role": "user", "content": "w3"},
        ]);
        assert_eq!(
            t.render_chat(&messages).unwrap(),
            "<s><|system|>\nw1 w2\n<|user|>\nw3\n<|assistant|>\n"
        );
        let mut want = vec![BOS, SYSTEM];
        want.extend(word_ids("w1 w2"));
        want.push(USER);
        want.extend(word_ids("w3"));
        want.push(ASSISTANT);
        assert_eq!(t.encode_chat(&messages).unwrap(), want);
        let body = json!({"model": "m", "messages": messages}).to_string();
        assert_eq!(t.request_tokens(body.as_bytes()), Some(want));
        let body = json!({"model": "m", "prompt": "w5 w6"}).to_string();
        assert_eq!(t.request_tokens(body.as_bytes()), Some(word_ids("w5 w6")));
        assert_eq!(t.request_tokens(b"{}"), None);
    }

    #[test]
    fn a_missing_or_broken_tokenizer_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = ModelTokenizer::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("tokenizer.json"), "{e}");
        std::fs::write(dir.path().join("tokenizer.json"), "{not json").unwrap();
        assert!(ModelTokenizer::load(dir.path()).is_err());
    }
}
