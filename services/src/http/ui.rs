//! The web console at `/ui`: one HTML page and its script and style sheet, built into the binary
//! (no CDN, no network at run time, no front-end build). The page renders in the browser from
//! the JSON API the node serves (`/api/overview`, `/api/sagas`, `/api/events`, ...), so every
//! address (`/ui/sagas`, `/ui/sagas/<order id>`, `/ui/streams/<stream id>`, ...) is the same page,
//! which reads its route from the path. Reads go with the console's cookie (set by `/ui/login`
//! when the node has a read token); operators' actions ask for the admin token and send it as a
//! bearer header, so a cookie alone never changes anything.

use super::auth::{grants_read, COOKIE};

use super::ApiState;
use axum::extract::State;
use axum::http::header;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::Form;
use axum::Router;
use event_store::Storage;
use serde::Deserialize;

const INDEX: &str = include_str!("../../ui/index.html");
const SCRIPT: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/app.css");

/// The console's content security policy: everything from this node, nothing inline.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                   connect-src 'self'; frame-ancestors 'none'; form-action 'self'";

fn page(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The console's routes (served by every node).
pub(crate) fn routes<S: Storage>() -> Router<ApiState<S>> {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/login", get(login_form).post(login::<S>))
        .route(
            "/ui/assets/app.js",
            get(|| async { page(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT.into()) }),
        )
        .route(
            "/ui/assets/app.css",
            get(|| async { page(StatusCode::OK, "text/css; charset=utf-8", STYLE.into()) }),
        )
        .route("/ui/{*rest}", get(index))
}

async fn index() -> Response {
    page(StatusCode::OK, "text/html; charset=utf-8", INDEX.into())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Where to go after logging in: a console address only.
fn next_of(path: &str) -> &str {
    if (path == "/ui" || path.starts_with("/ui/")) && !path.starts_with("/ui/login") && !path.contains("//") {
        path
    } else {
        "/ui"
    }
}

/// The login page (also the answer, 401, to a console page asked for without a credential).
pub(crate) fn login_page(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let error =
        error.map(|e| format!("<p class=\"error\" id=\"login-error\">{}</p>", escape(e))).unwrap_or_default();
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Causeway · sign in</title>\
         <link rel=\"stylesheet\" href=\"/ui/assets/app.css\"></head><body class=\"login\"><main>\
         <h1>Causeway</h1><p>This node's reads need its read token (or its admin token).</p>{error}\
         <form method=\"post\" action=\"/ui/login\"><input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label>Token <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\" id=\"sign-in\">Sign in</button></form></main></body></html>",
        escape(next_of(next))
    );
    page(status, "text/html; charset=utf-8", body)
}

async fn login_form() -> Response {
    login_page(StatusCode::OK, "/ui", None)
}

#[derive(Debug, Deserialize)]
struct Login {
    token: String,
    #[serde(default)]
    next: String,
}

async fn login<S: Storage>(
    State(st): State<ApiState<S>>,
    form: Result<Form<Login>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(login)) = form else {
        return login_page(StatusCode::BAD_REQUEST, "/ui", Some("send the token from the form"));
    };
    let next = next_of(&login.next).to_owned();
    if st.read_token.is_none() {
        return redirect(&next, None);
    }
    if !grants_read(&st, &login.token)
        || login.token.chars().any(|c| c.is_control() || c == ';' || c == ',' || c.is_whitespace())
    {
        metrics::counter!("causeway_http_unauthorized_total").increment(1);
        return login_page(StatusCode::UNAUTHORIZED, &next, Some("that token is not this node's"));
    }
    let cookie =
        format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", super::auth::cookie_value(&login.token));
    redirect(&next, Some(cookie))
}

fn redirect(to: &str, cookie: Option<String>) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}
