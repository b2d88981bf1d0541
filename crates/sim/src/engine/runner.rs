//! Runs a [`Scheduler`] on the clock and hands tokens to the HTTP handlers.
//!
//! Why a loop per engine: vLLM's engine core is one busy loop; the simulator mirrors it with one
//! task that plans a step, sleeps for the modelled step time, then applies the step and delivers
//! the emitted tokens. The next step is dated from the previous step's planned end, not from the
//! moment the task woke, so timer granularity does not accumulate into drift. With no work the
//! task waits on its command channel and costs no CPU.
//!
//! Tokens go to each request's [`Outbox`]: a counter and a flag behind a mutex plus a `Notify`.
//! A slow reader never slows the engine and never grows a queue: it finds several tokens waiting
//! and sends them as one chunk, as vLLM's output collector does. The command channel is
//! unbounded but holds at most two commands per in-flight HTTP request (add, abort).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::cost::Profile;
use super::scheduler::{Emitted, ReqId, Scheduler, SchedulerConfig, SeqSpec};
use crate::metrics::{EngineMetrics, FinishReason};

/// A step that starts later than its planned time by more than this re-dates from now (the
/// process was starved of CPU); smaller lateness is absorbed by the next steps.
const RESYNC_AFTER: Duration = Duration::from_millis(5);

/// What the HTTP side reads of one request's progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Output tokens written so far.
    pub emitted: usize,
    pub finished: bool,
    /// Prompt tokens served from the prefix cache (known once the request is admitted).
    pub cached_tokens: usize,
}

#[derive(Debug, Default)]
pub struct Outbox {
    state: Mutex<Progress>,
    notify: Notify,
    /// The KV blocks a finished `hold_blocks` request keeps (set before it is marked finished).
    held: Mutex<Vec<u32>>,
}

impl Outbox {
    /// Waits until more than `seen` tokens were written or the request finished.
    pub async fn wait_past(&self, seen: usize) -> Progress {
        loop {
            let p = *self.state.lock();
            if p.emitted > seen || p.finished {
                return p;
            }
            self.notify.notified().await;
        }
    }

    /// Waits until the request has written its whole output.
    pub async fn wait_finished(&self) -> Progress {
        loop {
            let p = self.wait_past(usize::MAX - 1).await;
            if p.finished {
                return p;
            }
        }
    }

    /// The blocks the finished request holds for a decode server (empty unless `hold_blocks`).
    pub fn held_blocks(&self) -> Vec<u32> {
        self.held.lock().clone()
    }

    fn publish(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.state.lock());
        self.notify.notify_one();
    }
}

enum Command {
    Add {
        id: ReqId,
        spec: SeqSpec,
        reason: FinishReason,
        outbox: Arc<Outbox>,
    },
    Abort(ReqId),
    /// Free the blocks a finished `hold_blocks` request kept.
    Release(ReqId),
    ResetPrefixCache,
}

/// A handle on one engine; cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::UnboundedSender<Command>,
    metrics: Arc<Mutex<EngineMetrics>>,
    /// Requests in this engine (waiting or running), for data-parallel dispatch and `/load`.
    load: Arc<AtomicUsize>,
    next_id: Arc<AtomicU64>,
}

/// A request submitted to an engine. Dropping it before the request finished aborts it, which
/// frees its slot and blocks: a disconnected client stops the simulated GPU.
pub struct Submission {
    pub outbox: Arc<Outbox>,
    engine: EngineHandle,
    id: ReqId,
}

impl Submission {
    /// The engine's id of this request (what [`EngineHandle::release`] takes).
    pub fn id(&self) -> ReqId {
        self.id
    }
}

impl Drop for Submission {
    fn drop(&mut self) {
        if !self.outbox.state.lock().finished {
            let _ = self.engine.tx.send(Command::Abort(self.id));
        }
    }
}

impl EngineHandle {
    /// Starts an engine task on the current runtime.
    pub fn spawn(cfg: SchedulerConfig, profile: Profile, speed: f64) -> Self {
        Self::spawn_publishing(cfg, profile, speed, None)
    }

    /// [`EngineHandle::spawn`], publishing the engine's KV events after every step.
    pub fn spawn_publishing(
        mut cfg: SchedulerConfig,
        profile: Profile,
        speed: f64,
        kv_events: Option<mvllm_kv_events::Publisher>,
    ) -> Self {
        cfg.kv_events = kv_events.is_some();
        let (tx, rx) = mpsc::unbounded_channel();
        let metrics = Arc::new(Mutex::new(EngineMetrics::new(
            cfg.num_blocks,
            cfg.max_model_len,
        )));
        let load = Arc::new(AtomicUsize::new(0));
        let handle = EngineHandle {
            tx,
            metrics: metrics.clone(),
            load: load.clone(),
            next_id: Arc::new(AtomicU64::new(1)),
        };
        let engine = Engine {
            sched: Scheduler::new(cfg),
            api_latency: Duration::from_secs_f64(profile.api_latency / speed),
            profile,
            speed,
            metrics,
            load,
            live: HashMap::new(),
            emitted: Vec::new(),
            kv_events,
        };
        tokio::spawn(engine.run(rx));
        handle
    }

    /// Queues a request. `reason` is how it ends when it writes its whole output.
    pub fn submit(&self, spec: SeqSpec, reason: FinishReason) -> Submission {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::default());
        self.load.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(Command::Add {
            id,
            spec,
            reason,
            outbox: outbox.clone(),
        });
        Submission {
            outbox,
            engine: self.clone(),
            id,
        }
    }

    /// Frees the blocks request `id` kept after finishing (`hold_blocks`).
    pub fn release(&self, id: ReqId) {
        let _ = self.tx.send(Command::Release(id));
    }

    /// Records a KV transfer from a prefill server (vLLM's `nixl_*` metrics).
    pub fn record_transfer(&self, seconds: f64, bytes: f64) {
        let mut m = self.metrics.lock();
        m.nixl_xfer_time.observe(seconds);
        m.nixl_bytes_transferred.observe(bytes);
    }

    /// Counts a KV transfer that failed (the decode server then computes the prefill itself).
    pub fn count_failed_transfer(&self) {
        self.metrics.lock().nixl_failed_transfers += 1;
    }

    /// Counts a request whose held KV expired before a decode server read it.
    pub fn count_expired_kv(&self) {
        self.metrics.lock().nixl_expired_requests += 1;
    }

    pub fn reset_prefix_cache(&self) {
        let _ = self.tx.send(Command::ResetPrefixCache);
    }

    pub fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }

    pub fn metrics(&self) -> EngineMetrics {
        self.metrics.lock().clone()
    }

    /// Counts a request that failed before reaching the engine (an injected error).
    pub fn count_error(&self) {
        self.metrics.lock().count_finished(FinishReason::Error);
    }
}

struct Live {
    outbox: Arc<Outbox>,
    reason: FinishReason,
    prompt_len: usize,
    /// `max_tokens` as the engine runs it.
    max_tokens: usize,
    /// Prompt tokens found in the prefix cache at first admission.
    cached: usize,
    preemptions: u32,
    arrival: Instant,
    scheduled: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
}

struct Engine {
    sched: Scheduler,
    profile: Profile,
    speed: f64,
    /// The profile's API latency at this speed.
    api_latency: Duration,
    metrics: Arc<Mutex<EngineMetrics>>,
    load: Arc<AtomicUsize>,
    live: HashMap<ReqId, Live>,
    emitted: Vec<Emitted>,
    /// Where the engine's KV events go, one batch per step that stored or removed blocks.
    kv_events: Option<mvllm_kv_events::Publisher>,
}

impl Engine {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut planned_start: Option<Instant> = None;
        loop {
            while let Ok(cmd) = rx.try_recv() {
                self.apply(cmd);
            }
            let plan = if self.sched.has_work() {
                self.sched.schedule()
            } else {
                Default::default()
            };
            if plan.is_empty() {
                self.publish_gauges();
                planned_start = None;
                match rx.recv().await {
                    Some(cmd) => {
                        self.apply(cmd);
                        continue;
                    }
                    None => return,
                }
            }
            let now = Instant::now();
            let after_idle = planned_start.is_none();
            if after_idle {
                // The API server's share of time to first token (tokenizing, queueing) delays
                // the first step after idle; a busy engine overlaps it with running steps.
                planned_start = Some(now + self.api_latency);
            }
            for &(id, hit) in &plan.admitted {
                if let Some(l) = self.live.get_mut(&id)
                    && l.scheduled.is_none()
                {
                    l.scheduled = Some(now);
                    l.cached = hit.min(l.prompt_len);
                    l.outbox
                        .publish(|p| p.cached_tokens = hit.min(l.prompt_len));
                }
            }
            for id in &plan.preempted {
                if let Some(l) = self.live.get_mut(id) {
                    l.preemptions += 1;
                }
            }
            (self.metrics.lock().iteration_tokens).observe(plan.num_tokens() as f64);
            self.publish_gauges();
            let step = self.profile.step_time(&plan, self.speed);
            // Continue from the previous step's planned end whether the timer woke us a little
            // early or late; only a long stall (CPU starvation) re-dates from now.
            let start = match planned_start {
                Some(t) if now < t + RESYNC_AFTER => t,
                _ => now,
            };
            let end = start + step;
            if end <= now {
                tokio::task::yield_now().await;
            } else if after_idle {
                super::clock::sleep_until_precise(end).await;
            } else {
                super::clock::sleep_until_nearest(end).await;
            }
            planned_start = Some(end);
            let done = Instant::now();
            let mut emitted = std::mem::take(&mut self.emitted);
            self.sched.finish_step(&plan, &mut emitted);
            self.publish_kv_events();
            self.deliver(&emitted, done, step, done - start);
            emitted.clear();
            self.emitted = emitted;
        }
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Add {
                id,
                spec,
                reason,
                outbox,
            } => {
                let prompt_len = spec.prompt_len;
                let max_tokens = if spec.max_tokens > 0 {
                    spec.max_tokens
                } else {
                    spec.output_len()
                };
                self.sched.add(id, spec);
                let now = Instant::now();
                let live = Live {
                    outbox,
                    reason,
                    prompt_len,
                    max_tokens,
                    cached: 0,
                    preemptions: 0,
                    arrival: now,
                    scheduled: None,
                    first_token: None,
                    last_token: None,
                };
                self.live.insert(id, live);
            }
            Command::Abort(id) => {
                if self.live.remove(&id).is_some() {
                    self.sched.abort(id);
                    self.load.fetch_sub(1, Ordering::Relaxed);
                    self.metrics.lock().count_finished(FinishReason::Abort);
                }
            }
            Command::Release(id) => {
                self.sched.release(id);
            }
            Command::ResetPrefixCache => {
                self.sched.reset_prefix_cache();
                self.publish_kv_events();
            }
        }
    }

    fn publish_kv_events(&mut self) {
        if let Some(p) = &self.kv_events {
            p.publish(self.sched.take_kv_events());
        }
    }

    fn publish_gauges(&self) {
        let mut m = self.metrics.lock();
        m.running = self.sched.num_running();
        m.waiting = self.sched.num_waiting();
        m.kv_usage = self.sched.kv_usage();
        m.cached_blocks = self.sched.num_cached_blocks();
        let c = &self.sched.counters;
        m.prefix_queries = c.prefix_queries;
        m.prefix_hits = c.prefix_hits;
        m.preemptions = c.preemptions;
        m.prompt_tokens = c.prompt_tokens;
        m.generation_tokens = c.generation_tokens;
    }

    fn deliver(&mut self, emitted: &[Emitted], now: Instant, modelled: Duration, wall: Duration) {
        let mut m = self.metrics.lock();
        m.steps += 1;
        m.model_busy_seconds += modelled.as_secs_f64();
        m.wall_busy_seconds += wall.as_secs_f64();
        for e in emitted {
            let Some(l) = self.live.get_mut(&e.id) else {
                continue;
            };
            match l.last_token {
                None => {
                    m.ttft.observe((now - l.arrival).as_secs_f64());
                    l.first_token = Some(now);
                }
                Some(prev) => m.itl.observe((now - prev).as_secs_f64()),
            }
            l.last_token = Some(now);
            if e.finished
                && let Some(blocks) = self.sched.held(e.id)
            {
                *l.outbox.held.lock() = blocks.to_vec();
            }
            l.outbox.publish(|p| {
                p.emitted = e.index + 1;
                p.finished = e.finished;
            });
            if e.finished {
                let l = self.live.remove(&e.id).expect("present above");
                self.load.fetch_sub(1, Ordering::Relaxed);
                m.count_finished(l.reason);
                let scheduled = l.scheduled.unwrap_or(l.arrival);
                let first = l.first_token.unwrap_or(now);
                m.e2e.observe((now - l.arrival).as_secs_f64());
                m.queue.observe((scheduled - l.arrival).as_secs_f64());
                m.inference.observe((now - scheduled).as_secs_f64());
                m.prefill.observe((first - scheduled).as_secs_f64());
                m.decode.observe((now - first).as_secs_f64());
                if e.index > 0 {
                    m.tpot.observe((now - first).as_secs_f64() / e.index as f64);
                }
                m.request_prompt_tokens.observe(l.prompt_len as f64);
                m.request_generation_tokens.observe((e.index + 1) as f64);
                m.request_params_max_tokens.observe(l.max_tokens as f64);
                m.request_params_n.observe(1.0);
                m.request_preemptions.observe(f64::from(l.preemptions));
                m.request_prefill_computed
                    .observe(l.prompt_len.saturating_sub(l.cached) as f64);
            }
        }
    }
}

#[cfg(test)]
#[path = "runner_tests.rs"]
mod tests;
