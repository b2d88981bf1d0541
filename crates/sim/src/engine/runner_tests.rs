//! The engine on tokio's paused clock: time advances exactly to each step's end, so step timing
//! is checked against the cost model with no tolerance.

use super::*;
use crate::engine::scheduler::SchedulerConfig;

fn engine(max_num_seqs: usize, budget: usize, num_blocks: usize) -> EngineHandle {
    let cfg = SchedulerConfig {
        max_num_seqs,
        max_num_batched_tokens: budget,
        num_blocks,
        block_size: 16,
        prefix_caching: true,
        kv_events: false,
        max_model_len: 131072,
    };
    EngineHandle::spawn(cfg, Profile::h100_llama8b(), 1.0)
}

fn spec(base: u32, prompt: usize, output: usize) -> SeqSpec {
    SeqSpec {
        tokens: (base..base + (prompt + output) as u32).collect(),
        prompt_len: prompt,
        hash_salt: 0,
        ..Default::default()
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Within tokio's timer tick: a token may be delivered up to a millisecond either side of
/// its modelled time (see `clock`), and the error never accumulates.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-3
}

/// Times of each token of one submission, from `t0`.
async fn token_times(sub: &Submission, t0: Instant) -> Vec<f64> {
    let mut times = Vec::new();
    let mut seen = 0;
    loop {
        let p = sub.outbox.wait_past(seen).await;
        for _ in seen..p.emitted {
            times.push(secs(Instant::now() - t0));
        }
        seen = p.emitted;
        if p.finished {
            return times;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn lone_request_first_token_after_one_prefill_step_then_one_decode_step_per_token() {
    let p = Profile::h100_llama8b();
    let e = engine(256, 8192, 10_000);
    let t0 = Instant::now();
    let sub = e.submit(spec(0, 1000, 5), FinishReason::Length);
    let times = token_times(&sub, t0).await;
    let prefill = p.lone_ttft(1000, 0, 1.0);
    assert!(close(times[0], prefill), "ttft {} vs {prefill}", times[0]);
    let mut ideal = prefill;
    for (i, t) in times.iter().enumerate().skip(1) {
        ideal += p.step_seconds([(1000 + i - 1, 1)], 1.0);
        assert!(
            close(*t, ideal),
            "token {i} at {t}, modelled {ideal}: no drift"
        );
    }
    let m = e.metrics();
    assert_eq!(m.finished(FinishReason::Length), 1);
    assert_eq!(m.ttft.count(), 1);
    assert_eq!(m.itl.count(), 4);
    assert!((m.model_busy_seconds + p.api_latency - ideal).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn a_batch_decodes_together_and_each_token_is_slower_than_alone() {
    let p = Profile::h100_llama8b();
    let e = engine(256, 8192, 10_000);
    let t0 = Instant::now();
    let subs: Vec<_> = (0..32)
        .map(|i| e.submit(spec(i * 10_000, 100, 4), FinishReason::Length))
        .collect();
    let all = futures_util::future::join_all(subs.iter().map(|s| token_times(s, t0))).await;
    let prefill = p.api_latency + p.step_seconds((0..32).map(|_| (0, 100)), 1.0);
    let decode = p.step_seconds((0..32).map(|_| (100, 1)), 1.0);
    for times in &all {
        assert!(
            close(times[0], prefill),
            "all 32 prefilled in one step: {} vs {prefill}",
            times[0]
        );
        assert!(
            close(times[1], prefill + decode),
            "one decode step for the whole batch"
        );
    }
    assert_eq!(e.metrics().steps, 4);
    assert!(decode > 1.15 * p.step_seconds([(100, 1)], 1.0));
}

#[tokio::test(start_paused = true)]
async fn a_long_prompt_is_prefilled_in_budget_sized_chunks() {
    let p = Profile::h100_llama8b();
    let e = engine(256, 8192, 10_000);
    let t0 = Instant::now();
    let sub = e.submit(spec(0, 20_000, 1), FinishReason::Length);
    let times = token_times(&sub, t0).await;
    let expected = p.api_latency
        + p.step_seconds([(0, 8192)], 1.0)
        + p.step_seconds([(8192, 8192)], 1.0)
        + p.step_seconds([(16_384, 3616)], 1.0);
    assert!(
        close(times[0], expected),
        "three chunks: {} vs {expected}",
        times[0]
    );
    assert_eq!(e.metrics().steps, 3);
}

#[tokio::test(start_paused = true)]
async fn a_decoding_request_feels_a_prefill_chunk_as_one_slow_token() {
    let p = Profile::h100_llama8b();
    let e = engine(256, 8192, 10_000);
    let decoding = e.submit(spec(0, 10, 50), FinishReason::Length);
    decoding.outbox.wait_past(0).await;
    // The engine has already planned its next (decode-only) step; the long prompt joins the one
    // after, as in vLLM's busy loop.
    let _long = e.submit(spec(100_000, 8000, 1), FinishReason::Length);
    decoding.outbox.wait_past(1).await;
    let t_before = Instant::now();
    let p2 = decoding.outbox.wait_past(2).await;
    let gap = secs(Instant::now() - t_before);
    assert_eq!(p2.emitted, 3);
    let mixed = p.step_seconds([(12, 1), (0, 8000)], 1.0);
    assert!((gap - mixed).abs() <= 1e-3, "gap {gap} vs {mixed}");
    assert!(gap > 20.0 * p.step_seconds([(11, 1)], 1.0));
}

#[tokio::test(start_paused = true)]
async fn kv_exhaustion_preempts_and_every_request_still_completes() {
    // 40 blocks of 16 tokens; 8 requests of 64 + 100 tokens need ~11 blocks each at the end.
    let e = engine(256, 8192, 40);
    let subs: Vec<_> = (0..8)
        .map(|i| e.submit(spec(i * 1000, 64, 100), FinishReason::Length))
        .collect();
    for s in &subs {
        assert_eq!(s.outbox.wait_finished().await.emitted, 100);
    }
    let m = e.metrics();
    assert!(m.preemptions > 0, "the cache was too small for all at once");
    assert_eq!(m.finished(FinishReason::Length), 8);
    assert_eq!(m.generation_tokens, 800);
    assert_eq!(e.load(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_repeated_long_prompt_is_served_from_the_prefix_cache() {
    let e = engine(256, 8192, 10_000);
    let t0 = Instant::now();
    let first = e.submit(spec(0, 8000, 1), FinishReason::Length);
    let cold = token_times(&first, t0).await[0];
    let t1 = Instant::now();
    let second = e.submit(spec(0, 8000, 1), FinishReason::Length);
    let warm = token_times(&second, t1).await[0];
    assert_eq!(second.outbox.wait_finished().await.cached_tokens, 7984);
    assert!(cold / warm > 5.0, "cold {cold} warm {warm}");
    let m = e.metrics();
    assert_eq!(m.prefix_hits, 7984);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_submission_aborts_it() {
    let e = engine(256, 8192, 10_000);
    let sub = e.submit(spec(0, 100, 10_000), FinishReason::Length);
    sub.outbox.wait_past(0).await;
    drop(sub);
    let other = e.submit(spec(50_000, 10, 1), FinishReason::Length);
    other.outbox.wait_finished().await;
    let m = e.metrics();
    assert_eq!(m.finished(FinishReason::Abort), 1);
    assert_eq!(e.load(), 0);
    assert_eq!(m.running, 0);
}

#[tokio::test(start_paused = true)]
async fn an_idle_engine_takes_no_steps() {
    let e = engine(256, 8192, 10_000);
    e.submit(spec(0, 10, 1), FinishReason::Length)
        .outbox
        .wait_finished()
        .await;
    let steps = e.metrics().steps;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(e.metrics().steps, steps, "no work, no steps");
}
