//! `causeway serve`: runs the node, every role in one process (embedded, the default) or one
//! role of a distributed deployment; stops gracefully on SIGTERM or Ctrl-C (finishes in-flight
//! work, saves checkpoints).

use std::future::IntoFuture;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use services::http::{self, CommandRoute};
use services::node::{Role, Runtime, RuntimeConfig};

use crate::args::{parse_role, GatewayArgs, KafkaArgs, LimitArgs, Limits, SagaArgs, StoreArgs};

/// The flags of `causeway serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub gateway: GatewayArgs,
    /// Address of the REST API.
    #[arg(long, env = "CAUSEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Bearer token of the admin routes (replay, re-drive), at least 16 characters. Without
    /// one the admin routes are disabled. Prefer the environment variable to the flag.
    #[arg(long, env = "CAUSEWAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Token of the reads that show personal data (the log, the live feed, orders, sagas, dead
    /// letters) and of the console, at least 16 characters; the admin token reads too. Without
    /// one those reads are open. Prefer the environment variable to the flag.
    #[arg(long, env = "CAUSEWAY_READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<String>,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// What this node runs: all (everything in one process, the default) or one role of a
    /// distributed deployment (order, inventory, payment, shipping, saga, query), which needs
    /// Kafka.
    #[arg(long, env = "CAUSEWAY_ROLE", default_value = "all", value_parser = parse_role)]
    pub role: services::node::Role,
    /// Query role: how long a forwarded command waits for its owner's answer before it is
    /// answered 202 Accepted, in ms.
    #[arg(long, env = "CAUSEWAY_FORWARD_WAIT_MS", default_value_t = 5_000)]
    pub forward_wait_ms: u64,
    #[command(flatten)]
    pub saga: SagaArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// `POST /api/saga/order` (the compatibility route): the shipping address of orders that
    /// name none, as JSON ({"line1": .., "city": .., "postal_code": .., "country": "DE"}).
    #[arg(long, env = "CAUSEWAY_DEFAULT_SHIPPING_ADDRESS", value_parser = parse_address)]
    pub default_shipping_address: Option<aggregates::shipping::Address>,
    /// `POST /api/saga/order`: the currency of orders that name none (an ISO 4217 code).
    #[arg(long, env = "CAUSEWAY_DEFAULT_CURRENCY", default_value = "EUR")]
    pub default_currency: String,
    #[command(flatten)]
    pub otlp: crate::telemetry::OtlpArgs,
}

fn parse_address(s: &str) -> Result<aggregates::shipping::Address, String> {
    serde_json::from_str(s).map_err(|e| format!("not a shipping address ({e}): {{\"line1\": \"1 Main St\", \"city\": \"Berlin\", \"postal_code\": \"10115\", \"country\": \"DE\"}}"))
}

/// How `serve` serves HTTP.
#[derive(Debug)]
struct HttpOptions {
    listen: std::net::SocketAddr,
    admin_token: Option<String>,
    read_token: Option<String>,
    forward_wait: Duration,
    limits: Limits,
    compat: http::CompatDefaults,
}

/// Checks the flags, then runs the node until SIGTERM or Ctrl-C.
pub async fn run(args: Args) -> Result<ExitCode> {
    let Args {
        store,
        gateway,
        listen,
        admin_token,
        read_token,
        kafka,
        role,
        forward_wait_ms,
        saga,
        limits,
        default_shipping_address,
        default_currency,
        otlp: _,
    } = args;
    if default_shipping_address.as_ref().is_some_and(|a| !a.is_complete()) {
        bail!("--default-shipping-address needs line1, city, postal_code and a two-letter country code (DE)");
    }
    if default_currency.len() != 3 || !default_currency.bytes().all(|b| b.is_ascii_uppercase()) {
        bail!("--default-currency must be an ISO 4217 code like EUR, got {default_currency:?}");
    }
    let limits = limits.limits()?;
    let kafka = kafka.config()?;
    if role != Role::All && kafka.is_none() {
        bail!(
            "the {} role talks to the other roles through Kafka: pass --kafka-bootstrap or set \
             KAFKA_BOOTSTRAP_SERVERS (or run --role all)",
            role.name()
        );
    }
    let config = RuntimeConfig {
        kafka,
        policy: saga.policy()?,
        admission: limits.admission,
        fraud: services::app::handlers::FraudRules { max_amount_minor: gateway.fraud_limit_minor },
        ..RuntimeConfig::default()
    };
    let http = HttpOptions {
        listen,
        admin_token,
        read_token,
        forward_wait: Duration::from_millis(forward_wait_ms),
        limits,
        compat: http::CompatDefaults {
            currency: Some(default_currency),
            shipping_address: default_shipping_address,
        },
    };
    serve(store, gateway, http, config, role).await
}

async fn serve(
    store: StoreArgs,
    gateway: GatewayArgs,
    http: HttpOptions,
    config: RuntimeConfig,
    role: Role,
) -> Result<ExitCode> {
    let HttpOptions { listen, admin_token, read_token, forward_wait, limits, compat } = http;
    // A forwarded command's answer must be awaited inside the request's time, or the client
    // gets "outcome unknown" for commands that were carried out.
    if limits.http.request_timeout <= forward_wait + Duration::from_secs(1) {
        bail!(
            "--request-timeout-ms ({} ms) must be more than --forward-wait-ms + 1000 ({} ms)",
            limits.http.request_timeout.as_millis(),
            forward_wait.as_millis() + 1000
        );
    }
    for (name, token) in [("admin", &admin_token), ("read", &read_token)] {
        if let Some(t) = token {
            let bad = |c: char| c.is_whitespace() || c.is_control() || c == ';' || c == ',';
            if t.chars().count() < http::MIN_ADMIN_TOKEN || t.chars().any(bad) {
                bail!(
                    "the {name} token must be at least {} characters with no spaces, commas or semicolons",
                    http::MIN_ADMIN_TOKEN
                );
            }
        }
    }
    let gateway = gateway.build()?;
    let store = store.open()?;
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let mirrored = config.kafka.is_some();
    let source = config.kafka.as_ref().map(|k| k.source()).unwrap_or_default();
    let node = Runtime::start_role(store, gateway, config, role)?;
    let (stop_http, mut http_stopped) = tokio::sync::watch::channel(false);
    // Latencies and the group-commit size as histograms with buckets (the dashboard's quantiles
    // come from them; scripts/prometheus-check.sh found the group size's panel empty while it was a
    // summary); other histograms stay summaries.
    const SECONDS: [f64; 15] =
        [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
    const EVENTS: [f64; 12] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];
    use metrics_exporter_prometheus::Matcher;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
        .context("histogram buckets")?
        .set_buckets_for_metric(Matcher::Full("causeway_store_group_events".into()), &EVENTS)
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    services::node::register_metrics();
    let commands = match (role, node.answers()) {
        (Role::All, _) => CommandRoute::Local,
        (Role::Query, Some(answers)) => {
            CommandRoute::Forward { answers: answers.clone(), source, wait: forward_wait }
        }
        (other, _) => CommandRoute::Refuse { role: other.name() },
    };
    let state = http::ApiState {
        store: node.store().clone(),
        models: node.models().clone(),
        ready: node.readiness().clone(),
        metrics: Some(metrics),
        stopping: http_stopped.clone(),
        admin: admin_token.map(|token| http::AdminApi {
            token,
            redrive: node.redriver(),
            act: node.actor(),
            simulator: Some(node.simulator()),
        }),
        commands,
        admission: node.admission().cloned(),
        feeds: http::LiveFeeds::new(limits.feeds),
        limits: limits.http,
        read_token,
        compat,
    };
    let listener = http::BoundedListener::new(listener, limits.connections, limits.idle);
    let server = tokio::spawn(
        axum::serve(listener, http::app(state))
            .with_graceful_shutdown(async move {
                let _ = http_stopped.wait_for(|s| *s).await;
            })
            .into_future(),
    );
    tracing::info!(head = node.store().head(), %listen, role = role.name(), "causeway node running");
    if mirrored {
        tracing::info!("mirroring the log to Kafka");
    }
    let stop = async {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight work");
    };
    let outcome = node.run_until(stop).await;
    let _ = stop_http.send(true);
    server.await.context("the HTTP server task failed")?.context("the HTTP server failed")?;
    outcome?;
    tracing::info!("stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
