//! `mvllm bench tokenize`: what matching a request to exact KV blocks costs the router per
//! request: rendering the chat template, tokenizing, and chaining the block hashes, for a
//! conversation of about `tokens` tokens, with a model's own tokenizer directory.

use std::path::PathBuf;
use std::time::Instant;

use mvllm_router::routing::exact_index::chain;
use mvllm_router::tokenizer::ModelTokenizer;
use serde_json::{Value, json};

use crate::stats::quantile;

#[derive(Debug, Clone)]
pub struct Options {
    /// A directory with `tokenizer.json` (and `tokenizer_config.json`).
    pub tokenizer: PathBuf,
    /// The conversation's length to aim at, in tokens.
    pub tokens: usize,
    pub iterations: usize,
}

/// A chat whose messages, tokenized, come to about `target` tokens: pseudo-English words.
fn conversation(t: &ModelTokenizer, target: usize) -> Result<(Value, usize), String> {
    const WORDS: &[&str] = &[
        "the", "router", "sends", "each", "request", "to", "a", "server", "that", "holds", "its",
        "prefix", "in", "cache", "and", "streams", "tokens", "back", "quickly", "while", "load",
        "stays", "balanced", "over", "many", "engines",
    ];
    let mut words = 64;
    loop {
        let text: Vec<&str> = (0..words)
            .map(|i| WORDS[(i * 7 + i / 3) % WORDS.len()])
            .collect();
        let half = text.len() / 2;
        let messages = json!([
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": text[..half].join(" ")},
            {"role": "assistant", "content": "Understood."},
            {"role": "user", "content": text[half..].join(" ")},
        ]);
        let n = t.encode_chat(&messages).map_err(|e| e.to_string())?.len();
        if n >= target || words > 1_000_000 {
            return Ok((messages, n));
        }
        words = (words as f64 * (target as f64 / n.max(1) as f64) * 1.05) as usize + 1;
    }
}

pub fn run(opts: Options) -> Result<Value, String> {
    let t = ModelTokenizer::load(&opts.tokenizer).map_err(|e| e.to_string())?;
    let (messages, tokens) = conversation(&t, opts.tokens)?;
    let body = json!({"model": "m", "messages": messages}).to_string();
    let mut render = Vec::with_capacity(opts.iterations);
    let mut whole = Vec::with_capacity(opts.iterations);
    for _ in 0..opts.iterations {
        let start = Instant::now();
        let _ = t.render_chat(&messages);
        render.push(start.elapsed().as_secs_f64() * 1e6);
        let start = Instant::now();
        let ids = t
            .request_tokens(body.as_bytes())
            .ok_or("the chat did not tokenize")?;
        let blocks = chain(&ids, 16, 0);
        std::hint::black_box(blocks);
        whole.push(start.elapsed().as_secs_f64() * 1e6);
    }
    Ok(json!({
        "tokenizer": opts.tokenizer.display().to_string(),
        "prompt_tokens": tokens,
        "iterations": opts.iterations,
        "template_us": {"p50": quantile(&render, 0.5), "p99": quantile(&render, 0.99)},
        "request_us": {"p50": quantile(&whole, 0.5), "p99": quantile(&whole, 0.99)},
    }))
}

pub fn render(r: &Value) -> String {
    format!(
        "tokenizer {}\na chat of {} tokens, {} times: the request (body read, template, tokenizer, 16-token block chain) p50 {:.0} us, p99 {:.0} us; the template alone p50 {:.0} us\n",
        r["tokenizer"].as_str().unwrap_or(""),
        r["prompt_tokens"],
        r["iterations"],
        r["request_us"]["p50"].as_f64().unwrap_or(f64::NAN),
        r["request_us"]["p99"].as_f64().unwrap_or(f64::NAN),
        r["template_us"]["p50"].as_f64().unwrap_or(f64::NAN),
    )
}
