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
    let fmt = tracing_subscriber::fmt::layer();
    let fmt = match log.format {
        // serde_json escapes every control character in a string.
        LogFormat::Json => fmt
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .boxed(),
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal();
            fmt.with_writer(Escaping { ansi }).with_ansi(ansi).boxed()
        }
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

/// The text log's writer: each event arrives as one line, and any control
/// character inside it (a newline in a client's build id, a carriage
/// return, an escape sequence) is written escaped, so no client byte can
/// start a log line of its own. Escape sequences pass only when kiln
/// colours its own output for a terminal.
#[derive(Debug, Clone, Copy)]
struct Escaping {
    ansi: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Escaping {
    type Writer = EscapingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        EscapingWriter { ansi: self.ansi }
    }
}

struct EscapingWriter {
    ansi: bool,
}

impl std::io::Write for EscapingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let escaped = escape_line(buf, self.ansi);
        std::io::stderr().write_all(&escaped)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `line` with every control character but a final newline (and tabs, and
/// escapes when `ansi`) written as `\\n`, `\\r`, `\\xHH` or `\\u{HHHH}`: the
/// C0 and C1 controls (NEL among them) and the Unicode line and paragraph
/// separators, which some log viewers also break lines at.
fn escape_line(line: &[u8], ansi: bool) -> Vec<u8> {
    let (body, end) = match line.strip_suffix(b"\n") {
        Some(body) => (body, &b"\n"[..]),
        None => (line, &b""[..]),
    };
    let text = String::from_utf8_lossy(body);
    let mut out = String::with_capacity(line.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push(c),
            '\u{1b}' if ansi => out.push(c),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{{{:04x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    let mut out = out.into_bytes();
    out.extend_from_slice(end);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_client_byte_starts_a_line() {
        let line = b"INFO grpc{tool_invocation_id=a\nINFO forged\r\x1b[31m}: hello\n";
        let out = super::escape_line(line, false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "INFO grpc{tool_invocation_id=a\\nINFO forged\\r\\x1b[31m}: hello\n"
        );
        assert_eq!(super::escape_line(b"plain\n", false), b"plain\n");
        // C1 controls (NEL) and Unicode line separators break lines too.
        let out = super::escape_line("a\u{85}b\u{2028}c\u{2029}d\n".as_bytes(), false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\\u{0085}b\\u{2028}c\\u{2029}d\n"
        );
    }
}
