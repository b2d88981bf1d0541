//! OpenTelemetry traces: a span per proxied request, exported over OTLP/HTTP (protobuf), with
//! W3C `traceparent` continued from the client and passed on to the server (vLLM continues the
//! trace when started with `--otlp-traces-endpoint`).
//!
//! On when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, off
//! otherwise (and with `OTEL_SDK_DISABLED=true`); the service is `OTEL_SERVICE_NAME` (default
//! `mvllm`), headers `OTEL_EXPORTER_OTLP_HEADERS`. Off, the request path pays one `Option`
//! check: no span, no header parsed, no allocation. On, spans are batched and sent from the
//! SDK's own thread, over the router's one HTTP client stack (hyper over rustls).
//!
//! Attributes (OpenTelemetry's HTTP and GenAI conventions where they have a name):
//! `http.request.method`, `http.route`, `http.response.status_code`, `gen_ai.request.model`,
//! `server.address` (the chosen server's URL), `mvllm.attempts`, `mvllm.ttfb_ms`,
//! `mvllm.outcome`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// Where spans go: an OTLP/HTTP endpoint and the service's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelConfig {
    /// The full traces URL (`.../v1/traces`).
    pub traces_endpoint: String,
    pub service_name: String,
}

impl OtelConfig {
    /// From the standard environment variables; `None` when tracing is not asked for.
    pub fn from_env() -> Option<OtelConfig> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return None;
        }
        let traces_endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
            var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|e| format!("{}/v1/traces", e.trim_end_matches('/')))
        })?;
        Some(OtelConfig {
            traces_endpoint,
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| "mvllm".into()),
        })
    }
}

/// The tracer in force, and its provider (flushed at shutdown).
pub struct Otel {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Otel {
    /// Must be called inside the Tokio runtime the router runs on (exports are sent on it).
    pub fn start(config: &OtelConfig, client: crate::upstream::Client) -> Result<Otel, String> {
        let transport = Transport {
            client,
            runtime: tokio::runtime::Handle::current(),
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(transport)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(config.traces_endpoint.clone())
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("OTLP exporter to {}: {e}", config.traces_endpoint))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("mvllm");
        tracing::info!(endpoint = %config.traces_endpoint, service = %config.service_name, "exporting traces over OTLP/HTTP");
        Ok(Otel { provider, tracer })
    }

    /// Starts a request's span, continuing the client's `traceparent` if it sent one, and sets
    /// `traceparent` (and `tracestate`) in `headers` to the new span, for the server.
    pub fn request_span(
        &self,
        headers: &mut axum::http::HeaderMap,
        method: &str,
        route: &'static str,
    ) -> RequestSpan {
        let propagator = TraceContextPropagator::new();
        let parent = propagator.extract(&HeaderExtractor(headers));
        let span = self
            .tracer
            .span_builder(format!("{method} {route}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method.to_string()),
                KeyValue::new("http.route", route),
            ])
            .start_with_context(&self.tracer, &parent);
        let cx = Context::new().with_remote_span_context(span.span_context().clone());
        propagator.inject_context(&cx, &mut HeaderInjector(headers));
        RequestSpan(span)
    }

    /// Sends what is batched (blocking: call from a blocking thread).
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }

    /// Flushes and stops the exporter (blocking: call from a blocking thread).
    pub fn shutdown(&self) {
        let _ = self.provider.shutdown();
    }
}

/// One request's span, ended with what became of the request.
pub struct RequestSpan(opentelemetry_sdk::trace::Span);

/// What a request's span records at its end.
pub struct Finished<'a> {
    pub status: u16,
    pub model: Option<&'a str>,
    pub server: Option<&'a str>,
    pub attempts: u32,
    pub ttfb: Option<Duration>,
    pub outcome: &'a str,
}

impl RequestSpan {
    pub fn finish(mut self, f: Finished<'_>) {
        let s = &mut self.0;
        s.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(f.status),
        ));
        if let Some(m) = f.model {
            s.set_attribute(KeyValue::new("gen_ai.request.model", m.to_string()));
        }
        if let Some(server) = f.server {
            s.set_attribute(KeyValue::new("server.address", server.to_string()));
        }
        s.set_attribute(KeyValue::new("mvllm.attempts", i64::from(f.attempts)));
        if let Some(t) = f.ttfb {
            s.set_attribute(KeyValue::new("mvllm.ttfb_ms", t.as_secs_f64() * 1e3));
        }
        s.set_attribute(KeyValue::new("mvllm.outcome", f.outcome.to_string()));
        if f.status >= 500 {
            s.set_status(Status::error(f.outcome.to_string()));
        }
        s.end();
    }
}

/// A request's span while the request is in the router's hands: taken by whichever part of the
/// path ends it (the streamed body at its end, or the handler for an answer of the router's own).
#[derive(Default)]
pub struct SpanSlot(parking_lot::Mutex<Option<RequestSpan>>);

impl SpanSlot {
    pub fn new(span: Option<RequestSpan>) -> Self {
        SpanSlot(parking_lot::Mutex::new(span))
    }

    pub fn take(&self) -> Option<RequestSpan> {
        self.0.lock().take()
    }
}

/// The exporter's HTTP client: the router's own, driven on its runtime (the SDK exports from a
/// thread of its own).
#[derive(Clone)]
struct Transport {
    client: crate::upstream::Client,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transport")
    }
}

#[async_trait::async_trait]
impl HttpClient for Transport {
    async fn send_bytes(
        &self,
        request: axum::http::Request<Bytes>,
    ) -> Result<axum::http::Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let request = hyper::Request::from_parts(parts, Full::new(body));
        let client = self.client.clone();
        self.runtime
            .spawn(async move {
                let response = client.request(request).await?;
                let (parts, body) = response.into_parts();
                let body = body.collect().await?.to_bytes();
                Ok::<_, HttpError>(axum::http::Response::from_parts(parts, body))
            })
            .await?
    }
}
