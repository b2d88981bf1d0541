//! What routing needs to know about a request, read from its body without changing a byte:
//! the `model` (JSON field, or multipart form field for audio), whether it streams, the prompt's
//! prefix fingerprint (see [`crate::routing::fingerprint`]), and what ties it to a conversation
//! (`prompt_cache_key`, `user`, `previous_response_id`).

use axum::http::{HeaderMap, header};
use bytes::Bytes;
use serde::Deserialize;
use serde_json_borrow::Value;

use super::errors::ProxyError;
use crate::routing::fingerprint::Fingerprint;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMeta {
    pub model: Option<String>,
    pub stream: bool,
    pub fingerprint: Option<Fingerprint>,
    /// OpenAI's `prompt_cache_key`: the client's own name for what shares a prefix.
    pub prompt_cache_key: Option<String>,
    /// OpenAI's `user`.
    pub user: Option<String>,
    /// `POST /v1/responses` continuing a stored response: it lives on one server.
    pub previous_response_id: Option<String>,
    /// The answer will carry `usage` (not streamed, a stream with
    /// `stream_options.include_usage`, or a responses-API request): worth reading at its end.
    pub reports_usage: bool,
    /// The body is a JSON object (the router can edit it: disaggregated prefill).
    pub json: bool,
    /// `n`, the choices asked for, when above 1.
    pub n: Option<u64>,
    /// The longest answer asked for (`max_tokens`, `max_completion_tokens`, `max_output_tokens`).
    pub max_tokens: Option<u64>,
    /// The body sets vLLM's own `priority`.
    pub has_priority: bool,
    /// The prompt as token ids, when the request gave them (a completion's `prompt: [ids]`):
    /// matched against servers' KV events (see [`crate::fleet::kv_state`]).
    pub prompt_token_ids: Option<Vec<u32>>,
}

impl RequestMeta {
    /// What pins the request to a conversation, strongest first: `prompt_cache_key`, the
    /// session header, `user`.
    pub fn session_key<'a>(&'a self, header: Option<&'a str>) -> Option<&'a str> {
        self.prompt_cache_key
            .as_deref()
            .or(header)
            .or(self.user.as_deref())
            .filter(|k| !k.is_empty())
    }
}

/// `?model=` in the query string: the Python mvllm routed by it when the body named no model
/// (a GET such as `/v1/models/{id}`-style tools, or a body that is not JSON).
pub fn model_in_query(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "model")
        .map(|(_, v)| v.into_owned())
        .filter(|m| !m.is_empty())
}

/// The body's routing fields, borrowed from it (see [`super::prompt`] for why).
#[derive(Deserialize)]
// The borrowed tree deserializes from a body of exactly its own lifetime.
#[serde(bound(deserialize = "'de: 'a, 'a: 'de"))]
struct JsonFields<'a> {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    // Read as they come: their shapes are the server's to check.
    #[serde(default, borrow)]
    messages: Option<Value<'a>>,
    #[serde(default, borrow)]
    prompt: Option<Value<'a>>,
    #[serde(default, borrow)]
    input: Option<Value<'a>>,
    #[serde(default, borrow)]
    instructions: Option<Value<'a>>,
    #[serde(default, borrow)]
    cache_salt: Option<Value<'a>>,
    #[serde(default, borrow)]
    prompt_cache_key: Option<Value<'a>>,
    #[serde(default, borrow)]
    user: Option<Value<'a>>,
    #[serde(default, borrow)]
    previous_response_id: Option<Value<'a>>,
    #[serde(default, borrow)]
    stream_options: Option<Value<'a>>,
    #[serde(default, borrow)]
    n: Option<Value<'a>>,
    #[serde(default, borrow)]
    max_tokens: Option<Value<'a>>,
    #[serde(default, borrow)]
    max_completion_tokens: Option<Value<'a>>,
    #[serde(default, borrow)]
    max_output_tokens: Option<Value<'a>>,
    #[serde(default, borrow)]
    priority: Option<Value<'a>>,
}

fn text(v: Option<Value<'_>>) -> Option<String> {
    match v {
        Some(Value::Str(s)) => Some(s.into_owned()),
        _ => None,
    }
}

/// Reads the routing fields. An empty body has none, except on a generation route, which
/// needs one. A body must be a JSON object or multipart form data; anything else, invalid
/// JSON, or a multipart body without a readable form is the client's error (400) and never
/// reaches a server.
pub async fn read_meta(
    headers: &HeaderMap,
    body: &Bytes,
    generation: bool,
) -> Result<RequestMeta, ProxyError> {
    if body.is_empty() {
        if generation {
            // vLLM's own answer to a generation request without a body.
            return Err(ProxyError::Validation(
                mvllm_validation::Validation::missing_body(),
            ));
        }
        return Ok(RequestMeta::default());
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || mime.ends_with("+json") {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_none() {
            // vLLM's own answer to no body at all.
            return Err(ProxyError::Validation(
                mvllm_validation::Validation::missing_body(),
            ));
        }
        if first != Some(&b'{') {
            return Err(ProxyError::BadRequest(
                "the request body must be a JSON object".into(),
            ));
        }
        let fields: JsonFields = serde_json::from_slice(body).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Data => ProxyError::BadRequest(format!(
                    "invalid request body: {e} (`model` must be a string, `stream` a boolean)"
                )),
                // What vLLM itself answers for it, so that the client cannot tell who did.
                _ => mvllm_validation::Validation::malformed_json(body).map_or_else(
                    || ProxyError::BadRequest(format!("request body is not valid JSON: {e}")),
                    ProxyError::Validation,
                ),
            }
        })?;
        let fingerprint = super::prompt::fingerprint(&super::prompt::PromptFields {
            model: fields.model.as_deref(),
            cache_salt: fields.cache_salt.as_ref().and_then(|v| v.as_str()),
            messages: fields.messages.as_ref(),
            prompt: fields.prompt.as_ref(),
            instructions: fields.instructions.as_ref(),
            input: fields.input.as_ref(),
        });
        let prompt_token_ids = fields.prompt.as_ref().and_then(token_ids);
        let stream = fields.stream.unwrap_or(false);
        let include_usage = fields
            .stream_options
            .as_ref()
            .and_then(|o| o.get("include_usage").as_bool())
            == Some(true);
        return Ok(RequestMeta {
            reports_usage: !stream || include_usage || fields.input.is_some(),
            model: fields.model,
            stream,
            fingerprint,
            prompt_cache_key: text(fields.prompt_cache_key),
            user: text(fields.user),
            previous_response_id: text(fields.previous_response_id),
            json: true,
            n: fields
                .n
                .as_ref()
                .and_then(|n| n.as_u64())
                .filter(|&n| n > 1),
            max_tokens: [
                &fields.max_completion_tokens,
                &fields.max_tokens,
                &fields.max_output_tokens,
            ]
            .into_iter()
            .find_map(|v| v.as_ref().and_then(|v| v.as_u64())),
            has_priority: fields.priority.is_some(),
            prompt_token_ids,
        });
    }
    if mime == "multipart/form-data" {
        let boundary = multer::parse_boundary(ct)
            .map_err(|e| ProxyError::BadRequest(format!("invalid multipart content type: {e}")))?;
        let stream = futures_util::stream::once(std::future::ready(Ok::<Bytes, std::io::Error>(
            body.clone(),
        )));
        let mut form = multer::Multipart::new(stream, boundary);
        let mut meta = RequestMeta::default();
        loop {
            match form.next_field().await {
                Ok(Some(field)) => match field.name() {
                    Some("model") => meta.model = Some(read_text(field).await?),
                    Some("stream") => meta.stream = read_text(field).await?.trim() == "true",
                    _ => {}
                },
                Ok(None) => return Ok(meta),
                Err(e) => {
                    return Err(ProxyError::BadRequest(format!(
                        "invalid multipart body: {e}"
                    )));
                }
            }
        }
    }
    Err(ProxyError::BadRequest(format!(
        "unsupported Content-Type '{ct}': send application/json (or multipart/form-data for audio)"
    )))
}

/// A prompt of token ids (`[1, 2, 3]`, or one such list in a list), as ids.
fn token_ids(prompt: &Value<'_>) -> Option<Vec<u32>> {
    let Value::Array(items) = prompt else {
        return None;
    };
    let items = match items.as_slice() {
        [Value::Array(inner)] => inner,
        _ => items,
    };
    if items.is_empty() {
        return None;
    }
    items
        .iter()
        .map(|v| v.as_u64().and_then(|t| u32::try_from(t).ok()))
        .collect()
}

async fn read_text(field: multer::Field<'_>) -> Result<String, ProxyError> {
    field
        .text()
        .await
        .map_err(|e| ProxyError::BadRequest(format!("invalid multipart field: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        h
    }

    #[test]
    fn reads_model_from_the_query_string_decoded() {
        assert_eq!(
            model_in_query(Some("a=1&model=org%2Fm%201")),
            Some("org/m 1".into())
        );
        assert_eq!(model_in_query(Some("model=")), None);
        assert_eq!(model_in_query(Some("models=x")), None);
        assert_eq!(model_in_query(None), None);
    }

    #[tokio::test]
    async fn reads_model_and_stream_from_json() {
        let m = read_meta(
            &json_headers(),
            &Bytes::from_static(br#"{"stream":true,"messages":[],"model":"m\u0031"}"#),
            true,
        )
        .await
        .unwrap();
        assert_eq!(
            m,
            RequestMeta {
                model: Some("m1".into()),
                stream: true,
                fingerprint: m.fingerprint.clone(),
                json: true,
                ..RequestMeta::default()
            }
        );
        let m = read_meta(&json_headers(), &Bytes::from_static(b"{}"), true)
            .await
            .unwrap();
        assert_eq!(
            m,
            RequestMeta {
                reports_usage: true,
                json: true,
                ..RequestMeta::default()
            },
            "a non-streamed answer carries usage"
        );
        for (body, n) in [(&br#"{"n":3}"#[..], Some(3)), (br#"{"n":1}"#, None)] {
            let m = read_meta(&json_headers(), &Bytes::from_static(body), true)
                .await
                .unwrap();
            assert_eq!(m.n, n, "n is kept when it asks for several choices");
        }
        let m = read_meta(
            &json_headers(),
            &Bytes::from_static(br#"{"stream":true,"stream_options":{"include_usage":true}}"#),
            true,
        )
        .await
        .unwrap();
        assert!(m.reports_usage, "a stream asked for its usage");
    }

    #[tokio::test]
    async fn rejects_invalid_json_and_other_content_types() {
        assert!(matches!(
            read_meta(&json_headers(), &Bytes::from_static(b"{nope"), true).await,
            Err(ProxyError::Validation(_))
        ));
        assert!(matches!(
            read_meta(&json_headers(), &Bytes::from_static(b" "), true).await,
            Err(ProxyError::Validation(_))
        ));
        for body in [&b"[1]"[..], b"[\"m\", true]", b"\"m\"", b"  7"] {
            match read_meta(&json_headers(), &Bytes::from_static(body), true).await {
                Err(ProxyError::BadRequest(m)) => {
                    assert!(!m.contains("struct") && !m.contains("JsonFields"), "{m}")
                }
                other => panic!("{other:?} for {body:?}"),
            }
        }
        // Outside generation routes an empty body has no fields.
        assert_eq!(
            read_meta(&json_headers(), &Bytes::new(), false).await,
            Ok(RequestMeta::default())
        );
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(matches!(
            read_meta(&h, &Bytes::from_static(b"{}"), true).await,
            Err(ProxyError::BadRequest(_))
        ));
    }

    #[tokio::test]
    async fn reads_model_from_a_multipart_form() {
        let body = "--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF....\r\n\
                    --XX\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XX--\r\n";
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "multipart/form-data; boundary=XX".parse().unwrap(),
        );
        let m = read_meta(&h, &Bytes::from(body), true).await.unwrap();
        assert_eq!(m.model.as_deref(), Some("whisper-1"));
    }
}
