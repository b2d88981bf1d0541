//! OpenTelemetry over real HTTP: an OTLP/HTTP receiver in the test decodes the protobuf the
//! router exports; a span per request with its attributes, the client's `traceparent`
//! continued, and the server given the router's span as its parent.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mvllm_router::otel::OtelConfig;
use mvllm_sim::SimConfig;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use prost::Message;

/// An OTLP/HTTP receiver: every `POST /v1/traces` body, decoded.
async fn receiver() -> (String, Arc<Mutex<Vec<ExportTraceServiceRequest>>>) {
    let got: Arc<Mutex<Vec<ExportTraceServiceRequest>>> = Arc::default();
    let store = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let store = store.clone();
            async move {
                assert_eq!(headers["content-type"], "application/x-protobuf");
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                store.lock().push(request);
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), got)
}

fn spans(got: &Mutex<Vec<ExportTraceServiceRequest>>) -> Vec<(String, Span)> {
    got.lock()
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.clone());
            let service = match service {
                Some(AnyValue::StringValue(s)) => s,
                _ => String::new(),
            };
            rs.scope_spans
                .iter()
                .flat_map(|ss| ss.spans.clone())
                .map(move |s| (service.clone(), s))
        })
        .collect()
}

fn attr(span: &Span, key: &str) -> Option<AnyValue> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.clone())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn each_request_is_a_span_exported_over_otlp_and_the_trace_continues_to_the_server() {
    let (endpoint, got) = receiver().await;
    let s = sims(1, SimConfig::instant()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = mvllm_router::start_with(mvllm_router::Options {
        config: mvllm_router::Config {
            servers: vec![server_of(&s[0])],
            settings: fast_settings(),
            ..Default::default()
        },
        config_path: None,
        listener,
        admin_listener: None,
        otel: Some(OtelConfig {
            traces_endpoint: format!("{endpoint}/v1/traces"),
            service_name: "router-under-test".into(),
        }),
    })
    .await
    .unwrap();
    let url = format!("{}/v1/chat/completions", r.url());

    // A client that is itself traced: the router's span is its child.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let resp = client()
        .post(&url)
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .json(&chat("traced", 3, true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap();
    let at_server = s[0]
        .last_traceparent()
        .expect("the server got a traceparent");
    // An untraced client's request, and one the router refuses.
    assert_eq!(post(&url, &chat("plain", 2, false)).await.status(), 200);
    let mut unknown = chat("x", 1, false);
    unknown["model"] = serde_json::json!("no-such-model");
    assert_eq!(post(&url, &unknown).await.status(), 404);

    r.flush_traces().await;
    eventually(Duration::from_secs(10), "three spans exported", || async {
        spans(&got).len() >= 3
    })
    .await;
    let all = spans(&got);
    assert!(
        all.iter()
            .all(|(service, _)| service == "router-under-test")
    );
    let traced = all
        .iter()
        .map(|(_, s)| s)
        .find(|s| hex(&s.trace_id) == trace_id)
        .expect("the client's trace continued");
    assert_eq!(hex(&traced.parent_span_id), client_span);
    assert_eq!(traced.name, "POST chat_completions");
    assert_eq!(
        attr(traced, "http.response.status_code"),
        Some(AnyValue::IntValue(200))
    );
    assert_eq!(
        attr(traced, "gen_ai.request.model"),
        Some(AnyValue::StringValue(MODEL.into()))
    );
    assert_eq!(
        attr(traced, "server.address"),
        Some(AnyValue::StringValue(s[0].url()))
    );
    assert_eq!(attr(traced, "mvllm.attempts"), Some(AnyValue::IntValue(1)));
    assert!(matches!(attr(traced, "mvllm.ttfb_ms"), Some(AnyValue::DoubleValue(t)) if t > 0.0));
    assert!(
        traced.end_time_unix_nano >= traced.start_time_unix_nano,
        "ended with the stream"
    );
    // The server continues the same trace under the router's span.
    assert_eq!(
        at_server,
        format!("00-{trace_id}-{}-01", hex(&traced.span_id))
    );

    let refused = all
        .iter()
        .map(|(_, s)| s)
        .find(|s| attr(s, "http.response.status_code") == Some(AnyValue::IntValue(404)))
        .expect("a refused request has its span too");
    assert_eq!(attr(refused, "mvllm.attempts"), Some(AnyValue::IntValue(0)));
    assert!(refused.parent_span_id.is_empty(), "a new trace");
}
