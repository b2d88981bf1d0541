//! vLLM's request-validation errors, word for word, for a body it could not read.
//!
//! Why: a client of the router must get the same 400 for the same bad body whichever answers
//! it, the router or a server, and a client of the simulator the one a real vLLM gives. vLLM's
//! OpenAI front is FastAPI: it reads a body with Python's `json.loads` and reports a failure as
//! a pydantic-style error list, which vLLM 0.32 words as
//! `1 validation error:\n  {'type': 'json_invalid', 'loc': 'body.31', 'msg': 'JSON decode
//! error', 'input': '<dict of 0 items>', 'ctx': {'error': 'Expecting value'}}` with `type` "Bad
//! Request" and `param` the location (captured from vLLM 0.32, `../shared/real-vllm/capture`).
//! [`python_json_error`] finds the message and position Python's decoder (3.12) gives; the
//! router and the simulator share this crate so that neither depends on the other.

mod python_json;

pub use python_json::{JsonError, python_json_error};

/// The `type` vLLM gives a request-validation error (FastAPI's `RequestValidationError`).
pub const VALIDATION_ERROR_TYPE: &str = "Bad Request";

/// One request-validation error as vLLM reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    /// `json_invalid` or `missing`.
    pub kind: &'static str,
    /// Where: `body`, `body.31` (a JSON error's character position), `body.messages`.
    pub loc: String,
    pub msg: &'static str,
    /// How pydantic shows the input: `'None'`, `'<dict of 2 items>'`.
    pub input: String,
    /// The decoder's own words, for `json_invalid`.
    pub ctx_error: Option<&'static str>,
}

impl Validation {
    /// The error for a body that is not valid JSON, or `None` when Python would read it.
    pub fn malformed_json(body: &[u8]) -> Option<Validation> {
        let e = python_json_error(body)?;
        Some(Validation {
            kind: "json_invalid",
            loc: format!("body.{}", e.pos),
            msg: "JSON decode error",
            input: "'<dict of 0 items>'".into(),
            ctx_error: Some(e.msg),
        })
    }

    /// A required field absent from a JSON object of `items` keys.
    pub fn missing(field: &str, items: usize) -> Validation {
        Validation {
            kind: "missing",
            loc: format!("body.{field}"),
            msg: "Field required",
            input: format!("'<dict of {items} items>'"),
            ctx_error: None,
        }
    }

    /// No body at all where one is required.
    pub fn missing_body() -> Validation {
        Validation {
            kind: "missing",
            loc: "body".into(),
            msg: "Field required",
            input: "'None'".into(),
            ctx_error: None,
        }
    }

    /// The `message` of vLLM's error body.
    pub fn message(&self) -> String {
        let ctx = self
            .ctx_error
            .map(|e| format!(", 'ctx': {{'error': '{e}'}}"))
            .unwrap_or_default();
        format!(
            "1 validation error:\n  {{'type': '{}', 'loc': '{}', 'msg': '{}', 'input': {}{ctx}}}",
            self.kind, self.loc, self.msg, self.input
        )
    }

    /// The `param` of vLLM's error body: the location.
    pub fn param(&self) -> &str {
        &self.loc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bodies vLLM 0.32 answered, from `../shared/real-vllm/capture/err_*.txt`.
    #[test]
    fn the_messages_are_vllms_to_the_character() {
        let v = Validation::malformed_json(br#"{"model": "tiny", "messages": ["#).unwrap();
        assert_eq!(
            v.message(),
            "1 validation error:\n  {'type': 'json_invalid', 'loc': 'body.31', 'msg': 'JSON decode error', 'input': '<dict of 0 items>', 'ctx': {'error': 'Expecting value'}}"
        );
        assert_eq!(v.param(), "body.31");
        let v = Validation::malformed_json(b"{not json").unwrap();
        assert_eq!(
            v.message(),
            "1 validation error:\n  {'type': 'json_invalid', 'loc': 'body.1', 'msg': 'JSON decode error', 'input': '<dict of 0 items>', 'ctx': {'error': 'Expecting property name enclosed in double quotes'}}"
        );
        let v = Validation::missing("messages", 1);
        assert_eq!(
            v.message(),
            "1 validation error:\n  {'type': 'missing', 'loc': 'body.messages', 'msg': 'Field required', 'input': '<dict of 1 items>'}"
        );
        assert_eq!(v.param(), "body.messages");
        let v = Validation::missing_body();
        assert_eq!(
            v.message(),
            "1 validation error:\n  {'type': 'missing', 'loc': 'body', 'msg': 'Field required', 'input': 'None'}"
        );
        assert_eq!(
            Validation::malformed_json(br#"{"a": [1, 2.5e3, "x\n"]}"#),
            None
        );
    }
}
