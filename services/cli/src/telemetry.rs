//! Logging and span export: log lines to stderr (`RUST_LOG`), and, when `serve` is given an
//! OTLP endpoint, the node's spans to an OpenTelemetry collector over OTLP/HTTP (protobuf or
//! JSON). Off by default.
//!
//! The exporter never holds the node up: spans go into a bounded queue that a thread of the
//! OpenTelemetry SDK sends in batches, with a timeout per export; when the collector is down or
//! slow the queue fills and further spans are dropped (the SDK says so in the log), and the node
//! goes on. At exit what is queued is sent, for at most [`SHUTDOWN_WAIT`].

use std::time::Duration;

use anyhow::{bail, Context, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The most spans waiting for export; past it new spans are dropped.
pub const MAX_QUEUED_SPANS: usize = 8_192;
/// The most spans in one export request.
const MAX_EXPORT_BATCH: usize = 512;
/// How long one export may take before it is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the exit waits for the last spans to be sent.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

/// The flags of span export (`causeway serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct OtlpArgs {
    /// Send the node's spans to an OpenTelemetry collector over OTLP/HTTP at this base URL
    /// (`/v1/traces` is added unless given), e.g. `http://otel-collector:4318`. Plain HTTP: put
    /// the collector (or an agent) on the node's network. Off when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The OTLP encoding: http/protobuf or http/json.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "http/protobuf",
        value_parser = ["http/protobuf", "http/json"])]
    pub otlp_protocol: String,
}

/// Who the spans are from (the resource of every span).
#[derive(Debug, Clone)]
pub struct Origin {
    /// The node's id (`service.instance.id`).
    pub node_id: String,
    /// Its role (`causeway.role`).
    pub role: &'static str,
}

/// The traces endpoint of a base URL.
fn traces_url(base: &str) -> Result<String> {
    let base = base.trim();
    if base.starts_with("https://") {
        bail!("--otlp-endpoint {base}: this build exports over plain HTTP (http://...); run the collector or an agent next to the node");
    }
    if !base.starts_with("http://") || base.len() <= "http://".len() {
        bail!("--otlp-endpoint {base}: not an http:// URL (e.g. http://otel-collector:4318)");
    }
    let base = base.trim_end_matches('/');
    Ok(if base.ends_with("/v1/traces") { base.to_owned() } else { format!("{base}/v1/traces") })
}

fn provider(args: &OtlpArgs, endpoint: &str, origin: &Origin) -> Result<SdkTracerProvider> {
    let protocol = match args.otlp_protocol.as_str() {
        "http/json" => Protocol::HttpJson,
        _ => Protocol::HttpBinary,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .with_protocol(protocol)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .context("setting up the OTLP exporter")?;
    let batches = BatchConfigBuilder::default()
        .with_max_queue_size(MAX_QUEUED_SPANS)
        .with_max_export_batch_size(MAX_EXPORT_BATCH)
        .build();
    let resource = Resource::builder()
        .with_service_name("causeway")
        .with_attributes([
            KeyValue::new("service.instance.id", origin.node_id.clone()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("causeway.role", origin.role),
        ])
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batches).build())
        .with_resource(resource)
        .build())
}

/// Sets up logging, and span export when `otlp` names an endpoint. The provider it returns must
/// be shut down at exit ([`shutdown`]) so the last spans are sent.
pub fn init(otlp: Option<(&OtlpArgs, Origin)>) -> Result<Option<SdkTracerProvider>> {
    let exported = match otlp {
        Some((args, origin)) => match &args.otlp_endpoint {
            Some(base) if !base.trim().is_empty() => {
                let endpoint = traces_url(base)?;
                Some((provider(args, &endpoint, &origin)?, format!("{endpoint} ({})", args.otlp_protocol)))
            }
            _ => None,
        },
        None => None,
    };
    // One filter for both the log lines and the spans (per-layer filters leave a decision made
    // for a log record that was never written in force for the next span on the thread, which
    // then goes missing from its trace). The node's spans have the target `spans`: off under
    // the default filter, on at info when they are exported whatever `RUST_LOG` says of other
    // targets (and wherever `RUST_LOG` lets info through for every target, as the log lines'
    // context). The exporter's HTTP client is not traced unless `RUST_LOG` names it.
    const DEFAULT: &str = "warn,causeway=info,services=info";
    let given = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    // A RUST_LOG that is not a filter is said once on stderr and the default used, as before
    // (a log setting should not keep a node from starting).
    let mut filter = match given.as_deref().map(EnvFilter::try_new) {
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            eprintln!("warning: RUST_LOG is not a log filter ({e}); logging with {DEFAULT}");
            EnvFilter::new(DEFAULT)
        }
        None => EnvFilter::new(DEFAULT),
    };
    if exported.is_some() {
        for (target, directive) in
            [("spans", "spans=info"), ("hyper", "hyper=warn"), ("reqwest", "reqwest=warn")]
        {
            let named = given
                .as_deref()
                .is_some_and(|v| v.split(',').any(|d| d.trim().split(['=', '[']).next() == Some(target)));
            if !named {
                filter = filter.add_directive(directive.parse().context("a span filter")?);
            }
        }
    }
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let spans =
        exported.as_ref().map(|(p, _)| tracing_opentelemetry::layer().with_tracer(p.tracer("causeway")));
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(spans)
        .try_init()
        .context("setting up logging")?;
    if let Some((_, endpoint)) = &exported {
        tracing::info!(%endpoint, "exporting spans over OTLP");
    }
    Ok(exported.map(|(p, _)| p))
}

/// Sends what is queued and stops the exporter (waiting at most [`SHUTDOWN_WAIT`]).
pub fn shutdown(provider: Option<SdkTracerProvider>) {
    if let Some(p) = provider {
        if let Err(e) = p.shutdown_with_timeout(SHUTDOWN_WAIT) {
            tracing::warn!(error = %e, "the last spans may not have reached the collector");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_a_plain_http_base_url_or_the_traces_url() {
        assert_eq!(traces_url("http://c:4318").expect("ok"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/").expect("ok"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/v1/traces").expect("ok"), "http://c:4318/v1/traces");
        for bad in ["https://c:4318", "c:4318", "http://", "ftp://c"] {
            assert!(traces_url(bad).is_err(), "{bad}");
        }
    }
}
