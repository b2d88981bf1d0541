//! A small tokenizer the tests ship themselves (no model hub here): a Hugging Face
//! `tokenizer.json` of the word-level kind, with `<s>`, `</s>`, `<unk>` and the chat roles as
//! special tokens, and a `tokenizer_config.json` whose chat template is the tiny model's of
//! `real-vllm/make_tiny.py` (`<|role|>\ncontent\n`, then `<|assistant|>\n`) after `<s>`.
//!
//! Words `w0` .. `w{WORDS-1}` have ids `FIRST_WORD + n`.

use std::path::Path;

/// Words in the vocabulary.
pub const WORDS: u32 = 2000;
/// The id of `w0`.
pub const FIRST_WORD: u32 = 7;
pub const BOS: u32 = 0;
/// `<|user|>`, `<|assistant|>`, `<|system|>`.
pub const USER: u32 = 3;
pub const ASSISTANT: u32 = 4;
pub const SYSTEM: u32 = 5;

/// Writes the tokenizer into `dir` (which must exist).
pub fn write_word_tokenizer(dir: &Path) -> std::io::Result<()> {
    let specials = [
        "<s>",
        "</s>",
        "<unk>",
        "<|user|>",
        "<|assistant|>",
        "<|system|>",
        "<pad>",
    ];
    let added: Vec<String> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                r#"{{"id":{i},"content":"{s}","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}}"#
            )
        })
        .collect();
    let mut vocab: Vec<String> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| format!(r#""{s}":{i}"#))
        .collect();
    vocab.extend((0..WORDS).map(|n| format!(r#""w{n}":{}"#, FIRST_WORD + n)));
    let json = format!(
        r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{}],"normalizer":null,"pre_tokenizer":{{"type":"Whitespace"}},"post_processor":null,"decoder":null,"model":{{"type":"WordLevel","vocab":{{{}}},"unk_token":"<unk>"}}}}"#,
        added.join(","),
        vocab.join(",")
    );
    std::fs::write(dir.join("tokenizer.json"), json)?;
    let template = "{{ bos_token }}{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";
    let config = format!(
        r#"{{"bos_token":"<s>","eos_token":"</s>","chat_template":"{}"}}"#,
        template.replace('"', "\\\"")
    );
    std::fs::write(dir.join("tokenizer_config.json"), config)
}

/// The ids of `words` (`"w12 w7"`), as the tokenizer gives them.
pub fn word_ids(words: &str) -> Vec<u32> {
    words
        .split_whitespace()
        .map(|w| FIRST_WORD + w[1..].parse::<u32>().expect("a word wN"))
        .collect()
}
