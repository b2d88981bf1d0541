//! A fuzz smoke that runs with the tests, on stable Rust: thousands of mutated inputs (from
//! valid samples, seeded so a failure repeats) through the readers that take input from outside:
//! the Prometheus-text parser, the config loader and the request-body reader. None may panic.
//! The coverage-guided runs are `scripts/fuzz.sh` (cargo-fuzz, targets in `fuzz/`).

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ROUNDS: usize = 4000;

/// One random edit of `input`: flip, insert, delete, duplicate or truncate.
fn mutate(rng: &mut StdRng, input: &mut Vec<u8>) {
    const INTERESTING: &[&[u8]] = &[
        b"{",
        b"}",
        b"\"",
        b"\\",
        b"\n",
        b"\r\n",
        b"=",
        b"[",
        b"]",
        b"NaN",
        b"+Inf",
        b"-1",
        b"1e308",
        b"\xff",
        b"\x00",
        b"--XyZ",
        b"\r\n\r\n",
        b"# ",
        b"{engine=\"0\"}",
    ];
    let len = input.len();
    match rng.random_range(0..6) {
        0 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] ^= 1 << rng.random_range(0..8);
        }
        1 => {
            let i = rng.random_range(0..=len);
            let piece = INTERESTING[rng.random_range(0..INTERESTING.len())];
            input.splice(i..i, piece.iter().copied());
        }
        2 if len > 0 => {
            let a = rng.random_range(0..len);
            let b = rng.random_range(a..=len.min(a + 16));
            input.drain(a..b);
        }
        3 if len > 0 => {
            let a = rng.random_range(0..len);
            let b = rng.random_range(a..=len.min(a + 32));
            let copy: Vec<u8> = input[a..b].to_vec();
            let at = rng.random_range(0..=len);
            input.splice(at..at, copy);
        }
        4 if len > 0 => input.truncate(rng.random_range(0..len)),
        _ => input.push(rng.random()),
    }
}

fn mutants(seeds: &[&[u8]], seed: u64, mut each: impl FnMut(&[u8])) {
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..ROUNDS {
        let mut input = seeds[rng.random_range(0..seeds.len())].to_vec();
        for _ in 0..rng.random_range(1..8) {
            mutate(&mut rng, &mut input);
        }
        each(&input);
    }
}

#[test]
fn the_prometheus_parser_survives_mutated_metrics() {
    let seeds: &[&[u8]] = &[
        b"# HELP vllm:num_requests_running x\n# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0\nvllm:num_requests_waiting{engine=\"0\"} 1\nvllm:kv_cache_usage_perc{engine=\"0\"} 0.5\nvllm:prefix_cache_hits_total{engine=\"0\"} 10\nvllm:generation_tokens_total 5 1700000000\n",
        b"vllm:num_requests_running{model_name=\"a \\\"q} n\"} 1\nvllm:num_requests_waiting 0\n",
    ];
    let mut parsed = 0;
    mutants(seeds, 1, |input| {
        if let Ok(m) = mvllm_router::fleet::prom::parse(&String::from_utf8_lossy(input)) {
            assert!((0.0..=1.0).contains(&m.kv_usage), "{m:?}");
            parsed += 1;
        }
    });
    assert!(
        parsed > 0,
        "some mutants still parse: the mutations are not all fatal"
    );
}

#[test]
fn the_config_loader_survives_mutated_files() {
    let example = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../servers.example.toml"
    ))
    .unwrap();
    let seeds: &[&[u8]] = &[
        &example,
        b"[servers]\nservers = [{ url = \"http://a:8000\", max_concurrent_requests = 4 }]\n[config]\nrequest_timeout = 5\n",
        b"[[servers]]\nurl = \"http://b:1\"\nmodels = [\"m\"]\n[auth]\nkeys = [\"sk-0123456789abcdefg\"]\n",
    ];
    mutants(seeds, 2, |input| {
        let Ok(text) = std::str::from_utf8(input) else {
            return;
        };
        if text.contains("keys_file") {
            return;
        }
        if let Err(e) = mvllm_router::Config::parse(text, "fuzz.toml") {
            assert!(!e.message.is_empty());
        }
    });
}

#[test]
fn the_request_body_reader_survives_mutated_bodies() {
    let seeds: &[&[u8]] = &[
        b"{\"model\":\"m\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF\r\n--XyZ--\r\n",
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for (i, ct) in ["application/json", "multipart/form-data; boundary=XyZ"]
        .into_iter()
        .enumerate()
    {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        mutants(seeds, 3 + i as u64, |input| {
            let body = Bytes::copy_from_slice(input);
            let _ = runtime.block_on(mvllm_router::proxy::meta::read_meta(&headers, &body, true));
        });
    }
}
