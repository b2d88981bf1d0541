//! The request-body reader: JSON and multipart bodies, read for `model` and `stream` only.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (kind, body) = data.split_first().map_or((0, &[][..]), |(k, b)| (*k, b));
    let mut headers = http::HeaderMap::new();
    let ct = match kind % 3 {
        0 => "application/json",
        1 => "multipart/form-data; boundary=XyZ",
        _ => "text/plain",
    };
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(ct));
    let body = bytes::Bytes::copy_from_slice(body);
    let _ = futures_executor::block_on(mvllm_router::proxy::meta::read_meta(&headers, &body, true));
});
