//! A prompt's prefix fingerprint, without a tokenizer: chained hashes over fixed-size blocks of
//! the prompt as the server will see it (chat messages in order with their roles, a completion's
//! prompt, a response's instructions and input).
//!
//! Why this shape: vLLM caches a prompt's KV in blocks of 16 tokens, each block keyed by its
//! tokens and the block before it, so two prompts share cached blocks exactly as far as they
//! share a prefix. At ~4 characters a token, [`BLOCK_BYTES`] of text stand for one such block;
//! chaining each block's hash to the previous one makes "the first k hashes match" mean "the
//! first k blocks match". The chain is seeded by the model (a LoRA adapter has its own cache) and
//! `cache_salt` (vLLM keeps salted prompts apart). It is capped at [`MAX_BLOCKS`], and costs one
//! pass of xxh3 over at most that much text: microseconds.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Bytes of prompt text per block: 16 tokens at ~4 bytes a token.
pub const BLOCK_BYTES: usize = 64;
/// Tokens a block stands for (vLLM's default block size).
pub const BLOCK_TOKENS: usize = 16;
/// Longest prefix fingerprinted: 1,024 blocks, ~16k tokens.
pub const MAX_BLOCKS: usize = 1024;
/// How far into the first user message the affinity key reaches, in blocks (see
/// [`Fingerprint::affinity`]): far enough to tell documents apart, near enough to lie inside one.
pub const AFFINITY_BLOCK: usize = 32;

/// The fingerprint of one request's prompt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint {
    /// One chained hash per full block, in order.
    pub blocks: Vec<u64>,
    /// Length of the prompt text in bytes (all of it, past the cap too).
    pub bytes: usize,
    /// The block whose hash is the affinity key.
    pub anchor: Option<usize>,
    /// Full blocks before the first user message: a preamble (system prompt, tools) that
    /// conversations share.
    pub preamble_blocks: usize,
}

impl Fingerprint {
    /// The prompt's estimated length in tokens.
    pub fn tokens(&self) -> usize {
        self.bytes.div_ceil(BLOCK_BYTES / BLOCK_TOKENS)
    }

    /// A key every router replica computes alike for the same conversation or document, for
    /// choosing a server when nothing is known about where the prefix is cached: the hash of the
    /// last block that ends within the first user message, or [`AFFINITY_BLOCK`] blocks into
    /// it, whichever comes first. A conversation's later turns resend that message unchanged, so
    /// they share the key (while a system prompt shared by everyone does not decide it); questions
    /// about one long document share it too. Without a user message: [`AFFINITY_BLOCK`] blocks
    /// into the prompt (or its last full block).
    pub fn affinity(&self) -> Option<u64> {
        self.blocks.get(self.anchor_block()?).copied()
    }

    /// Tokens up to the end of the affinity key's block (0 without one).
    pub fn anchor_tokens(&self) -> usize {
        self.anchor_block()
            .filter(|&b| b < self.blocks.len())
            .map_or(0, |b| (b + 1) * BLOCK_TOKENS)
    }

    fn anchor_block(&self) -> Option<usize> {
        let default = AFFINITY_BLOCK.min(self.blocks.len()).checked_sub(1);
        self.anchor.or(default)
    }
}

/// Builds a fingerprint from the prompt's pieces, in order.
pub struct Builder {
    text: Vec<u8>,
    bytes: usize,
    seed: u64,
    anchor: Option<usize>,
    preamble_bytes: usize,
}

impl Builder {
    /// `model` and `salt` seed the chain: the same text for another model or salt shares nothing.
    pub fn new(model: Option<&str>, salt: Option<&str>) -> Builder {
        let mut seed_text = Vec::new();
        seed_text.extend_from_slice(model.unwrap_or("").as_bytes());
        seed_text.push(0);
        seed_text.extend_from_slice(salt.unwrap_or("").as_bytes());
        Builder {
            text: Vec::with_capacity(4096),
            bytes: 0,
            seed: xxh3_64(&seed_text),
            anchor: None,
            preamble_bytes: 0,
        }
    }

    /// Appends the first user message, marking where the affinity key lies (see
    /// [`Fingerprint::affinity`]).
    pub fn push_anchor_message(&mut self, piece: &str) {
        let start = self.bytes;
        self.push_str(piece);
        if self.anchor.is_none() {
            self.preamble_bytes = start;
            let end_blocks = self.bytes / BLOCK_BYTES;
            let limit = start / BLOCK_BYTES + AFFINITY_BLOCK;
            self.anchor = end_blocks.min(limit).min(MAX_BLOCKS).checked_sub(1);
        }
    }

    /// The text pushed so far (up to the cap).
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    /// Whether the first user message was seen.
    pub fn has_anchor(&self) -> bool {
        self.anchor.is_some()
    }

    /// Appends a piece of the prompt.
    pub fn push(&mut self, piece: &[u8]) {
        self.bytes += piece.len();
        let room = (MAX_BLOCKS * BLOCK_BYTES).saturating_sub(self.text.len());
        self.text.extend_from_slice(&piece[..piece.len().min(room)]);
    }

    pub fn push_str(&mut self, piece: &str) {
        self.push(piece.as_bytes());
    }

    /// Token ids, as a tokenizer-free stand-in: 4 bytes each, so a block is 16 of them.
    pub fn push_tokens(&mut self, ids: impl Iterator<Item = u32>) {
        for id in ids {
            self.push(&id.to_le_bytes());
        }
    }

    pub fn finish(self) -> Fingerprint {
        let mut prev = self.seed;
        let blocks: Vec<u64> = self
            .text
            .chunks_exact(BLOCK_BYTES)
            .map(|block| {
                prev = xxh3_64_with_seed(block, prev);
                prev
            })
            .collect();
        Fingerprint {
            blocks,
            bytes: self.bytes,
            anchor: self.anchor,
            preamble_blocks: (self.preamble_bytes / BLOCK_BYTES).min(MAX_BLOCKS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn print(model: &str, salt: Option<&str>, text: &str) -> Fingerprint {
        let mut b = Builder::new(Some(model), salt);
        b.push_str(text);
        b.finish()
    }

    #[test]
    fn shared_prefixes_share_leading_blocks_and_nothing_after() {
        let doc = "word ".repeat(200); // 1,000 bytes: 15 full blocks
        let a = print("m", None, &format!("{doc}first question"));
        let b = print("m", None, &format!("{doc}second, longer question"));
        assert_eq!(a.blocks.len(), 15);
        assert_eq!(b.blocks.len(), 15);
        let common = a.blocks.iter().zip(&b.blocks).take_while(|(x, y)| x == y);
        assert_eq!(common.count(), 15, "the document's blocks match");
        let c = print("m", None, &format!("x{doc}"));
        assert_ne!(a.blocks[0], c.blocks[0], "one byte shifts everything");
        // Chained: equal blocks at the same place after a difference do not match.
        let d = print("m", None, &format!("{}{doc}", "y".repeat(64)));
        assert_ne!(d.blocks[1..], a.blocks[..a.blocks.len() - 1]);
    }

    #[test]
    fn model_and_salt_keep_caches_apart() {
        let text = "z".repeat(640);
        let base = print("m", None, &text);
        assert_ne!(print("lora", None, &text).blocks[0], base.blocks[0]);
        assert_ne!(print("m", Some("s"), &text).blocks[0], base.blocks[0]);
        assert_eq!(print("m", None, &text), base);
    }

    #[test]
    fn long_prompts_are_capped_but_counted() {
        let text = "a".repeat(MAX_BLOCKS * BLOCK_BYTES * 2);
        let f = print("m", None, &text);
        assert_eq!(f.blocks.len(), MAX_BLOCKS);
        assert_eq!(f.bytes, text.len());
        assert_eq!(f.tokens(), text.len() / 4);
    }

    #[test]
    fn the_affinity_key_follows_the_first_user_message() {
        let system = "s".repeat(BLOCK_BYTES * 60);
        let turn = |history: &str| {
            let mut b = Builder::new(Some("m"), None);
            b.push_str(&system);
            b.push_anchor_message(&"u".repeat(300));
            b.push_str(history);
            b.finish()
        };
        let first = turn("\n");
        let later = turn("\nthe answer\nanother question\n");
        assert_eq!(
            first.affinity(),
            later.affinity(),
            "one conversation, one key"
        );
        let mut other = Builder::new(Some("m"), None);
        other.push_str(&system);
        other.push_anchor_message(&"v".repeat(300));
        assert_ne!(
            other.finish().affinity(),
            first.affinity(),
            "not the system prompt's"
        );
        // A long document in the first message: the key lies inside it.
        let doc = "d".repeat(BLOCK_BYTES * 100);
        let ask = |q: &str| {
            let mut b = Builder::new(Some("m"), None);
            b.push_str("answer about the document\n");
            b.push_anchor_message(&format!("{doc}{q}"));
            b.finish()
        };
        assert_eq!(ask("one?").affinity(), ask("two?").affinity());
    }

    #[test]
    fn the_affinity_key_lies_inside_a_shared_document() {
        let doc = "q".repeat(BLOCK_BYTES * 50);
        let a = print("m", None, &format!("{doc}one"));
        let b = print("m", None, &format!("{doc}two"));
        assert_eq!(a.affinity(), b.affinity());
        let short = print("m", None, "short");
        assert_eq!(short.affinity(), None);
        let three = print("m", None, &"q".repeat(BLOCK_BYTES * 3));
        assert_eq!(three.affinity(), Some(three.blocks[2]));
    }
}
