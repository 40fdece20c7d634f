//! Logging and tracing. Logs go to stderr through `tracing`: human-readable by default, JSON
//! lines when `SAGA_LOG_FORMAT=json`, the level from `RUST_LOG` (default `info`). When an OTLP
//! endpoint is configured by the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), spans are exported over OTLP/HTTP (protobuf) and the
//! W3C trace context is propagated; without one, tracing stays off at no cost.
//!
//! The orchestrator records a span per step attempt *when the attempt ends*, on any replica,
//! with the span id that the attempt's command carried in its `traceparent`, so that a worker's
//! span is the child of the attempt it served. [`record_span`] does that through an id
//! generator that hands out the chosen span id.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Whether spans are exported: without an exporter, code that builds spans only for tracing
/// skips them (their fields would only be formatted for nothing).
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process exports spans.
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

thread_local! {
    static NEXT_SPAN_ID: Cell<Option<SpanId>> = const { Cell::new(None) };
}

/// Random ids, except when [`record_span`] asks for a given span id.
#[derive(Debug, Default)]
struct SagaIds(RandomIdGenerator);

impl IdGenerator for SagaIds {
    fn new_trace_id(&self) -> TraceId {
        self.0.new_trace_id()
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_SPAN_ID
            .with(Cell::take)
            .unwrap_or_else(|| self.0.new_span_id())
    }
}

/// The process's tracing; flush or shut it down before exiting.
#[must_use = "dropping it does not flush the spans; call shutdown"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports every span ended so far (blocking; call from `spawn_blocking` in async code).
    pub fn flush(&self) {
        let flushed = self.provider.as_ref().map(SdkTracerProvider::force_flush);
        if let Some(Err(error)) = flushed {
            tracing::warn!(%error, "flushing spans failed");
        }
    }

    /// Flushes and stops the exporter.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

/// Installs logging (and tracing when OTLP is configured) for `service`, writing logs to
/// stderr. Later calls (tests) install nothing.
pub fn init(service: &'static str) -> Telemetry {
    init_with_writer(service, std::io::stderr, None)
}

/// Like [`init`], with logs written to `writer`, and spans exported to `otlp_traces_endpoint`
/// (a URL ending in `/v1/traces`) when one is given instead of the environment's.
pub fn init_with_writer<W>(
    service: &'static str,
    writer: W,
    otlp_traces_endpoint: Option<String>,
) -> Telemetry
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,async_nats=warn"));
    let json = std::env::var("SAGA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let provider = if otlp_traces_endpoint.is_some() || otlp_configured() {
        build_provider(service, otlp_traces_endpoint)
    } else {
        None
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = if json {
        fmt.json().flatten_event(true).boxed_layer()
    } else {
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed_layer()
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    if installed && provider.is_some() {
        EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(service, "tracing exported over OTLP/HTTP");
    }
    Telemetry {
        provider: provider.filter(|_| installed),
    }
}

trait BoxedLayer<S> {
    fn boxed_layer(self) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>;
}

impl<S, L> BoxedLayer<S> for L
where
    L: tracing_subscriber::Layer<S> + Send + Sync + 'static,
    S: tracing::Subscriber,
{
    fn boxed_layer(self) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync> {
        Box::new(self)
    }
}

fn build_provider(service: &'static str, endpoint: Option<String>) -> Option<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig as _;
    // The exporter's HTTP client uses rustls without a built-in provider (one TLS provider for
    // the whole build, see ECOSYSTEM.md): install ring before building it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    let builder = match endpoint {
        Some(endpoint) => builder.with_endpoint(endpoint),
        None => builder,
    };
    let exporter = match builder.build() {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("OTLP exporter not started: {error}");
            return None;
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(SagaIds::default())
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());
    Some(provider)
}

/// The trace context of `headers` (`traceparent`, `tracestate`), for a consumer to continue.
pub fn extract(headers: &BTreeMap<String, String>) -> Context {
    let carrier: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    TraceContextPropagator::new().extract(&carrier)
}

/// A W3C `traceparent` header value.
pub fn traceparent(trace_id: &str, span_id: u64) -> String {
    format!("00-{trace_id}-{span_id:016x}-01")
}

/// A span that already ended, recorded with the given ids.
#[derive(Clone, Debug)]
pub struct FinishedSpan {
    /// Its name.
    pub name: String,
    /// The trace id (32 hex digits).
    pub trace_id: String,
    /// Its parent's span id.
    pub parent_span_id: u64,
    /// Its own span id.
    pub span_id: u64,
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Its attributes.
    pub attributes: Vec<KeyValue>,
    /// Its error, if it failed.
    pub error: Option<String>,
}

/// Exports `span` (nothing happens when tracing is off).
pub fn record_span(span: FinishedSpan) {
    if !exporting() {
        return;
    }
    let Ok(trace_id) = TraceId::from_hex(&span.trace_id) else {
        return;
    };
    let parent = SpanContext::new(
        trace_id,
        SpanId::from(span.parent_span_id),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let context = Context::new().with_remote_span_context(parent);
    let tracer = global::tracer("saga");
    let builder = tracer
        .span_builder(span.name)
        .with_kind(SpanKind::Internal)
        .with_start_time(span.start)
        .with_attributes(span.attributes);
    NEXT_SPAN_ID.with(|next| next.set(Some(SpanId::from(span.span_id))));
    let mut recorded = tracer.build_with_context(builder, &context);
    NEXT_SPAN_ID.with(Cell::take);
    if let Some(error) = span.error {
        opentelemetry::trace::Span::set_status(&mut recorded, Status::error(error));
    }
    opentelemetry::trace::Span::end_with_timestamp(&mut recorded, span.end);
}
