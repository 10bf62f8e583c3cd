//! Who may read: with a read token configured (`--read-token`, `CAUSEWAY_READ_TOKEN`), the reads
//! that show personal data (the log, a stream, the live feed, orders, a customer's orders, sagas,
//! dead letters, the overview) and the console answer 401 without a credential: the read token
//! or the admin token as `Authorization: Bearer`, or the console's cookie (set by `/ui/login`: a
//! digest of the token, never the token itself).
//! Health, readiness, metrics, stock levels, the OpenAPI document, commands (which carry their
//! own idempotency and admission) and the console's login page and static assets stay open.

use super::error::ApiError;
use super::ApiState;
use axum::extract::Request;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use event_store::Storage;

/// The console's cookie.
pub(crate) const COOKIE: &str = "causeway_read";

/// Equal, in time independent of where the first difference is.
pub(crate) fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a request needs the read credential.
fn protected(method: &Method, path: &str) -> bool {
    if path == "/ui/login" || path.starts_with("/ui/assets/") {
        return false;
    }
    if path == "/ui" || path.starts_with("/ui/") {
        return true;
    }
    let reads = [
        "/api/events",
        "/api/streams/",
        "/api/orders/",
        "/api/customers/",
        "/api/sagas",
        "/api/dead-letters",
        "/api/overview",
    ];
    (method == Method::GET || method == Method::HEAD) && reads.iter().any(|p| path.starts_with(p))
}

/// Whether `token` is one that grants reads on this node.
pub(crate) fn grants_read<S: Storage>(st: &ApiState<S>, token: &str) -> bool {
    let read = st.read_token.as_deref().is_some_and(|t| same(token, t));
    let admin = st.admin.as_ref().is_some_and(|a| same(token, &a.token));
    read || admin
}

/// The console's cookie value for a token: a digest of it, so the cookie is not the token (an
/// admin token used to sign in never travels in a cookie) and only ever grants reads.
pub(crate) fn cookie_value(token: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("causeway-console-read/{token}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a console cookie value grants reads on this node.
fn cookie_grants_read<S: Storage>(st: &ApiState<S>, value: &str) -> bool {
    let read = st.read_token.as_deref().is_some_and(|t| same(value, &cookie_value(t)));
    let admin = st.admin.as_ref().is_some_and(|a| same(value, &cookie_value(&a.token)));
    read || admin
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn cookies(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE).and_then(|rest| rest.strip_prefix('=')))
}

/// The middleware: lets a protected read through only with a credential.
pub(crate) async fn require_read<S: Storage>(
    State(st): State<ApiState<S>>,
    req: Request,
    next: Next,
) -> Response {
    if st.read_token.is_none() || !protected(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let headers = req.headers();
    if bearer(headers).is_some_and(|t| grants_read(&st, t))
        || cookies(headers).any(|c| cookie_grants_read(&st, c))
    {
        return next.run(req).await;
    }
    metrics::counter!("causeway_http_unauthorized_total").increment(1);
    if req.uri().path().starts_with("/ui") {
        return super::ui::login_page(axum::http::StatusCode::UNAUTHORIZED, req.uri().path(), None);
    }
    ApiError::new(
        axum::http::StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this read needs Authorization: Bearer <read token> (or the admin token)",
    )
    .into_response()
}
