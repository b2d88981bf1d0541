//! What the load generator sends: three workloads with the shapes that matter to a router.
//!
//! - `sharegpt-like`: independent chats, prompt and output lengths long-tailed (log-normal, as
//!   in ShareGPT traces: median ~180 prompt and ~160 output tokens, a tail to thousands). No two
//!   prompts share a prefix, so prefix caching cannot help.
//! - `chat-sessions`: users in multi-turn conversations; a few long system prompts (~800 tokens)
//!   shared by everyone, each turn resending the whole history plus a new question, with think
//!   time between turns. A router that keeps a conversation where its prefix is cached wins.
//! - `prefix-heavy`: a few long documents (~2,500 tokens) and many short questions about them;
//!   most of each prompt is one of a handful of prefixes.
//!
//! Text is made of short pseudo-words, about one token each for vLLM's tokenizers and exactly
//! one piece for the simulator's, so lengths in tokens are what the shapes say.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    SharegptLike,
    ChatSessions,
    PrefixHeavy,
}

impl Workload {
    pub const ALL: [Workload; 3] = [
        Workload::SharegptLike,
        Workload::ChatSessions,
        Workload::PrefixHeavy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::SharegptLike => "sharegpt-like",
            Workload::ChatSessions => "chat-sessions",
            Workload::PrefixHeavy => "prefix-heavy",
        }
    }

    pub fn parse(s: &str) -> Result<Workload, String> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| {
                format!("unknown workload `{s}`: use sharegpt-like, chat-sessions or prefix-heavy")
            })
    }
}

/// One conversation: a system prompt and the user's turns, each with its output length. A
/// single request is a session of one turn.
#[derive(Debug, Clone)]
pub struct Session {
    pub system: Option<String>,
    pub turns: Vec<(String, u32)>,
    /// What the session shares with others, as a number: the conversation itself for
    /// `chat-sessions`, the document for `prefix-heavy`, nothing for `sharegpt-like` (a random
    /// key). Client-side affinity (`pin_to`) sends equal keys to one server.
    pub key: u64,
}

/// Draws sessions for a workload, reproducibly from a seed.
pub struct Generator {
    workload: Workload,
    rng: StdRng,
    /// System prompts (chat-sessions) or documents (prefix-heavy).
    shared: Vec<String>,
}

const SYSTEM_PROMPTS: usize = 4;
const DOCUMENTS: usize = 6;
/// The system prompt of every `prefix-heavy` question.
const DOCUMENT_INSTRUCTION: &str = "Answer the question about the document.";

impl Generator {
    pub fn new(workload: Workload, seed: u64) -> Generator {
        let mut rng = StdRng::seed_from_u64(seed);
        let shared = match workload {
            Workload::SharegptLike => Vec::new(),
            Workload::ChatSessions => (0..SYSTEM_PROMPTS)
                .map(|_| {
                    let n = rng.random_range(600..1000);
                    words(&mut rng, n)
                })
                .collect(),
            Workload::PrefixHeavy => (0..DOCUMENTS)
                .map(|_| {
                    let n = rng.random_range(2000..3000);
                    words(&mut rng, n)
                })
                .collect(),
        };
        Generator {
            workload,
            rng,
            shared,
        }
    }

    /// One short session per shared prefix (system prompt or document) that opens as the
    /// workload's sessions sharing it do: sent to a server, it leaves that prefix cached there.
    pub fn shared_openings(&self) -> Vec<Session> {
        self.shared
            .iter()
            .map(|text| match self.workload {
                Workload::PrefixHeavy => Session {
                    key: 0,
                    system: Some(DOCUMENT_INSTRUCTION.into()),
                    turns: vec![(format!("{text}\n\nQuestion: warm"), 1)],
                },
                _ => Session {
                    key: 0,
                    system: Some(text.clone()),
                    turns: vec![(" warm".into(), 1)],
                },
            })
            .collect()
    }

    pub fn next_session(&mut self) -> Session {
        let rng = &mut self.rng;
        match self.workload {
            Workload::SharegptLike => {
                let prompt = log_normal(rng, 180.0, 1.0, 8.0, 4000.0) as usize;
                let output = log_normal(rng, 160.0, 0.8, 8.0, 1024.0) as u32;
                Session {
                    system: None,
                    turns: vec![(words(rng, prompt), output)],
                    key: rng.random(),
                }
            }
            Workload::ChatSessions => {
                let system = self.shared[rng.random_range(0..self.shared.len())].clone();
                let turns = rng.random_range(2..=6);
                Session {
                    key: rng.random(),
                    system: Some(system),
                    turns: (0..turns)
                        .map(|_| {
                            let n = rng.random_range(20..150);
                            (words(rng, n), rng.random_range(30..300))
                        })
                        .collect(),
                }
            }
            Workload::PrefixHeavy => {
                let d = rng.random_range(0..self.shared.len());
                let doc = &self.shared[d];
                let n = rng.random_range(10..40);
                let question = words(rng, n);
                Session {
                    key: d as u64,
                    system: Some(DOCUMENT_INSTRUCTION.into()),
                    turns: vec![(
                        format!("{doc}\n\nQuestion:{question}"),
                        rng.random_range(16..128),
                    )],
                }
            }
        }
    }
}

/// The chat request for the next turn: the system prompt, the conversation so far (user and
/// assistant messages alternating) and the new user message.
pub fn chat_body(
    model: &str,
    system: Option<&str>,
    history: &[(String, String)],
    user: &str,
    max_tokens: u32,
    stream: bool,
) -> String {
    let mut messages: Vec<Value> = Vec::with_capacity(2 * history.len() + 2);
    if let Some(s) = system {
        messages.push(json!({"role": "system", "content": s}));
    }
    for (q, a) in history {
        messages.push(json!({"role": "user", "content": q}));
        messages.push(json!({"role": "assistant", "content": a}));
    }
    messages.push(json!({"role": "user", "content": user}));
    json!({
        "model": model, "messages": messages, "max_tokens": max_tokens,
        "ignore_eos": true, "stream": stream,
    })
    .to_string()
}

/// [`chat_body`]'s conversation as a completion of its token ids, as the simulator tokenizes
/// and templates it (the generation prompt included).
pub fn token_body(
    model: &str,
    system: Option<&str>,
    history: &[(String, String)],
    user: &str,
    max_tokens: u32,
    stream: bool,
) -> String {
    use mvllm_sim::tokenizer::{ChatTurn, encode_chat};
    let mut turns = Vec::with_capacity(2 * history.len() + 2);
    if let Some(s) = system {
        turns.push(ChatTurn {
            role: "system",
            content: s,
        });
    }
    for (q, a) in history {
        turns.push(ChatTurn {
            role: "user",
            content: q,
        });
        turns.push(ChatTurn {
            role: "assistant",
            content: a,
        });
    }
    turns.push(ChatTurn {
        role: "user",
        content: user,
    });
    json!({
        "model": model, "prompt": encode_chat(&turns, true), "max_tokens": max_tokens,
        "ignore_eos": true, "stream": stream,
    })
    .to_string()
}

/// `n` pseudo-words of three letters, each about one token.
fn words(rng: &mut StdRng, n: usize) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    let mut s = String::with_capacity(n * 4);
    for _ in 0..n {
        s.push(' ');
        for _ in 0..3 {
            s.push(LETTERS[rng.random_range(0..LETTERS.len())] as char);
        }
    }
    s
}

/// A log-normal draw with the given median and sigma, clipped to `[lo, hi]`.
fn log_normal(rng: &mut StdRng, median: f64, sigma: f64, lo: f64, hi: f64) -> f64 {
    // Box-Muller: one standard normal from two uniforms.
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    (median * (sigma * z).exp()).clamp(lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_the_workload() {
        let mut g = Generator::new(Workload::SharegptLike, 1);
        let lens: Vec<usize> = (0..2000)
            .map(|_| g.next_session().turns[0].0.split(' ').count() - 1)
            .collect();
        let mut sorted = lens.clone();
        sorted.sort();
        let median = sorted[sorted.len() / 2];
        assert!((140..230).contains(&median), "median prompt {median}");
        assert!(*sorted.last().unwrap() > 1500, "a long tail");

        let mut g = Generator::new(Workload::ChatSessions, 1);
        let sessions: Vec<Session> = (0..50).map(|_| g.next_session()).collect();
        let systems: std::collections::HashSet<_> =
            sessions.iter().map(|s| s.system.clone().unwrap()).collect();
        assert!(
            systems.len() <= SYSTEM_PROMPTS,
            "a few shared system prompts"
        );
        assert!(sessions.iter().all(|s| (2..=6).contains(&s.turns.len())));

        let mut g = Generator::new(Workload::PrefixHeavy, 1);
        let docs: std::collections::HashSet<String> = (0..100)
            .map(|_| {
                g.next_session().turns[0]
                    .0
                    .split("\n\nQuestion:")
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert!(docs.len() <= DOCUMENTS);
        // The warm-up opens with each document, as the questions about it do.
        let openings = Generator::new(Workload::PrefixHeavy, 1).shared_openings();
        assert_eq!(openings.len(), DOCUMENTS);
        for d in &docs {
            assert!(
                openings
                    .iter()
                    .any(|o| o.turns[0].0.starts_with(d.as_str()))
            );
        }
        // Same seed, same sessions.
        let a = Generator::new(Workload::SharegptLike, 7).next_session();
        let b = Generator::new(Workload::SharegptLike, 7).next_session();
        assert_eq!(a.turns, b.turns);
    }

    #[test]
    fn chat_bodies_carry_the_history() {
        let body = chat_body(
            "m",
            Some("sys"),
            &[("q1".into(), "a1".into())],
            "q2",
            5,
            true,
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        let roles: Vec<&str> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert_eq!(v["stream"], true);
        assert!(Workload::parse("nope").is_err());
    }
}
