//! The words a simulated answer is written in, each one token: the built-in list with the
//! simulator's own tokenizer, or plain words of the model's vocabulary with `--tokenizer DIR`.
//!
//! Why words that are one token each, and that read back as themselves: a chat's next turn
//! resends the previous answer as text. vLLM caches the answer's blocks under the ids it
//! generated, and a router matching the next prompt re-tokenizes the text; the two agree only if
//! the answer's text tokenizes back to the ids that wrote it.

use mvllm_tokenizer::ModelTokenizer;

use crate::tokenizer::{OUTPUT_WORDS, piece_id};

/// Most words taken from a model's vocabulary (an answer indexes them with a `u8`).
const MAX_WORDS: usize = 64;
/// How far into the vocabulary words are looked for (the first ids are the common ones).
const SEARCH_IDS: u32 = 20_000;

#[derive(Debug, Clone)]
pub struct OutputWords {
    /// Each word's token id.
    ids: Vec<u32>,
    /// Each word's text as it follows the previous one (with its leading space, if any).
    pieces: Vec<String>,
}

impl OutputWords {
    /// The built-in words, tokenized by the simulator's own tokenizer.
    pub fn builtin() -> Self {
        OutputWords {
            ids: OUTPUT_WORDS.iter().map(|w| piece_id(w)).collect(),
            pieces: OUTPUT_WORDS.iter().map(|w| w.to_string()).collect(),
        }
    }

    /// Plain words of `t`'s vocabulary that are one token each and read back as that token
    /// after another word.
    pub fn from_tokenizer(t: &ModelTokenizer) -> Result<Self, String> {
        let mut words: Vec<(u32, String)> = Vec::new();
        for id in 0..t.vocab_size().min(SEARCH_IDS) {
            if words.len() == MAX_WORDS {
                break;
            }
            if t.is_special(id) {
                continue;
            }
            let Ok(text) = t.decode(&[id]) else { continue };
            let word = text.trim();
            if !word.chars().all(char::is_alphanumeric) || !word.chars().any(char::is_alphabetic) {
                continue;
            }
            words.push((id, text));
        }
        if words.len() < 2 {
            return Err("the tokenizer's vocabulary has no plain words to write answers in".into());
        }
        // What goes between two words once decoded: nothing (byte-level BPE keeps the space in
        // the token) or a space (word-level vocabularies).
        let (a, b) = (&words[0], &words[1]);
        let both = t.decode(&[a.0, b.0]).map_err(|e| e.to_string())?;
        let joiner = if both == format!("{}{}", a.1, b.1) {
            ""
        } else {
            " "
        };
        let mut out = OutputWords {
            ids: Vec::new(),
            pieces: Vec::new(),
        };
        for (id, text) in words {
            let piece = format!("{joiner}{text}");
            // After another word, its text must tokenize back to it alone.
            if t.encode_plain(&piece).ok().as_deref() == Some(&[id][..]) {
                out.ids.push(id);
                out.pieces.push(piece);
            }
        }
        if out.ids.len() < 2 {
            return Err("the tokenizer's words do not read back as themselves".into());
        }
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Word `i`'s token id.
    pub fn id(&self, i: usize) -> u32 {
        self.ids[i]
    }

    /// Word `i`'s text after another word.
    pub fn piece(&self, i: usize) -> &str {
        &self.pieces[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vocabularys_words_read_back_as_the_ids_that_wrote_them() {
        let dir = tempfile::tempdir().unwrap();
        mvllm_testkit::tokenizer::write_word_tokenizer(dir.path()).unwrap();
        let t = ModelTokenizer::load(dir.path()).unwrap();
        let w = OutputWords::from_tokenizer(&t).unwrap();
        assert!(w.len() >= 2);
        let ids: Vec<u32> = (0..w.len()).map(|i| w.id(i)).collect();
        let text: String = (0..w.len()).map(|i| w.piece(i)).collect();
        assert_eq!(t.encode_plain(&text).unwrap(), ids);
        assert!(ids.iter().all(|&id| !t.is_special(id)));
    }
}
