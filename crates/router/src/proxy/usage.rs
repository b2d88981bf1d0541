//! The prefix-cache hit a server reports for one request: `usage.prompt_tokens_details.
//! cached_tokens` (chat and completions) or `usage.input_tokens_details.cached_tokens`
//! (responses), read from the end of the response as it passes through.
//!
//! Why from the end, by search: vLLM writes `usage` after the choices in a JSON body, and in the
//! last data event of a stream (with `stream_options.include_usage`), so the last kilobytes hold
//! it. Keeping a small tail while the body streams and searching it once at the end costs a
//! copy of each chunk's last bytes and no JSON parse of bodies that can be megabytes. This is
//! how the router measures the real hit rate next to its index's prediction (see
//! [`crate::fleet::prefix_index::Calibration`]).

use std::sync::LazyLock;

use memchr::memmem::FinderRev;

// Searchers built once: building one costs more than searching 2 KiB with it.
static CACHED: LazyLock<FinderRev<'static>> =
    LazyLock::new(|| FinderRev::new(b"\"cached_tokens\":"));
static PROMPT: LazyLock<FinderRev<'static>> =
    LazyLock::new(|| FinderRev::new(b"\"prompt_tokens\":"));
static INPUT: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(b"\"input_tokens\":"));
static COMPLETION: LazyLock<FinderRev<'static>> =
    LazyLock::new(|| FinderRev::new(b"\"completion_tokens\":"));
static OUTPUT: LazyLock<FinderRev<'static>> =
    LazyLock::new(|| FinderRev::new(b"\"output_tokens\":"));

/// How much of the response's end is kept: the usage object with room for what follows it.
pub const TAIL_BYTES: usize = 2048;

/// What a server said about one request's prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    /// The answer's length (`completion_tokens`, or `output_tokens` for responses).
    pub completion_tokens: Option<u64>,
}

/// The last [`TAIL_BYTES`] of a response body.
#[derive(Debug, Default)]
pub struct Tail {
    bytes: Vec<u8>,
}

impl Tail {
    pub fn push(&mut self, data: &[u8]) {
        if data.len() >= TAIL_BYTES {
            self.bytes.clear();
            self.bytes
                .extend_from_slice(&data[data.len() - TAIL_BYTES..]);
            return;
        }
        self.bytes.extend_from_slice(data);
        if self.bytes.len() > 2 * TAIL_BYTES {
            self.bytes.drain(..self.bytes.len() - TAIL_BYTES);
        }
    }

    /// The usage the body ended with, if it reported cached tokens.
    pub fn usage(&self) -> Option<Usage> {
        let text = &self.bytes;
        let cached = last_number(text, &CACHED)?;
        let prompt = last_number(text, &PROMPT).or_else(|| last_number(text, &INPUT))?;
        (prompt > 0 && cached <= prompt).then(|| Usage {
            prompt_tokens: prompt,
            cached_tokens: cached,
            completion_tokens: last_number(text, &COMPLETION)
                .or_else(|| last_number(text, &OUTPUT)),
        })
    }
}

impl Tail {
    /// The tokens the answer reports spending, prompt and completion (`usage.total_tokens`'s
    /// parts), whether or not it reports cached tokens.
    pub fn spent(&self) -> Option<u64> {
        let text = &self.bytes;
        let prompt = last_number(text, &PROMPT).or_else(|| last_number(text, &INPUT))?;
        let completion = last_number(text, &COMPLETION)
            .or_else(|| last_number(text, &OUTPUT))
            .unwrap_or(0);
        Some(prompt + completion)
    }
}

/// The number after the last occurrence of `key` (JSON whitespace allowed after the colon).
/// Runs at every answered request's end: a vectorised reverse search and digits read in place
/// (the byte-window search and a collected `Vec` cost ~7,000 instructions a request).
fn last_number(text: &[u8], key: &FinderRev<'_>) -> Option<u64> {
    let at = key.rfind(text)? + key.needle().len();
    let mut digits = text[at..]
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take_while(|b| b.is_ascii_digit())
        .peekable();
    digits.peek()?;
    digits.try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_of(chunks: &[&str]) -> Tail {
        let mut t = Tail::default();
        for c in chunks {
            t.push(c.as_bytes());
        }
        t
    }

    #[test]
    fn numbers_are_read_in_place_and_nonsense_is_none() {
        let n = memchr::memmem::FinderRev::new(b"\"n\":");
        assert_eq!(last_number(b"\"n\": 12,\"n\":34}", &n), Some(34));
        assert_eq!(last_number(b"\"n\": null", &n), None);
        assert_eq!(last_number(b"\"n\":99999999999999999999999", &n), None);
        assert_eq!(last_number(b"nothing", &n), None);
    }

    #[test]
    fn reads_a_json_bodys_usage() {
        let body = r#"{"id":"x","choices":[{"message":{"content":"cached_tokens"}}],"usage":{"prompt_tokens":1200,"total_tokens":1210,"completion_tokens":10,"prompt_tokens_details":{"cached_tokens":1024}},"kv_transfer_params":null}"#;
        let u = tail_of(&[&body[..40], &body[40..]]).usage();
        assert_eq!(
            u,
            Some(Usage {
                prompt_tokens: 1200,
                cached_tokens: 1024,
                completion_tokens: Some(10),
            })
        );
    }

    #[test]
    fn reads_a_streams_last_usage_and_the_responses_api_names() {
        let stream = [
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\": 300,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\": 288}}}\n\n",
            "data: [DONE]\n\n",
        ];
        let u = tail_of(&stream).usage().unwrap();
        assert_eq!((u.cached_tokens, u.completion_tokens), (288, Some(2)));
        let responses = r#"{"usage":{"input_tokens":50,"input_tokens_details":{"cached_tokens":32},"output_tokens":4}}"#;
        assert_eq!(
            tail_of(&[responses]).usage(),
            Some(Usage {
                prompt_tokens: 50,
                cached_tokens: 32,
                completion_tokens: Some(4),
            })
        );
    }

    #[test]
    fn no_details_no_usage_and_the_tail_stays_bounded() {
        let body = r#"{"usage":{"prompt_tokens":14,"prompt_tokens_details":null}}"#;
        assert_eq!(tail_of(&[body]).usage(), None);
        let mut t = Tail::default();
        let filler = "x".repeat(700);
        for _ in 0..100 {
            t.push(filler.as_bytes());
            assert!(t.bytes.len() <= 2 * TAIL_BYTES);
        }
        t.push(br#","usage":{"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":20}}"#);
        assert_eq!(t.usage(), None, "more cached than prompted is not believed");
    }
}
