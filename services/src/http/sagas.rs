//! The sagas as operators see them: lists by state, age and order id, the overview, and the
//! operators' actions (retry, resume, compensate, mark a compensation done), each recorded in the
//! saga's stream.

use super::admin::authorize;
use super::admin::SagaActionRequest;
use super::commands::order_id;
use super::error::ApiError;
use super::error::ApiResult;
use super::error::ErrorBody;
use super::ApiState;
use super::CommandRoute;
use super::MAX_PAGE;
use crate::app::messages;
use crate::app::messages::Answer;
use crate::app::saga::OperatorRequest;
use aggregates::saga::OperatorAction;
use aggregates::saga::SagaState;
use aggregates::OrderId;
use axum::extract::rejection::JsonRejection;
use axum::extract::rejection::PathRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::Json;
use event_store::Storage;
use projections::models::SagaListEntry;
use projections::models::SagaTimelines;
use serde::Deserialize;
use serde::Serialize;
use uuid::Uuid;

/// Query of `GET /api/sagas`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SagasQuery {
    /// Only sagas in this state: running, retrying, compensating, quarantined, failed, completed,
    /// compensated.
    pub status: Option<String>,
    /// Only the saga of this order.
    pub order_id: Option<String>,
    /// Only sagas started at least this many seconds ago.
    pub older_than_secs: Option<u64>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// At most this many (1 to 1000, default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// A page of sagas, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SagasPage {
    pub sagas: Vec<SagaListEntry>,
    /// Pass as `after` for the next page (absent on the last one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

fn state_of(name: &str) -> ApiResult<SagaState> {
    SagaState::from_name(name).filter(|s| *s != SagaState::NotStarted).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown saga status {name:?}; one of running, retrying, compensating, quarantined, failed, \
             completed, compensated"
        ))
    })
}

/// Sagas, newest first: all of them, those in one state, those older than an age, or one order's.
#[utoipa::path(get, path = "/api/sagas", tag = "queries", params(SagasQuery),
    security((), ("bearer" = [])),
    responses((status = 200, body = SagasPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(crate) async fn list_sagas<S: Storage>(
    State(st): State<ApiState<S>>,
    q: Result<Query<SagasQuery>, QueryRejection>,
) -> ApiResult<Json<SagasPage>> {
    let Query(q) = q?;
    let limit = super::queries::page_size(q.limit)?;
    let state = q.status.as_deref().map(state_of).transpose()?;
    if let Some(id) = q.order_id.as_deref() {
        let id = order_id(id)?;
        let one = st
            .models
            .get::<projections::models::SagaTimeline>(SagaTimelines::NAME, &SagaTimelines::key(id))?
            .map(|t| t.list_entry())
            .filter(|t| state.is_none_or(|s| s.name() == t.status));
        return Ok(Json(SagasPage { sagas: one.into_iter().collect(), next: None }));
    }
    let prefix = match state {
        Some(s) => SagaTimelines::by_state_prefix(s),
        None => SagaTimelines::LIST.to_owned(),
    };
    // Older than an age: start the scan at that time's key (newest first, so later keys are older).
    let boundary = q.older_than_secs.map(|secs| {
        let now = event_store::time_to_nanos(time::OffsetDateTime::now_utc());
        let at = now.saturating_sub(secs.saturating_mul(1_000_000_000));
        format!("{prefix}{}", SagaTimelines::inverted(at))
    });
    let after = match (q.after, boundary) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    if let Some(a) = &after {
        if !a.starts_with(&prefix) {
            return Err(ApiError::bad_request("after is not a cursor of this list"));
        }
    }
    let mut sagas: Vec<(String, SagaListEntry)> = st.models.scan(
        SagaTimelines::NAME,
        &prefix,
        after.as_deref(),
        limit.saturating_add(1).min(MAX_PAGE + 1),
    )?;
    let next = if sagas.len() > limit {
        sagas.truncate(limit);
        sagas.last().map(|(k, _)| k.clone())
    } else {
        None
    };
    Ok(Json(SagasPage { sagas: sagas.into_iter().map(|(_, s)| s).collect(), next }))
}

/// A read model's progress.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReadModelLag {
    pub name: String,
    /// The log position it has applied.
    pub checkpoint: u64,
    /// Events of the log it has not applied yet.
    pub lag: u64,
}

/// What the console's overview shows.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Overview {
    /// The log's head position.
    pub head: u64,
    /// Sagas per state (every state listed, zero included).
    pub sagas: std::collections::BTreeMap<String, u64>,
    /// Sagas not ended (running, retrying, compensating, quarantined).
    pub in_flight: u64,
    /// Sagas started (one per order placed).
    pub sagas_started: u64,
    /// Open dead letters (among the first 10,000 letters of the dead-letters read model).
    pub dead_letters_open: u64,
    pub read_models: Vec<ReadModelLag>,
    /// Sagas not ended (neither completed nor compensated: failed and quarantined ones count)
    /// per version of the saga definition that started them.
    pub open_by_definition: std::collections::BTreeMap<String, u64>,
    /// The definition this build starts new sagas with.
    pub definition: u32,
}

/// Dead letters the overview looks at, at most.
const MAX_DEAD_LETTERS_COUNTED: usize = 10_000;

/// Definition versions the overview lists, at most.
const MAX_DEFINITIONS: usize = 1_000;

/// The numbers of the console's overview (rates come from two of them, apart in time).
#[utoipa::path(get, path = "/api/overview", tag = "queries",
    security((), ("bearer" = [])),
    responses((status = 200, body = Overview), (status = 401, body = ErrorBody)))]
pub(crate) async fn overview<S: Storage>(State(st): State<ApiState<S>>) -> ApiResult<Json<Overview>> {
    let mut sagas = std::collections::BTreeMap::new();
    let mut in_flight = 0;
    for s in SagaState::ALL.into_iter().filter(|s| *s != SagaState::NotStarted) {
        let n: u64 = st.models.get(SagaTimelines::NAME, &SagaTimelines::count_key(s))?.unwrap_or(0);
        if matches!(
            s,
            SagaState::Running | SagaState::Retrying | SagaState::Compensating | SagaState::Quarantined
        ) {
            in_flight += n;
        }
        sagas.insert(s.name().to_owned(), n);
    }
    let sagas_started = sagas.values().sum();
    let mut read_models = Vec::new();
    for m in projections::models::ReadModel::ALL {
        let name = m.name();
        let gen = st.models.generation(name)?;
        read_models.push(ReadModelLag {
            name: name.to_owned(),
            checkpoint: st.models.checkpoint(name, gen)?,
            lag: st.models.lag(name)?,
        });
    }
    // From the dead-letters read model, a bounded scan (the console polls this).
    let letters: Vec<(String, projections::models::DeadLetterView)> = st.models.scan(
        projections::models::DeadLetters::NAME,
        &projections::models::DeadLetters::prefix(None),
        None,
        MAX_DEAD_LETTERS_COUNTED,
    )?;
    let dead_letters_open = letters.iter().filter(|(_, l)| !l.resolved).count() as u64;
    let counts: Vec<(String, u64)> =
        st.models.scan(SagaTimelines::NAME, SagaTimelines::OPEN_BY_DEFINITION, None, MAX_DEFINITIONS)?;
    let open_by_definition = counts
        .into_iter()
        .filter_map(|(key, n)| {
            let v = key.rsplit('/').next()?.parse::<u32>().ok()?;
            Some((v.to_string(), n))
        })
        .collect();
    Ok(Json(Overview {
        head: st.store.head(),
        sagas,
        in_flight,
        sagas_started,
        dead_letters_open,
        read_models,
        open_by_definition,
        definition: aggregates::saga::DEFINITION,
    }))
}

/// `POST /api/admin/sagas/{id}/{action}` body.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SagaActionBody {
    /// Who acts (an e-mail or a name; recorded in the saga's stream).
    pub operator: String,
    /// Why (required to mark a compensation done).
    #[serde(default)]
    pub reason: String,
    /// Carry it out only if the saga's stream is at this version (the `version` of
    /// `GET /api/sagas/{id}` the operator looked at); otherwise 409 with the saga's status and
    /// version. Required for `compensate` and `mark-compensation-done`.
    #[serde(default)]
    pub expected_version: Option<u64>,
}

/// The outcome of an operator's action.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SagaActionDone {
    pub order_id: Uuid,
    pub action: String,
    /// The action's id (its idempotency key).
    pub action_id: Uuid,
    /// The saga's state after it; `pending` when the saga pod has not answered in time (202,
    /// on a query node: the action is on its way and is carried out once).
    pub status: String,
    /// The saga stream's version after it (absent when pending).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The same action (same key) was carried out before; nothing was done now.
    pub repeated: bool,
}

/// Longest operator name and reason.
const MAX_OPERATOR: usize = 200;
const MAX_REASON: usize = 2000;

/// An operator's action on one saga, carried out by the node that runs its saga manager and
/// recorded in the saga's stream (`OperatorActed`: who, why, when) in the same write as its effects.
/// `Idempotency-Key` (any string) makes it safe to send again: a repeat answers `repeated: true`.
/// A query node forwards the action through Kafka to the saga pod that owns the order and waits
/// for its answer (202 `pending` when it does not come in time).
#[utoipa::path(post, path = "/api/admin/sagas/{id}/{action}", tag = "admin",
    params(("id" = Uuid, Path, description = "the order id"),
        ("action" = String, Path, description = "retry, resume, compensate or mark-compensation-done"),
        ("Idempotency-Key" = Option<String>, Header, description = "makes the action safe to repeat")),
    request_body(content = SagaActionBody),
    security(("bearer" = [])),
    responses((status = 200, body = SagaActionDone),
        (status = 202, description = "forwarded to the saga pod that owns the order, which has not answered yet (query node): status pending", body = SagaActionDone),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the saga's state does not allow it, or it is not at expected_version (the body's status and version say where it is), or the Idempotency-Key was used with another body, or this node neither runs the saga manager nor forwards", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 503, description = "the store is busy; try again (Retry-After)", body = ErrorBody)))]
pub(crate) async fn saga_action<S: Storage>(
    State(st): State<ApiState<S>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<SagaActionBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<SagaActionDone>)> {
    let admin = authorize(&st, &headers)?;
    let Path((id, action_name)) = path?;
    let order = order_id(&id)?;
    let action = OperatorAction::from_name(&action_name).ok_or_else(|| {
        ApiError::not_found(format!(
            "no saga action {action_name:?}; one of retry, resume, compensate, mark-compensation-done"
        ))
    })?;
    let Json(body) = body?;
    let operator = body.operator.trim().to_owned();
    if operator.is_empty()
        || operator.chars().count() > MAX_OPERATOR
        || operator.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(format!(
            "operator must be 1 to {MAX_OPERATOR} printable characters"
        )));
    }
    let reason = body.reason.trim().to_owned();
    if reason.chars().count() > MAX_REASON {
        return Err(ApiError::bad_request(format!("reason must be at most {MAX_REASON} characters")));
    }
    if action == OperatorAction::MarkCompensationDone && reason.is_empty() {
        // Checked here too, so that a query node refuses it before forwarding it.
        return Err(ApiError::bad_request(
            "mark-compensation-done needs a reason: what was done by hand (a refund made outside the system, say)",
        ));
    }
    let destructive = matches!(action, OperatorAction::Compensate | OperatorAction::MarkCompensationDone);
    if destructive && body.expected_version.is_none() {
        return Err(ApiError::bad_request(format!(
            "{} needs expected_version: the saga's version you looked at (GET /api/sagas/{order})",
            action.name()
        )));
    }
    let action_id = match headers.get("idempotency-key") {
        Some(v) => {
            let key =
                v.to_str().map_err(|_| ApiError::bad_request("Idempotency-Key must be printable ASCII"))?;
            if key.is_empty() || key.len() > 200 {
                return Err(ApiError::bad_request("Idempotency-Key must be 1 to 200 characters"));
            }
            // One key names one action on one saga.
            Uuid::new_v5(&order.0, format!("operator/{}/{key}", action.name()).as_bytes())
        }
        None => Uuid::now_v7(),
    };
    super::trace_context::record_order(order.0);
    tracing::info!(%order, action = action.name(), %operator, "operator action on a saga");
    let request = crate::app::saga::OperatorRequest {
        action,
        action_id,
        operator,
        reason,
        expected_version: body.expected_version,
    };
    let (code, status, version, repeated) = if let CommandRoute::Forward { .. } = &st.commands {
        match forward_action(&st, order, &request, &super::trace_context::of_headers(&headers)).await? {
            Some((status, version, repeated)) => (StatusCode::OK, status, Some(version), repeated),
            None => (StatusCode::ACCEPTED, "pending".to_owned(), None, false),
        }
    } else {
        let done = (admin.act)(SagaActionRequest { order, request }).await?;
        (StatusCode::OK, done.state.name().to_owned(), Some(done.version), done.repeated)
    };
    Ok((
        code,
        Json(SagaActionDone {
            order_id: order.0,
            action: action.name().to_owned(),
            action_id,
            status,
            version,
            repeated,
        }),
    ))
}

/// Forwards an operator's action to the saga pod that owns the order (the query role): appends it
/// to `saga_commands-<order>`, which the relay publishes keyed by the order like the order's other
/// streams, then waits for the pod's answer. `None`: not answered in time.
async fn forward_action<S: Storage>(
    st: &ApiState<S>,
    order: OrderId,
    request: &OperatorRequest,
    trace: &crate::app::trace::TraceContext,
) -> ApiResult<Option<(String, u64, bool)>> {
    let CommandRoute::Forward { answers, source, wait } = &st.commands else {
        return Err(ApiError::internal("forward_action called on a node that does not forward"));
    };
    let action = messages::SagaAction {
        order_id: order,
        action: request.action.name().to_owned(),
        action_id: request.action_id,
        operator: request.operator.clone(),
        reason: request.reason.clone(),
        expected_version: request.expected_version,
    };
    let event = action.to_event(Some(trace));
    let event_id = event.event_id;
    let stream = messages::saga_commands_stream(order);
    st.store.append_to(&stream, event_store::ExpectedVersion::Any, vec![event]).await?;
    match answers.wait(&st.store, messages::answer_id(event_id, source), *wait).await? {
        None => Ok(None),
        Some(Answer::Acted { status, version, repeated }) => Ok(Some((status, version, repeated))),
        Some(Answer::Conflict { reason, status, version }) => {
            let mut e = ApiError::new(StatusCode::CONFLICT, "conflict", reason);
            if let Some(status) = status {
                e = e.with("status", serde_json::Value::String(status));
            }
            if let Some(version) = version {
                e = e.with("version", serde_json::Value::from(version));
            }
            Err(e)
        }
        Some(Answer::Invalid { reason }) => Err(ApiError::bad_request(reason)),
        Some(Answer::NotFound { reason }) => Err(ApiError::not_found(reason)),
        Some(other) => {
            Err(ApiError::internal(format!("the saga pod answered {other:?} to an operator's action")))
        }
    }
}

/// `PUT /api/admin/simulator/gateway` body: the simulated payment gateway's behaviour.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulatorGateway {
    /// Fraction of calls that fail (transiently), 0 to 1.
    pub failure_rate: f64,
    /// Fraction of calls declined, 0 to 1.
    #[serde(default)]
    pub decline_rate: f64,
    /// Amounts above this (minor units) are declined (default: the simulator's card limit,
    /// 1000000; `null` for none).
    #[serde(default = "card_limit")]
    pub decline_above: Option<u64>,
    /// Latency of each call, in ms (at most 10000).
    #[serde(default)]
    pub latency_ms: u64,
}

fn card_limit() -> Option<u64> {
    crate::app::gateway::SimulatedGatewayConfig::default().decline_above
}

/// Reconfigures the node's simulated payment gateway (drills: an outage, then its end).
#[utoipa::path(put, path = "/api/admin/simulator/gateway", tag = "admin",
    request_body(content = SimulatorGateway), security(("bearer" = [])),
    responses((status = 200, body = SimulatorGateway), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "this node does not simulate its gateway", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
pub(crate) async fn simulator_gateway<S: Storage>(
    State(st): State<ApiState<S>>,
    headers: HeaderMap,
    body: Result<Json<SimulatorGateway>, JsonRejection>,
) -> ApiResult<Json<SimulatorGateway>> {
    let admin = authorize(&st, &headers)?;
    let Json(g) = body?;
    let rate = |r: f64| (0.0..=1.0).contains(&r);
    if !rate(g.failure_rate) || !rate(g.decline_rate) || g.latency_ms > 10_000 {
        return Err(ApiError::bad_request("rates are between 0 and 1, latency_ms at most 10000"));
    }
    let Some(reconfigure) = &admin.simulator else {
        return Err(ApiError::not_found("this node does not simulate its payment gateway"));
    };
    reconfigure(crate::app::gateway::SimulatedGatewayConfig {
        latency: std::time::Duration::from_millis(g.latency_ms),
        failure_rate: g.failure_rate,
        decline_above: g.decline_above,
        decline_rate: g.decline_rate,
    });
    tracing::warn!(
        failure_rate = g.failure_rate,
        decline_rate = g.decline_rate,
        "simulated gateway reconfigured"
    );
    Ok(Json(g))
}
