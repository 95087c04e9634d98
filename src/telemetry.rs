//! Logs and traces. Logs are human-readable on a terminal and JSON when the
//! config asks; `RUST_LOG` overrides the level. Traces, when configured, go
//! to an OpenTelemetry collector over OTLP/gRPC: one span per call (parented
//! to the client's W3C `traceparent`) with child spans per store call.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat, TracingConfig};

/// Flushes buffered spans when dropped (at shutdown).
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("kiln: flushing traces failed: {e}");
        }
    }
}

/// Installs the global subscriber; later calls are ignored (tests start many
/// servers in one process). Must run inside a tokio runtime when tracing is
/// configured (the exporter runs on it).
pub fn init(log: &LogConfig, tracing: Option<&TracingConfig>) -> Telemetry {
    let filter = || {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new(log.level.as_deref().unwrap_or("info")))
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match log.format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).boxed(),
    };
    let mut telemetry = Telemetry::default();
    let otel = tracing.and_then(|t| match exporter(t) {
        Ok(provider) => {
            let tracer = provider.tracer("kiln");
            telemetry.provider = Some(provider);
            // Spans at info and above from kiln, whatever the log level.
            let spans = tracing_subscriber::filter::Targets::new()
                .with_target("kiln", tracing::Level::INFO);
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(spans),
            )
        }
        Err(e) => {
            eprintln!("kiln: traces disabled: {e}");
            None
        }
    });
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter()))
        .with(otel)
        .try_init();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    telemetry
}

fn exporter(config: &TracingConfig) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(&config.otlp_endpoint)
        .build()
        .map_err(|e| format!("OTLP exporter for {}: {e}", config.otlp_endpoint))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
        config.sampling_ratio.clamp(0.0, 1.0),
    )));
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .with_sampler(sampler)
        .build())
}
