//! Logging and tracing set-up: text or JSON lines on stderr, filtered by `log.level` or
//! `RUST_LOG`; with `[telemetry] otlp_endpoint`, smsgate's spans also go to an OpenTelemetry
//! collector over OTLP/HTTP (docs/metrics.md, "Traces"). What is logged or exported never
//! carries a code in clear, a full phone number, a secret or the `Authorization` header:
//! bodies go through `redact_digits`, numbers through `masked`.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat, OtlpProtocol, TelemetryConfig};

/// Exports what is left when dropped: keep it until the process ends.
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Tracing {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("traces not all exported at exit: {err}");
        }
    }
}

/// Installs the global subscriber once; later calls (tests) are ignored, and export nothing.
pub fn init(log: &LogConfig, telemetry: &TelemetryConfig) -> Tracing {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: a log file or a collector gets plain text.
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(|| LossyStderr);
    let lines = match log.format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.json().flatten_event(true).boxed(),
    };
    let provider = telemetry.otlp_endpoint.as_deref().and_then(|endpoint| {
        exporter(endpoint, telemetry)
            .map_err(|err| eprintln!("telemetry.otlp_endpoint: no traces exported: {err}"))
            .ok()
    });
    // smsgate's own spans go to the collector, at the levels `log.level` lets through (the
    // default, info, has them all).
    let spans = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("smsgate"))
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.target().starts_with("smsgate")
            }))
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(spans)
        .try_init()
        .is_ok();
    Tracing {
        provider: provider.filter(|_| installed),
    }
}

/// The OTLP/HTTP pipeline: batched, on a thread of its own (a collector that is slow or away
/// costs exported spans, never a request).
fn exporter(
    endpoint: &str,
    telemetry: &TelemetryConfig,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let protocol = match telemetry.otlp_protocol {
        OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
        OtlpProtocol::HttpJson => Protocol::HttpJson,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(traces_url(endpoint))
        .with_timeout(Duration::from_secs(5))
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(telemetry.service_name.clone())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(Counted(exporter))
        .with_resource(resource)
        .build())
}

/// An exporter that counts the batches it failed to deliver: the batch processor reports them
/// only through OpenTelemetry's internal logs, which this build leaves out.
#[derive(Debug)]
struct Counted<E>(E);

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let exported = self.0.export(batch).await;
        if exported.is_err() {
            crate::metrics::TRACE_EXPORT_FAILURES.inc();
        }
        exported
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn shutdown(&self) -> OTelSdkResult {
        self.0.shutdown()
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource);
    }
}

/// OTLP/HTTP's traces path on the collector's base address (kept when it is already there).
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Standard error that drops a line it cannot write. When the reader of a piped stderr goes
/// away (a log shipper that died), tracing-subscriber reports the failed write with
/// `eprintln!`, which panics: every task that logged would die, and the gateway with them.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A lost log line is better than a lost gateway.
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_traces_path_is_added_once() {
        for endpoint in ["http://c:4318", "http://c:4318/", "http://c:4318/v1/traces"] {
            assert_eq!(super::traces_url(endpoint), "http://c:4318/v1/traces");
        }
    }
}
