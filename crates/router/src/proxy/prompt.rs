//! The prompt as the server will see it, from a request body's JSON fields, turned into a
//! [`Fingerprint`]: chat `messages` (roles and contents in order, the text of multi-part
//! contents, image URLs as they are), a completion's `prompt` (text, texts or token ids), a
//! response's `instructions` and `input`.
//!
//! The fields are read into a borrowed JSON tree (`serde_json_borrow`): strings point into the
//! request body instead of being copied, objects are small vectors instead of hash maps. Per
//! request that saved the tree's allocations (a map per message, a string per role and
//! content), a tenth of the router's instructions for a chat completion.

use serde_json_borrow::Value;

use crate::routing::fingerprint::{Builder, Fingerprint};

/// The fields a prompt can come in; `None` for each that is absent.
pub struct PromptFields<'a> {
    pub model: Option<&'a str>,
    pub cache_salt: Option<&'a str>,
    pub messages: Option<&'a Value<'a>>,
    pub prompt: Option<&'a Value<'a>>,
    pub instructions: Option<&'a Value<'a>>,
    pub input: Option<&'a Value<'a>>,
}

/// The fingerprint, or `None` when the body carries no prompt.
pub fn fingerprint(f: &PromptFields<'_>) -> Option<Fingerprint> {
    if f.messages.is_none() && f.prompt.is_none() && f.input.is_none() && f.instructions.is_none() {
        return None;
    }
    let mut b = Builder::new(f.model, f.cache_salt);
    if let Some(m) = f.messages {
        push_messages(&mut b, m);
    }
    if let Some(p) = f.prompt {
        push_prompt(&mut b, p);
    }
    if let Some(Value::Str(s)) = f.instructions {
        b.push_str("system\n");
        b.push_str(s);
        b.push_str("\n");
    }
    match f.input {
        Some(Value::Str(s)) => {
            b.push_str("user\n");
            b.push_anchor_message(s);
            b.push_str("\n");
        }
        Some(items @ Value::Array(_)) => push_messages(&mut b, items),
        _ => {}
    }
    Some(b.finish())
}

fn push_messages(b: &mut Builder, messages: &Value<'_>) {
    let Value::Array(list) = messages else {
        return;
    };
    for m in list {
        let role = m.get("role").as_str();
        if let Some(role) = role {
            b.push_str(role);
            b.push_str("\n");
        }
        let first_user = !b.has_anchor() && role == Some("user");
        match m.get("content") {
            Value::Str(s) if first_user => b.push_anchor_message(s),
            Value::Str(s) => b.push_str(s),
            Value::Array(parts) if first_user => {
                let mut text = Builder::new(None, None);
                for part in parts {
                    push_part(&mut text, part);
                }
                b.push_anchor_message(&String::from_utf8_lossy(text.text()));
            }
            Value::Array(parts) => {
                for part in parts {
                    push_part(b, part);
                }
            }
            _ => {}
        }
        b.push_str("\n");
    }
}

/// One part of a multi-part content: its text, or the URL of an image or audio (the same image
/// is the same prefix).
fn push_part(b: &mut Builder, part: &Value<'_>) {
    if let Value::Str(s) = part {
        b.push_str(s);
        return;
    }
    for key in ["text", "input_text", "output_text"] {
        if let Some(s) = part.get(key).as_str() {
            b.push_str(s);
            return;
        }
    }
    for key in [
        "image_url",
        "input_image",
        "input_audio",
        "audio_url",
        "video_url",
    ] {
        match part.get(key) {
            Value::Str(url) => return b.push_str(url),
            Value::Null => {}
            v => {
                if let Some(url) = v.get("url").as_str() {
                    return b.push_str(url);
                }
            }
        }
    }
}

fn push_prompt(b: &mut Builder, prompt: &Value<'_>) {
    match prompt {
        Value::Str(s) => b.push_str(s),
        Value::Array(items) => {
            if items.iter().all(Value::is_u64) {
                b.push_tokens(items.iter().filter_map(Value::as_u64).map(|t| t as u32));
            } else {
                for item in items {
                    push_prompt(b, item);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The fields as the router reads them: from the JSON text, borrowed.
    fn chat(messages: serde_json::Value) -> Fingerprint {
        let text = messages.to_string();
        let messages: Value<'_> = serde_json::from_str(&text).unwrap();
        fingerprint(&PromptFields {
            model: Some("m"),
            cache_salt: None,
            messages: Some(&messages),
            prompt: None,
            instructions: None,
            input: None,
        })
        .unwrap()
    }

    #[test]
    fn a_conversations_turns_extend_its_prefix() {
        let system = "You are a careful assistant. ".repeat(20);
        let turn1 = chat(json!([
            {"role": "system", "content": system},
            {"role": "user", "content": "What is a KV cache?"},
        ]));
        let turn2 = chat(json!([
            {"role": "system", "content": system},
            {"role": "user", "content": "What is a KV cache?"},
            {"role": "assistant", "content": "It keeps attention keys and values."},
            {"role": "user", "content": "And prefix caching?"},
        ]));
        assert!(turn2.blocks.len() > turn1.blocks.len());
        assert_eq!(turn2.blocks[..turn1.blocks.len()], turn1.blocks[..]);
        // The system prompt is the preamble: "system\n" and 580 bytes, 9 full blocks.
        assert_eq!(turn1.preamble_blocks, (7 + system.len() + 1 + 5) / 64);
        assert_eq!(turn2.preamble_blocks, turn1.preamble_blocks);
        // Multi-part text is the same prompt as plain text.
        let parts = chat(json!([
            {"role": "system", "content": [{"type": "text", "text": system}]},
            {"role": "user", "content": [{"type": "text", "text": "What is a KV cache?"}]},
        ]));
        assert_eq!(parts, turn1);
        // Another role is another prompt.
        let other = chat(json!([{"role": "user", "content": system}]));
        assert_ne!(other.blocks[0], turn1.blocks[0]);
    }

    #[test]
    fn completions_prompts_of_every_form() {
        let text = "once upon a time ".repeat(10);
        let f = |p: serde_json::Value| {
            let text = p.to_string();
            let p: Value<'_> = serde_json::from_str(&text).unwrap();
            fingerprint(&PromptFields {
                model: Some("m"),
                cache_salt: None,
                messages: None,
                prompt: Some(&p),
                instructions: None,
                input: None,
            })
            .unwrap()
        };
        assert_eq!(f(json!(text)), f(json!([text])));
        let ids: Vec<u32> = (0..40).collect();
        assert_eq!(f(json!(ids)).blocks.len(), 40 * 4 / 64);
        assert!(
            fingerprint(&PromptFields {
                model: None,
                cache_salt: None,
                messages: None,
                prompt: None,
                instructions: None,
                input: None
            })
            .is_none()
        );
    }
}
