//! Where and why Python's `json.loads` (CPython 3.12, its C scanner) refuses a document.
//!
//! Only the error matters, so this walks the document as `json/decoder.py` and
//! `Modules/_json.c` do and stops at the first place they raise, with their message and their
//! position (a character index, as Python's `str` counts). What it accepts is what they accept,
//! `NaN` and `Infinity` included.

/// Python's `JSONDecodeError`: its message and position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonError {
    pub msg: &'static str,
    pub pos: usize,
}

/// The error Python gives for `body`, or `None` if it reads it.
pub fn python_json_error(body: &[u8]) -> Option<JsonError> {
    let s: Vec<char> = String::from_utf8_lossy(body).chars().collect();
    let p = Parser { s: &s };
    let start = p.ws(0);
    let err = |msg, pos| Some(JsonError { msg, pos });
    if s.first() == Some(&'\u{feff}') {
        return err("Unexpected UTF-8 BOM (decode using utf-8-sig)", 0);
    }
    match p.value(start) {
        Ok(end) => {
            let end = p.ws(end);
            if end != s.len() {
                return err("Extra data", end);
            }
            None
        }
        Err(Fail::NoValue(pos)) => err("Expecting value", pos),
        Err(Fail::Error(e)) => Some(e),
    }
}

enum Fail {
    /// `StopIteration(pos)`: no value starts here ("Expecting value").
    NoValue(usize),
    Error(JsonError),
}

fn fail<T>(msg: &'static str, pos: usize) -> Result<T, Fail> {
    Err(Fail::Error(JsonError { msg, pos }))
}

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

struct Parser<'a> {
    s: &'a [char],
}

impl Parser<'_> {
    fn at(&self, i: usize) -> Option<char> {
        self.s.get(i).copied()
    }

    fn ws(&self, mut i: usize) -> usize {
        while self.at(i).is_some_and(is_ws) {
            i += 1;
        }
        i
    }

    /// `scan_once`: one value starting exactly at `i`; returns where it ends.
    fn value(&self, i: usize) -> Result<usize, Fail> {
        let literal = |word: &str| {
            let w: Vec<char> = word.chars().collect();
            if self.s.get(i..i + w.len()) == Some(&w[..]) {
                Ok(i + w.len())
            } else {
                Err(Fail::NoValue(i))
            }
        };
        match self.at(i) {
            None => Err(Fail::NoValue(i)),
            Some('"') => self.string(i + 1),
            Some('{') => self.object(i + 1),
            Some('[') => self.array(i + 1),
            Some('n') => literal("null"),
            Some('t') => literal("true"),
            Some('f') => literal("false"),
            Some('N') => literal("NaN"),
            Some('I') => literal("Infinity"),
            Some('-') if self.at(i + 1) == Some('I') => literal("-Infinity"),
            Some(_) => self.number(i),
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?`
    fn number(&self, start: usize) -> Result<usize, Fail> {
        let digit = |i: usize| self.at(i).is_some_and(|c| c.is_ascii_digit());
        let mut i = start;
        if self.at(i) == Some('-') {
            i += 1;
        }
        match self.at(i) {
            Some('0') => i += 1,
            Some('1'..='9') => {
                while digit(i) {
                    i += 1;
                }
            }
            _ => return Err(Fail::NoValue(start)),
        }
        if self.at(i) == Some('.') && digit(i + 1) {
            i += 1;
            while digit(i) {
                i += 1;
            }
        }
        if matches!(self.at(i), Some('e' | 'E')) {
            let mut j = i + 1;
            if matches!(self.at(j), Some('+' | '-')) {
                j += 1;
            }
            if digit(j) {
                while digit(j) {
                    j += 1;
                }
                i = j;
            }
        }
        Ok(i)
    }

    /// `scanstring`: the string whose opening quote is at `begin - 1`.
    fn string(&self, begin: usize) -> Result<usize, Fail> {
        let unterminated = || fail("Unterminated string starting at", begin - 1);
        let mut i = begin;
        loop {
            match self.at(i) {
                None => return unterminated(),
                Some('"') => return Ok(i + 1),
                Some('\\') => {
                    let Some(c) = self.at(i + 1) else {
                        return unterminated();
                    };
                    match c {
                        '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't' => i += 2,
                        'u' => {
                            let hex = self.s.get(i + 2..i + 6);
                            if !hex.is_some_and(|h| h.iter().all(char::is_ascii_hexdigit)) {
                                return fail("Invalid \\uXXXX escape", i + 1);
                            }
                            i += 6;
                        }
                        _ => return fail("Invalid \\escape", i),
                    }
                }
                Some(c) if (c as u32) < 0x20 => return fail("Invalid control character at", i),
                Some(_) => i += 1,
            }
        }
    }

    /// `JSONObject`: the object whose `{` is at `end - 1`.
    fn object(&self, mut end: usize) -> Result<usize, Fail> {
        const NAME: &str = "Expecting property name enclosed in double quotes";
        end = self.ws(end);
        match self.at(end) {
            Some('}') => return Ok(end + 1),
            Some('"') => {}
            _ => return fail(NAME, end),
        }
        loop {
            end = self.string(end + 1)?;
            end = self.ws(end);
            if self.at(end) != Some(':') {
                return fail("Expecting ':' delimiter", end);
            }
            end = self.ws(end + 1);
            end = self.value(end).map_err(expecting_value)?;
            end = self.ws(end);
            match self.at(end) {
                Some('}') => return Ok(end + 1),
                Some(',') => {}
                _ => return fail("Expecting ',' delimiter", end),
            }
            end = self.ws(end + 1);
            if self.at(end) != Some('"') {
                return fail(NAME, end);
            }
        }
    }

    /// `JSONArray`: the array whose `[` is at `end - 1`.
    fn array(&self, mut end: usize) -> Result<usize, Fail> {
        end = self.ws(end);
        if self.at(end) == Some(']') {
            return Ok(end + 1);
        }
        loop {
            end = self.value(end).map_err(expecting_value)?;
            end = self.ws(end);
            match self.at(end) {
                Some(']') => return Ok(end + 1),
                Some(',') => {}
                _ => return fail("Expecting ',' delimiter", end),
            }
            end = self.ws(end + 1);
        }
    }
}

/// Inside a container, a missing value is an error at once (not a `StopIteration`).
fn expecting_value(f: Fail) -> Fail {
    match f {
        Fail::NoValue(pos) => Fail::Error(JsonError {
            msg: "Expecting value",
            pos,
        }),
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(body: &str) -> Option<(&'static str, usize)> {
        python_json_error(body.as_bytes()).map(|e| (e.msg, e.pos))
    }

    /// Each answer is what `python3.12 -c 'import json; json.loads(BODY)'` raised.
    #[test]
    fn errors_and_positions_are_pythons() {
        assert_eq!(
            e(r#"{"model": "tiny", "messages": ["#),
            Some(("Expecting value", 31))
        );
        assert_eq!(
            e("{not json"),
            Some(("Expecting property name enclosed in double quotes", 1))
        );
        assert_eq!(e(""), Some(("Expecting value", 0)));
        assert_eq!(e("  "), Some(("Expecting value", 2)));
        assert_eq!(e(r#"{"a" 1}"#), Some(("Expecting ':' delimiter", 5)));
        assert_eq!(
            e(r#"{"a": 1 "b": 2}"#),
            Some(("Expecting ',' delimiter", 8))
        );
        assert_eq!(
            e(r#"{"a": 1,}"#),
            Some(("Expecting property name enclosed in double quotes", 8))
        );
        assert_eq!(e(r#"{"a": }"#), Some(("Expecting value", 6)));
        assert_eq!(e(r#"[1, 2"#), Some(("Expecting ',' delimiter", 5)));
        assert_eq!(e(r#"[1,]"#), Some(("Expecting value", 3)));
        assert_eq!(
            e(r#"{"a": "x"#),
            Some(("Unterminated string starting at", 6))
        );
        assert_eq!(
            e("{\"a\": \"x\ty\"}"),
            Some(("Invalid control character at", 8))
        );
        assert_eq!(e(r#"{"a": "\q"}"#), Some(("Invalid \\escape", 7)));
        assert_eq!(e(r#"{"a": "\u12"}"#), Some(("Invalid \\uXXXX escape", 8)));
        assert_eq!(e(r#"{} x"#), Some(("Extra data", 3)));
        assert_eq!(e(r#"{"a": tru}"#), Some(("Expecting value", 6)));
        assert_eq!(e(r#"{"a": 01}"#), Some(("Expecting ',' delimiter", 7)));
        assert_eq!(
            e(r#"{"é": "ü", "a" 1}"#),
            Some(("Expecting ':' delimiter", 15))
        );
        for ok in [
            r#"{"a": [1, -2.5e-3, NaN, -Infinity, null, true, "\u00e9\n"]}"#,
            " {} ",
            "[]",
        ] {
            assert_eq!(e(ok), None, "{ok}");
        }
    }
}
