//! The router, built from the OpenAPI document, with the bounds on the `/api` routes; the document itself.

use super::admin::admin_redrive;
use super::admin::admin_replay;
use super::admin::ReadModelName;
use super::commands::add_stock;
use super::commands::cancel_order;
use super::commands::place_order;
use super::error::ApiError;
use super::events::log_events;
use super::events::stream_events;
use super::health::healthz;
use super::health::http_metrics;
use super::health::prometheus;
use super::health::readyz;
use super::live::live_events;
use super::queries::customer_orders;
use super::queries::dead_letters;
use super::queries::get_order;
use super::queries::get_payments;
use super::queries::get_saga;
use super::queries::get_stock;
use super::ApiState;
use super::{admin, commands, compat, events, health, live, queries, sagas, MAX_BODY_BYTES};
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::get;
use axum::routing::post;
use axum::Json;
use axum::Router;
use event_store::Storage;

/// The handler of one documented operation (`None`: the document names an operation this build
/// has no handler for, which the API tests catch).
pub(crate) fn handler<S: Storage>(
    method: &str,
    path: &str,
) -> Option<axum::routing::MethodRouter<ApiState<S>>> {
    Some(match (method, path) {
        ("get", "/healthz") => get(healthz),
        ("get", "/readyz") => get(readyz::<S>),
        ("get", "/metrics") => get(prometheus::<S>),
        ("get", "/api/openapi.json") => get(openapi),
        ("post", "/api/orders") => post(place_order::<S>),
        ("post", "/api/saga/order") => post(super::compat::saga_order::<S>),
        ("get", "/api/orders/{id}") => get(get_order::<S>),
        ("post", "/api/orders/{id}/cancel") => post(cancel_order::<S>),
        ("get", "/api/orders/{id}/payments") => get(get_payments::<S>),
        ("get", "/api/customers/{id}/orders") => get(customer_orders::<S>),
        ("post", "/api/products/{sku}/stock") => post(add_stock::<S>),
        ("get", "/api/products/{sku}/stock") => get(get_stock::<S>),
        ("get", "/api/sagas/{id}") => get(get_saga::<S>),
        ("get", "/api/dead-letters") => get(dead_letters::<S>),
        ("get", "/api/streams/{id}/events") => get(stream_events::<S>),
        ("get", "/api/events") => get(log_events::<S>),
        ("get", "/api/events/by-id/{id}") => get(events::event_by_id::<S>),
        ("get", "/api/events/live") => get(live_events::<S>),
        ("post", "/api/admin/projections/{name}/replay") => post(admin_replay::<S>),
        ("post", "/api/admin/dead-letters/{consumer}/{event_id}/redrive") => post(admin_redrive::<S>),
        ("get", "/api/sagas") => get(sagas::list_sagas::<S>),
        ("get", "/api/overview") => get(sagas::overview::<S>),
        ("post", "/api/admin/sagas/{id}/{action}") => post(sagas::saga_action::<S>),
        ("put", "/api/admin/simulator/gateway") => axum::routing::put(sagas::simulator_gateway::<S>),
        _ => return None,
    })
}

/// The router, built from the OpenAPI document: every operation the document lists is routed to
/// its handler, and nothing else is served (so no route can be served undocumented). Tests call
/// it directly (`tower::ServiceExt::oneshot`).
pub fn app<S: Storage>(state: ApiState<S>) -> Router {
    use utoipa::OpenApi;
    // The `/api` routes are bounded; health, readiness and metrics are not, so probes answer
    // while the node sheds load.
    let (mut api, mut probes) = (Router::new(), Router::new());
    for (path, item) in ApiDoc::openapi().paths.paths {
        let operations = [
            ("get", item.get.is_some()),
            ("post", item.post.is_some()),
            ("put", item.put.is_some()),
            ("delete", item.delete.is_some()),
            ("patch", item.patch.is_some()),
        ];
        let mut methods: Option<axum::routing::MethodRouter<ApiState<S>>> = None;
        for (method, _) in operations.iter().filter(|(_, present)| *present) {
            match handler::<S>(method, &path) {
                Some(h) => {
                    methods = Some(match methods {
                        None => h,
                        Some(m) => m.merge(h),
                    })
                }
                None => tracing::error!(%method, %path, "a documented operation has no handler"),
            }
        }
        if let Some(m) = methods {
            if path.starts_with("/api/") {
                api = api.route(&path, m);
            } else {
                probes = probes.route(&path, m);
            }
        }
    }
    let limits = state.limits;
    let bounded = tower::ServiceBuilder::new()
        .layer(axum::error_handling::HandleErrorLayer::new(shed))
        .load_shed()
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            limits.max_in_flight.clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
        ))
        .timeout(limits.request_timeout);
    let reads = axum::middleware::from_fn_with_state(state.clone(), super::auth::require_read::<S>);
    probes
        .merge(api.layer(bounded))
        .merge(super::ui::routes::<S>())
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(reads)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(super::trace_context::trace_context))
        .layer(axum::middleware::from_fn(http_metrics))
        .with_state(state)
}

/// The answer of a request the bounds stopped: 429 when too many are in flight, 504 when it
/// took too long.
pub(crate) async fn shed(err: tower::BoxError) -> ApiError {
    if err.is::<tower::load_shed::error::Overloaded>() {
        metrics::counter!("causeway_http_rejected_total", "reason" => "in_flight").increment(1);
        ApiError::overloaded("the node serves as many requests as it allows; try again later", 1)
    } else if err.is::<tower::timeout::error::Elapsed>() {
        metrics::counter!("causeway_http_rejected_total", "reason" => "timeout").increment(1);
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the request took longer than the node allows; a command may or may not have been carried out: \
             send it again with the same Idempotency-Key to learn its outcome",
        )
    } else {
        ApiError::internal(err)
    }
}

/// Adds the admin routes' bearer scheme.
pub(crate) struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI 3 document of every route above.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(title = "Causeway", description = "An event-sourced order platform: commands, queries over read models, the event log, and operations."),
    paths(health::healthz, health::readyz, health::prometheus, openapi, commands::place_order, compat::saga_order,
        commands::cancel_order, commands::add_stock, queries::get_order, queries::get_payments,
        queries::customer_orders, queries::get_stock, queries::get_saga, queries::dead_letters,
        events::stream_events, events::log_events, events::event_by_id, live::live_events, admin::admin_replay,
        admin::admin_redrive, sagas::list_sagas, sagas::overview, sagas::saga_action,
        sagas::simulator_gateway),
    components(schemas(ReadModelName)),
    modifiers(&BearerAuth),
    tags((name = "commands"), (name = "queries"), (name = "events"), (name = "admin"), (name = "health"))
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "health", responses((status = 200, description = "OpenAPI 3")))]
pub(crate) async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    use utoipa::OpenApi;
    Json(ApiDoc::openapi())
}
