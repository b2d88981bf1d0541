use super::*;

fn cfg(max_num_seqs: usize, budget: usize, num_blocks: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs,
        max_num_batched_tokens: budget,
        num_blocks,
        block_size: 16,
        prefix_caching: true,
        kv_events: false,
        max_model_len: 131072,
    }
}

/// A request whose prompt tokens are `base..base+prompt` and that writes `output` tokens.
fn spec(base: u32, prompt: usize, output: usize) -> SeqSpec {
    let tokens = (base..base + (prompt + output) as u32).collect();
    SeqSpec {
        tokens,
        prompt_len: prompt,
        hash_salt: 0,
        ..Default::default()
    }
}

fn step(s: &mut Scheduler) -> (StepPlan, Vec<Emitted>) {
    let plan = s.schedule();
    let mut out = Vec::new();
    s.finish_step(&plan, &mut out);
    (plan, out)
}

fn run_to_end(s: &mut Scheduler) -> usize {
    let mut steps = 0;
    while s.has_work() {
        step(s);
        steps += 1;
        assert!(steps < 100_000, "scheduler made no progress");
    }
    steps
}

#[test]
fn requests_batch_together_and_decode_one_token_per_step() {
    let mut s = Scheduler::new(cfg(8, 1000, 100));
    for i in 0..3 {
        s.add(i, spec(1000 * i as u32, 10, 3));
    }
    let (plan, out) = step(&mut s);
    assert_eq!(plan.num_tokens(), 30, "all three prefills in one step");
    assert_eq!(
        out.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![0, 0, 0]
    );
    let (plan, out) = step(&mut s);
    assert_eq!(plan.num_tokens(), 3, "one decode token each");
    assert!(plan.scheduled.iter().all(|x| x.context_len == 10));
    assert_eq!(out.len(), 3);
    let (_, out) = step(&mut s);
    assert!(out.iter().all(|e| e.finished && e.index == 2));
    assert!(!s.has_work());
    assert_eq!(s.kv_usage(), 0.0);
    assert_eq!(s.counters.generation_tokens, 9);
    assert_eq!(s.counters.prompt_tokens, 30);
}

#[test]
fn long_prompt_is_prefilled_in_chunks_behind_running_decodes() {
    let mut s = Scheduler::new(cfg(8, 64, 100));
    s.add(1, spec(0, 8, 10));
    step(&mut s); // request 1 prefilled, now decoding
    s.add(2, spec(5000, 150, 2));
    let (plan, out) = step(&mut s);
    assert_eq!(
        plan.scheduled[0],
        Scheduled {
            id: 1,
            num_new_tokens: 1,
            context_len: 8,
            completes: true
        }
    );
    assert_eq!(
        plan.scheduled[1],
        Scheduled {
            id: 2,
            num_new_tokens: 63,
            context_len: 0,
            completes: false
        }
    );
    assert_eq!(out.len(), 1, "a partial prefill emits nothing");
    let (plan, _) = step(&mut s);
    assert_eq!(plan.scheduled[1].num_new_tokens, 63);
    let (plan, out) = step(&mut s);
    assert_eq!(
        plan.scheduled[1],
        Scheduled {
            id: 2,
            num_new_tokens: 24,
            context_len: 126,
            completes: true
        }
    );
    assert!(
        out.iter().any(|e| e.id == 2 && e.index == 0),
        "first token when prefill completes"
    );
}

#[test]
fn admission_stops_at_max_num_seqs_and_resumes_when_one_finishes() {
    let mut s = Scheduler::new(cfg(2, 1000, 100));
    s.add(1, spec(0, 4, 1));
    s.add(2, spec(100, 4, 5));
    s.add(3, spec(200, 4, 5));
    let (plan, _) = step(&mut s);
    assert_eq!(
        plan.admitted.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(s.num_waiting(), 1);
    assert_eq!(
        s.num_running(),
        1,
        "request 1 finished after its single token"
    );
    let (plan, _) = step(&mut s);
    assert_eq!(
        plan.admitted.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![3]
    );
}

#[test]
fn running_out_of_blocks_preempts_the_newest_request_which_later_recomputes() {
    // 3 blocks of 16 tokens. Two requests with 16-token prompts take one block each on admission
    // and each needs a second one for its first decode step: the third block goes to the older
    // request, and the newer one, unable to grow, is preempted in that same step.
    let mut s = Scheduler::new(cfg(8, 1000, 3));
    s.add(1, spec(0, 16, 20));
    s.add(2, spec(1000, 16, 20));
    let (plan, out) = step(&mut s);
    assert_eq!(plan.admitted.len(), 2);
    assert_eq!(out.len(), 2);
    let (plan, out) = step(&mut s);
    assert_eq!(
        plan.preempted,
        vec![2],
        "the most recently admitted request is preempted"
    );
    assert_eq!(
        plan.scheduled.iter().map(|x| x.id).collect::<Vec<_>>(),
        vec![1]
    );
    assert!(
        plan.admitted.is_empty(),
        "no admission in a step that preempted"
    );
    assert_eq!(out.len(), 1);
    assert_eq!(s.num_waiting(), 1);
    assert_eq!(s.counters.preemptions, 1);
    run_to_end(&mut s);
    assert_eq!(
        s.counters.generation_tokens, 40,
        "both requests still write every token"
    );
    assert_eq!(s.kv_usage(), 0.0);
}

#[test]
fn repeated_prompt_reuses_cached_blocks_but_computes_at_least_one_token() {
    let mut s = Scheduler::new(cfg(8, 1000, 100));
    s.add(1, spec(0, 64, 1));
    run_to_end(&mut s);
    // Same 64 prompt tokens: at most (64 - 1) / 16 = 3 blocks can be hits.
    s.add(2, spec(0, 64, 1));
    let (plan, _) = step(&mut s);
    assert_eq!(plan.admitted, vec![(2, 48)]);
    assert_eq!(plan.scheduled[0].num_new_tokens, 16);
    // A longer prompt sharing the 64 tokens hits all four blocks.
    let mut longer = spec(0, 80, 1);
    longer.tokens[64..].iter_mut().for_each(|t| *t += 7);
    s.add(3, longer);
    let (plan, _) = step(&mut s);
    assert_eq!(plan.admitted, vec![(3, 64)]);
    assert_eq!(s.counters.prefix_hits, 48 + 64);
    assert_eq!(s.counters.prefix_queries, 64 + 64 + 80);
    // A different salt (another adapter) shares nothing.
    let mut other = spec(0, 64, 1);
    other.hash_salt = 9;
    s.add(4, other);
    let (plan, _) = step(&mut s);
    assert_eq!(plan.admitted, vec![(4, 0)]);
}

#[test]
fn generated_blocks_are_cached_for_the_next_turn() {
    let mut s = Scheduler::new(cfg(8, 1000, 100));
    s.add(1, spec(0, 20, 30)); // 50 tokens: blocks 0..3 full once 48 are computed
    run_to_end(&mut s);
    s.add(2, spec(0, 60, 1)); // the next turn: prompt = the first 60 tokens of request 1
    let (plan, _) = step(&mut s);
    assert_eq!(plan.admitted, vec![(2, 48)]);
}

#[test]
fn abort_frees_blocks_and_removes_waiting_and_running_requests() {
    let mut s = Scheduler::new(cfg(1, 1000, 100));
    s.add(1, spec(0, 40, 10));
    s.add(2, spec(100, 40, 10));
    step(&mut s);
    assert!(s.kv_usage() > 0.0);
    assert!(s.abort(1));
    assert!(s.abort(2));
    assert!(!s.abort(2));
    assert!(!s.has_work());
    assert_eq!(s.kv_usage(), 0.0);
}

#[test]
fn evicted_blocks_no_longer_hit() {
    let mut s = Scheduler::new(cfg(8, 1000, 4));
    s.add(1, spec(0, 33, 1)); // 3 blocks, 2 full and cached
    run_to_end(&mut s);
    s.add(2, spec(500, 60, 1)); // needs all 4 blocks: evicts the cached ones
    run_to_end(&mut s);
    s.add(3, spec(0, 33, 1));
    let (plan, _) = step(&mut s);
    assert_eq!(plan.admitted, vec![(3, 0)]);
}

#[test]
fn a_preloaded_prompt_computes_only_its_last_token_and_reports_it_cached() {
    let mut s = Scheduler::new(cfg(8, 8192, 100));
    s.add(
        1,
        SeqSpec {
            preloaded: 100,
            ..spec(0, 100, 2)
        },
    );
    let (plan, out) = step(&mut s);
    assert_eq!(
        plan.admitted,
        vec![(1, 99)],
        "the KV of 99 tokens came from elsewhere"
    );
    assert_eq!(plan.num_tokens(), 1, "one token computed for its logits");
    assert_eq!(
        out.len(),
        1,
        "the first token comes after that single-token step"
    );
    assert_eq!(s.cached_prompt_tokens(1), Some(99));
    assert_eq!(
        s.counters.prefix_hits, 0,
        "remote KV is not a local prefix hit"
    );
    run_to_end(&mut s);
    // The pulled blocks entered this server's prefix cache: the same prompt now hits locally.
    s.add(2, spec(0, 100, 1));
    let (plan, _) = step(&mut s);
    assert_eq!(plan.admitted, vec![(2, 96)]);
}

#[test]
fn held_blocks_outlive_their_request_until_released() {
    let mut s = Scheduler::new(cfg(8, 8192, 100));
    s.add(
        1,
        SeqSpec {
            hold_blocks: true,
            ..spec(0, 64, 1)
        },
    );
    run_to_end(&mut s);
    let held = s.held(1).expect("kept for the decode server").to_vec();
    assert_eq!(held.len(), 4, "the 64 prompt tokens' four blocks");
    assert!(s.kv_usage() > 0.0, "held blocks stay in use");
    assert!(s.release(1));
    assert!(!s.release(1), "released once");
    assert_eq!(s.kv_usage(), 0.0);
    assert!(s.held(1).is_none());
}
