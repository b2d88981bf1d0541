//! Deterministic stand-in for a real tokenizer and a real model's output.
//!
//! Why: routing by prefix, counting tokens and simulating prefill cost all need token ids that are
//! stable for the same text, and tests need output text that is reproducible. No real vocabulary
//! is needed for that, so the rules are simple and documented in the README:
//!
//! - Text is cut into *pieces*: a run of ASCII letters/digits (with at most one leading space) is
//!   cut every [`MAX_PIECE_CHARS`] characters; any other character (punctuation, newline, a space
//!   not followed by a letter, any non-ASCII character) is a piece of its own.
//! - A piece's id is `xxh3(piece) mod VOCAB_SIZE`, shifted past the special tokens.
//! - Chat prompts use a Llama-3-like template: `<bos>`, then per message
//!   `<start_header> role <end_header> "\n\n" content <eot>`, then the assistant header.
//! - Output tokens are drawn from [`OUTPUT_WORDS`] by a hash of (seed, prompt, position), so the
//!   same prompt with the same seed always yields the same text, and retokenizing the output gives
//!   back the same ids (each output word is exactly one piece), which keeps multi-turn prefix
//!   caching realistic.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Vocabulary size (Llama 3's).
pub const VOCAB_SIZE: u32 = 128_256;
/// Longest run of word characters in one piece.
pub const MAX_PIECE_CHARS: usize = 4;

pub const BOS: u32 = 0;
pub const START_HEADER: u32 = 1;
pub const END_HEADER: u32 = 2;
pub const EOT: u32 = 3;
const NUM_SPECIAL: u32 = 4;
const SPECIAL_STRS: [&str; NUM_SPECIAL as usize] = [
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
];

/// Words the simulated model writes. Each is one piece, so it tokenizes to one id.
pub const OUTPUT_WORDS: &[&str] = &[
    " the", " a", " of", " and", " to", " in", " is", " it", " that", " for", " on", " with",
    " as", " this", " by", " be", " are", " was", " from", " or", " an", " at", " not", " can",
    " will", " we", " you", " they", " have", " has", " more", " one", " two", " each", " some",
    " all", " data", " load", " node", " fast", " slow", " GPU", " time", " work", " text",
    " task", " plan", " step", " set", " list", " test", " run", " path", " part", " form",
    " kind", " long", " over", " down", " next", " best", " much", " many", " well", " also",
    " then", " here", " just", " only", " very", " when", " what", " how", " why", " may", " must",
    ",", ",", ".", ".", ".",
];

/// Cuts text into pieces (see the module doc).
pub fn pieces(text: &str) -> impl Iterator<Item = &str> {
    PieceIter { rest: text }
}

struct PieceIter<'a> {
    rest: &'a str,
}

impl<'a> Iterator for PieceIter<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        let bytes = self.rest.as_bytes();
        if bytes.is_empty() {
            return None;
        }
        let is_word = |b: u8| b.is_ascii_alphanumeric();
        let start_word = if bytes[0] == b' ' { 1 } else { 0 };
        let mut end = start_word;
        while end < bytes.len() && end - start_word < MAX_PIECE_CHARS && is_word(bytes[end]) {
            end += 1;
        }
        if end == start_word {
            // Not a word piece: one character (UTF-8 aware).
            end = self.rest.chars().next().map_or(1, char::len_utf8);
        }
        let (piece, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(piece)
    }
}

/// The id of one piece.
pub fn piece_id(piece: &str) -> u32 {
    NUM_SPECIAL + (xxh3_64(piece.as_bytes()) % u64::from(VOCAB_SIZE - NUM_SPECIAL)) as u32
}

/// Token ids of plain text (no special tokens).
pub fn encode(text: &str, out: &mut Vec<u32>) {
    out.extend(pieces(text).map(piece_id));
}

/// Token ids of a completion prompt: `<bos>` then the text, when `add_special_tokens`.
pub fn encode_prompt(text: &str, add_special_tokens: bool) -> Vec<u32> {
    let mut out = Vec::with_capacity(text.len() / 3 + 1);
    if add_special_tokens {
        out.push(BOS);
    }
    encode(text, &mut out);
    out
}

/// One chat message, already flattened to text.
pub struct ChatTurn<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

/// Token ids of a chat conversation under the Llama-3-like template, ending with the assistant
/// header when `add_generation_prompt`.
pub fn encode_chat(turns: &[ChatTurn<'_>], add_generation_prompt: bool) -> Vec<u32> {
    let mut out =
        Vec::with_capacity(8 + turns.iter().map(|t| t.content.len() / 3 + 6).sum::<usize>());
    out.push(BOS);
    for turn in turns {
        push_header(&mut out, turn.role);
        encode(turn.content, &mut out);
        out.push(EOT);
    }
    if add_generation_prompt {
        push_header(&mut out, "assistant");
    }
    out
}

fn push_header(out: &mut Vec<u32>, role: &str) {
    out.push(START_HEADER);
    encode(role, out);
    out.push(END_HEADER);
    encode("\n\n", out);
}

/// The text of one id: special tokens by name, output words by their text, anything else as
/// `<id>` (ids of arbitrary text are hashes and cannot be inverted).
pub fn decode_one(id: u32) -> String {
    if id < NUM_SPECIAL {
        return SPECIAL_STRS[id as usize].to_string();
    }
    match output_word_of(id) {
        Some(w) => w.to_string(),
        None => format!("<{id}>"),
    }
}

fn output_word_of(id: u32) -> Option<&'static str> {
    OUTPUT_WORDS.iter().copied().find(|w| piece_id(w) == id)
}

/// Decodes a list of ids into text.
pub fn decode(ids: &[u32]) -> String {
    ids.iter().map(|&id| decode_one(id)).collect()
}

/// Hash of a whole prompt, the root of its output sequence.
pub fn prompt_fingerprint(seed: u64, prompt: &[u32]) -> u64 {
    let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
    for chunk in prompt.chunks(1024) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|t| t.to_le_bytes()).collect();
        h = xxh3_64_with_seed(&bytes, h);
    }
    h
}

/// Index into [`OUTPUT_WORDS`] of output token `i` for a prompt with this fingerprint.
pub fn output_word_index(fingerprint: u64, i: usize) -> usize {
    (xxh3_64_with_seed(&(i as u64).to_le_bytes(), fingerprint) % OUTPUT_WORDS.len() as u64) as usize
}

/// The length the simulated model "wants" to write before it emits end-of-sequence: a
/// deterministic value in 16..=512 drawn from the prompt's fingerprint.
pub fn natural_output_len(fingerprint: u64) -> usize {
    16 + (xxh3_64_with_seed(b"len", fingerprint) % 497) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cut_words_at_four_chars_and_keep_punctuation_alone() {
        let p: Vec<&str> = pieces("Hello, wonderful world!\n").collect();
        assert_eq!(
            p,
            vec![
                "Hell", "o", ",", " wond", "erfu", "l", " worl", "d", "!", "\n"
            ]
        );
    }

    #[test]
    fn same_text_same_ids_and_output_words_are_single_pieces() {
        let mut a = Vec::new();
        encode("the quick brown fox", &mut a);
        let mut b = Vec::new();
        encode("the quick brown fox", &mut b);
        assert_eq!(a, b);
        for w in OUTPUT_WORDS {
            assert_eq!(pieces(w).count(), 1, "{w:?} must be one piece");
            assert_eq!(decode_one(piece_id(w)), *w);
        }
    }

    #[test]
    fn chat_template_counts_headers_and_generation_prompt() {
        let ids = encode_chat(
            &[ChatTurn {
                role: "user",
                content: "hi",
            }],
            true,
        );
        // bos, [hdr user /hdr \n \n] hi eot, [hdr assi stan t /hdr \n \n]
        assert_eq!(ids[0], BOS);
        assert_eq!(*ids.last().unwrap(), piece_id("\n"));
        assert_eq!(ids.len(), 1 + (1 + 1 + 1 + 2) + 1 + 1 + (1 + 3 + 1 + 2));
    }

    #[test]
    fn natural_length_in_range_and_seed_matters() {
        for s in 0..100 {
            let n = natural_output_len(prompt_fingerprint(s, &[5, 6, 7]));
            assert!((16..=512).contains(&n));
        }
        assert_ne!(prompt_fingerprint(1, &[5]), prompt_fingerprint(2, &[5]));
    }
}
