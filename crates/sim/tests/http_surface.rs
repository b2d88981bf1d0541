//! Each route's shape against VLLM-SURFACE.md, over real sockets.

mod common;

use common::*;
use mvllm_sim::SimConfig;
use serde_json::{Value, json};

#[tokio::test]
async fn models_lists_each_served_name_and_each_adapter() {
    let sim = start(SimConfig {
        served_model_names: vec!["base".into(), "alias".into()],
        loras: vec!["sql".into()],
        ..SimConfig::instant()
    })
    .await;
    let v: Value = client()
        .get(format!("{}/v1/models", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["base", "alias", "sql"]);
    let base = &v["data"][0];
    assert_eq!(base["object"], "model");
    assert_eq!(base["owned_by"], "vllm");
    assert_eq!(base["root"], "base");
    assert_eq!(base["parent"], Value::Null);
    assert_eq!(base["max_model_len"], 131072);
    assert_eq!(base["permission"][0]["object"], "model_permission");
    assert!(
        base["permission"][0]["id"]
            .as_str()
            .unwrap()
            .starts_with("modelperm-")
    );
    let lora = &v["data"][2];
    assert_eq!(lora["parent"], "base");
    assert_eq!(lora["root"], "/sim/loras/sql");
    assert_eq!(lora["max_model_len"], Value::Null);
}

#[tokio::test]
async fn health_ping_version_and_load() {
    let sim = start_instant().await;
    let c = client();
    let r = c.get(format!("{}/health", sim.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "");
    assert_eq!(
        c.get(format!("{}/ping", sim.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.post(format!("{}/ping", sim.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let v: Value = c
        .get(format!("{}/version", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"version": "0.32.0"}));
    let v: Value = c
        .get(format!("{}/load", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"server_load": 0}));
}

#[tokio::test]
async fn chat_completion_json_shape_and_usage() {
    let sim = start_instant().await;
    let r = client()
        .post(format!("{}/v1/chat/completions", sim.url()))
        .header("x-request-id", "req-42")
        .json(&chat_body("Hello there, how are you?", 7, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-42");
    let text = r.text().await.unwrap();
    assert!(
        text.starts_with("{\"id\":\"chatcmpl-req-42\",\"object\":\"chat.completion\""),
        "{text}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["model"], mvllm_sim::config::DEFAULT_MODEL);
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(choice["stop_reason"], Value::Null);
    let usage = &v["usage"];
    assert_eq!(usage["completion_tokens"], 7);
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt + 7);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    // The prompt count agrees with /tokenize on the same messages.
    let t: Value = post_json(
        &format!("{}/tokenize", sim.url()),
        json!({"messages": [{"role": "user", "content": "Hello there, how are you?"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(t["count"].as_u64().unwrap(), prompt);
    // Deterministic: the same request gives the same text, and a second time the prompt hits
    // the prefix cache.
    let again: Value = post_json(
        &format!("{}/v1/chat/completions", sim.url()),
        chat_body("Hello there, how are you?", 7, false),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        again["choices"][0]["message"]["content"],
        choice["message"]["content"]
    );
    let cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(cached, (prompt - 1) / 16 * 16);
}

#[tokio::test]
async fn natural_stop_is_reported_as_stop() {
    let sim = start_instant().await;
    let v: Value = post_json(
        &format!("{}/v1/chat/completions", sim.url()),
        chat_body("hi", 100_000, false),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let n = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((16..=512).contains(&n), "natural length {n}");
}

#[tokio::test]
async fn chat_stream_framing_role_content_finish_usage_done() {
    let sim = start_instant().await;
    let mut body = chat_body("Tell me a story", 5, true);
    body["stream_options"] = json!({"include_usage": true});
    let r = post_json(&format!("{}/v1/chat/completions", sim.url()), body).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse_events(&r.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let first = &chunks[0];
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(
        first["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(first["choices"][0]["finish_reason"], Value::Null);
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 5);
    let content: Vec<&Value> = chunks[1..chunks.len() - 1].iter().collect();
    assert!(!content.is_empty());
    for (i, c) in content.iter().enumerate() {
        assert_eq!(c["id"], first["id"]);
        let fr = &c["choices"][0]["finish_reason"];
        if i + 1 == content.len() {
            assert_eq!(fr, "length");
        } else {
            assert_eq!(fr, &Value::Null);
        }
    }
    // The streamed text equals the non-streamed text of the same request.
    let text: String = content
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    let full: Value = post_json(
        &format!("{}/v1/chat/completions", sim.url()),
        chat_body("Tell me a story", 5, false),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(full["choices"][0]["message"]["content"], text.as_str());
}

#[tokio::test]
async fn completion_stream_uses_text_and_no_role_chunk() {
    let sim = start_instant().await;
    let body = json!({"prompt": "Once upon a time", "max_tokens": 4, "stream": true});
    let r = post_json(&format!("{}/v1/completions", sim.url()), body).await;
    let events = sse_events(&r.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "text_completion" && c["choices"][0]["text"].is_string())
    );
    assert!(chunks[0]["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
    let v: Value = post_json(
        &format!("{}/v1/completions", sim.url()),
        json!({"prompt": [1, 2, 3], "max_tokens": 2}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["prompt_tokens"], 3);
}

#[tokio::test]
async fn tokenize_detokenize_roundtrip_of_output_words() {
    let sim = start_instant().await;
    let t: Value = post_json(
        &format!("{}/tokenize", sim.url()),
        json!({"prompt": " the data", "return_token_strs": true}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(t["count"], 3, "bos + two words");
    assert_eq!(t["max_model_len"], 131072);
    assert_eq!(
        t["token_strs"],
        json!(["<|begin_of_text|>", " the", " data"])
    );
    let d: Value = post_json(
        &format!("{}/detokenize", sim.url()),
        json!({"tokens": t["tokens"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(d["prompt"], "<|begin_of_text|> the data");
}

#[tokio::test]
async fn embeddings_are_deterministic_unit_vectors() {
    let sim = start_instant().await;
    let url = format!("{}/v1/embeddings", sim.url());
    let v: Value = post_json(&url, json!({"input": ["a b c", "x y"]}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let e0: Vec<f64> = serde_json::from_value(v["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(e0.len(), 384);
    let norm: f64 = e0.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3);
    let again: Value = post_json(&url, json!({"input": "a b c"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["data"][0]["embedding"], v["data"][0]["embedding"]);
    assert_ne!(v["data"][1]["embedding"], v["data"][0]["embedding"]);
    // The OpenAI SDKs ask for base64 by default: float32 little-endian, as vLLM answers.
    let b64: Value = post_json(&url, json!({"input": "a b c", "encoding_format": "base64"}))
        .await
        .json()
        .await
        .unwrap();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let floats: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let plain: Vec<f32> = serde_json::from_value(again["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(floats, plain);
    let bad = post_json(&url, json!({"input": "a", "encoding_format": "hex"})).await;
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn lora_adapters_load_serve_and_unload() {
    let sim = start_instant().await;
    let c = client();
    let r = c
        .post(format!("{}/v1/load_lora_adapter", sim.url()))
        .json(&json!({"lora_name": "sql", "lora_path": "/adapters/sql"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        "Success: LoRA adapter 'sql' added successfully."
    );
    let again = c
        .post(format!("{}/v1/load_lora_adapter", sim.url()))
        .json(&json!({"lora_name": "sql", "lora_path": "/adapters/sql"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400);
    let mut body = chat_body("select", 2, false);
    body["model"] = json!("sql");
    let r = post_json(&format!("{}/v1/chat/completions", sim.url()), body.clone()).await;
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{}/v1/unload_lora_adapter", sim.url()))
        .json(&json!({"lora_name": "sql"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = post_json(&format!("{}/v1/chat/completions", sim.url()), body).await;
    assert_eq!(r.status(), 404);
}

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn errors_have_vllm_status_and_nested_body() {
    let sim = start_instant().await;
    let c = client();
    let url = format!("{}/v1/chat/completions", sim.url());

    // Malformed JSON, unknown models and the context checks are pinned against the real
    // vLLM's answers in real_vllm_answers.rs.
    let (s, v) = error_of(
        c.post(&url)
            .header("content-type", "text/plain")
            .body("{}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("application/json")
    );

    let (s, v) = error_of(
        c.post(&url)
            .json(&json!({"max_tokens": 3}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("messages"));

    let (s, v) = error_of(
        c.post(&url)
            .json(&chat_body("x", 0, false))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        v["error"]["message"],
        "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)"
    );
}

#[tokio::test]
async fn api_key_guards_v1_paths_only() {
    let sim = start(SimConfig {
        api_key: Some("sekret".into()),
        ..SimConfig::instant()
    })
    .await;
    let c = client();
    let r = c
        .get(format!("{}/v1/models", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "Unauthorized"})
    );
    let r = c
        .get(format!("{}/v1/models", sim.url()))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{}/v1/models", sim.url()))
        .bearer_auth("sekret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        c.get(format!("{}/health", sim.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{}/metrics", sim.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
