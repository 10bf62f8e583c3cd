//! `causeway sagas`: lists sagas and acts on one (retry, resume, compensate, mark a compensation
//! done) through a running node's API. Safe while the node runs: the node's own saga manager
//! carries each action out, in the same write as its audit record, so nothing races it. (A
//! stopped node is started first; the tool never opens a store.)

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::args::write_line;

/// The flags of `causeway sagas`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node's address.
    #[arg(long, env = "CAUSEWAY_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,
    /// The node's read token, for lists and timelines (when it has one; the admin token reads too).
    #[arg(long, env = "CAUSEWAY_READ_TOKEN", hide_env_values = true, global = true)]
    pub read_token: Option<String>,
    /// The node's admin token, for actions.
    #[arg(long, env = "CAUSEWAY_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub admin_token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: SagasCmd,
}

/// What to do.
#[derive(Debug, clap::Subcommand)]
pub enum SagasCmd {
    /// List sagas, newest first.
    List {
        /// Only this state: running, retrying, compensating, quarantined, failed, completed,
        /// compensated.
        #[arg(long)]
        status: Option<String>,
        /// Only this order's saga.
        #[arg(long)]
        order_id: Option<String>,
        /// Only sagas started at least this many seconds ago.
        #[arg(long)]
        older_than_secs: Option<u64>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// The cursor a previous page printed.
        #[arg(long)]
        after: Option<String>,
    },
    /// One saga's timeline: every step, attempt, compensation and operator action.
    Show {
        /// The order id.
        order_id: String,
    },
    /// Send the step (or compensation) in flight again now, with a fresh budget of attempts.
    Retry(Act),
    /// Take a quarantined saga out of quarantine (its step is sent again).
    Resume(Act),
    /// Abort a running or quarantined saga: undo what was done and cancel the order.
    Compensate(Act),
    /// Record the compensation in flight (or the one a failed saga stopped at) as done by hand
    /// (a refund made outside the system); --reason is required.
    MarkCompensationDone(Act),
}

/// The flags of an action.
#[derive(Debug, clap::Args)]
pub struct Act {
    /// The order id.
    pub order_id: String,
    /// Who acts (recorded in the saga's stream).
    #[arg(long, env = "CAUSEWAY_OPERATOR")]
    pub operator: String,
    /// Why (recorded).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Idempotency key: the same key again is answered "repeated" and does nothing (default: a
    /// fresh one, printed when the action is still pending, to send it again with).
    #[arg(long)]
    pub key: Option<String>,
    /// Act only if the saga is still at this version (as `show` prints it). compensate and
    /// mark-compensation-done need one; without the flag the saga's current version is read
    /// from the node first.
    #[arg(long)]
    pub expected_version: Option<u64>,
}

fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder().timeout(Duration::from_secs(35)).build().context("HTTP client")
}

async fn get(args: &Args, path: &str, query: &[(&str, String)]) -> Result<Value> {
    let url = format!("{}{path}", args.url.trim_end_matches('/'));
    let mut req = client()?.get(&url).query(query);
    if let Some(t) = args.read_token.as_ref().or(args.admin_token.as_ref()) {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.with_context(|| format!("cannot reach {url}"))?;
    answer(resp).await
}

async fn answer(resp: reqwest::Response) -> Result<Value> {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    let message = body["error"]["message"].as_str().unwrap_or("no message").to_owned();
    match body["status"].as_str() {
        Some(state) => bail!("{status}: {message} (the saga is {state})"),
        None => bail!("{status}: {message}"),
    }
}

fn age(ns: &Value) -> String {
    let Some(ns) = ns.as_u64() else { return String::new() };
    let now = event_store::time_to_nanos(time::OffsetDateTime::now_utc());
    let secs = now.saturating_sub(ns) / 1_000_000_000;
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

/// An order id as the routes take it (a UUID), so it cannot reach into another route.
fn order_id(s: &str) -> Result<uuid::Uuid> {
    s.trim().parse().with_context(|| format!("{s:?} is not an order id (a UUID)"))
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// Lists, shows or acts.
pub async fn run(args: Args) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match &args.command {
        SagasCmd::List { status, order_id, older_than_secs, limit, after } => {
            let mut q = vec![("limit", limit.to_string())];
            for (k, v) in [("status", status), ("order_id", order_id), ("after", after)] {
                if let Some(v) = v {
                    q.push((k, v.clone()));
                }
            }
            if let Some(s) = older_than_secs {
                q.push(("older_than_secs", s.to_string()));
            }
            let page = get(&args, "/api/sagas", &q).await?;
            if args.json {
                write_line(&mut out, &page.to_string())?;
                return Ok(ExitCode::SUCCESS);
            }
            let empty = Vec::new();
            let sagas = page["sagas"].as_array().unwrap_or(&empty);
            write_line(
                &mut out,
                &format!(
                    "{:<36}  {:<12}  {:<3}  {:<24}  {:<8}  REASON",
                    "ORDER", "STATUS", "DEF", "IN FLIGHT", "STARTED"
                ),
            )?;
            for s in sagas {
                let line = format!(
                    "{:<36}  {:<12}  {:<3}  {:<24}  {:<8}  {}",
                    text(&s["order_id"]),
                    text(&s["status"]),
                    s["definition"].as_u64().unwrap_or(1),
                    text(&s["current"]),
                    age(&s["started_at_ns"]),
                    text(&s["reason"])
                );
                if !write_line(&mut out, &line)? {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            if let Some(next) = page["next"].as_str() {
                write_line(&mut out, &format!("(more: --after {next})"))?;
            }
            // How many sagas each definition still has to carry to their end.
            let overview = match get(&args, "/api/overview", &[]).await {
                Ok(o) => o,
                Err(e) => {
                    write_line(&mut out, &format!("(sagas per definition not available: {e})"))?;
                    return Ok(ExitCode::SUCCESS);
                }
            };
            let open: Vec<String> = overview["open_by_definition"]
                .as_object()
                .map(|m| m.iter().map(|(d, n)| format!("definition {d}: {n}")).collect())
                .unwrap_or_default();
            write_line(
                &mut out,
                &format!(
                    "not ended, per saga definition: {} (the node asked, {}, starts definition {})",
                    if open.is_empty() { "none".to_owned() } else { open.join(", ") },
                    args.url,
                    overview["definition"].as_u64().unwrap_or(0)
                ),
            )?;
        }
        SagasCmd::Show { order_id: id } => {
            let t = get(&args, &format!("/api/sagas/{}", order_id(id)?), &[]).await?;
            if args.json {
                write_line(&mut out, &t.to_string())?;
                return Ok(ExitCode::SUCCESS);
            }
            let version = t["version"].as_u64().unwrap_or(0);
            write_line(
                &mut out,
                &format!(
                    "saga {} (version {version}, definition {}): {}",
                    text(&t["order_id"]),
                    t["definition"].as_u64().unwrap_or(1),
                    text(&t["status"])
                ),
            )?;
            for (k, v) in [("in flight", &t["current"]), ("reason", &t["reason"])] {
                if let Some(v) = v.as_str() {
                    write_line(&mut out, &format!("{k}: {v}"))?;
                }
            }
            let empty = Vec::new();
            let first = t["steps"][0]["at_ns"].as_u64().unwrap_or(0);
            for s in t["steps"].as_array().unwrap_or(&empty) {
                let at = s["at_ns"].as_u64().unwrap_or(0);
                let line = format!(
                    "{:>9.3}s  {:>6}  {:<22}  {}",
                    at.saturating_sub(first) as f64 / 1e9,
                    s["position"].as_u64().unwrap_or(0),
                    text(&s["event"]),
                    text(&s["detail"])
                );
                if !write_line(&mut out, &line)? {
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        SagasCmd::Retry(a)
        | SagasCmd::Resume(a)
        | SagasCmd::Compensate(a)
        | SagasCmd::MarkCompensationDone(a) => {
            let action = match &args.command {
                SagasCmd::Retry(_) => "retry",
                SagasCmd::Resume(_) => "resume",
                SagasCmd::Compensate(_) => "compensate",
                _ => "mark-compensation-done",
            };
            let Some(token) = &args.admin_token else {
                bail!("actions need the admin token: --admin-token or CAUSEWAY_ADMIN_TOKEN");
            };
            let order = order_id(&a.order_id)?;
            let expected =
                match (a.expected_version, matches!(action, "compensate" | "mark-compensation-done")) {
                    (Some(v), _) => Some(v),
                    (None, true) => {
                        let t = get(&args, &format!("/api/sagas/{order}"), &[]).await?;
                        Some(t["version"].as_u64().context("the saga's version")?)
                    }
                    (None, false) => None,
                };
            let url = format!("{}/api/admin/sagas/{order}/{action}", args.url.trim_end_matches('/'));
            let mut req = client()?.post(&url).bearer_auth(token).json(&serde_json::json!({
                "operator": a.operator,
                "reason": a.reason,
                "expected_version": expected,
            }));
            let key = match &a.key {
                Some(k) => k.clone(),
                None => {
                    let k = uuid::Uuid::now_v7().to_string();
                    // Said before the request goes out, so a lost answer can be asked for again.
                    eprintln!("idempotency key {k} (send it again with --key {k} to learn the outcome)");
                    k
                }
            };
            req = req.header("Idempotency-Key", &key);
            let resp = req.send().await.with_context(|| format!("cannot reach {url}"))?;
            let done = match answer(resp).await {
                Ok(done) => done,
                Err(e) => {
                    eprintln!("refused: {e}");
                    return Ok(ExitCode::from(1));
                }
            };
            if args.json {
                write_line(&mut out, &done.to_string())?;
            } else if done["status"].as_str() == Some("pending") {
                write_line(
                    &mut out,
                    &format!(
                        "{action}: forwarded to the saga pod that owns saga {}, which has not answered yet; \
                         `causeway sagas show {}` shows when it is carried out (to ask again without acting \
                         twice: the same command with --key {key})",
                        a.order_id, a.order_id
                    ),
                )?;
            } else {
                let repeated =
                    if done["repeated"].as_bool() == Some(true) { " (repeated: done before)" } else { "" };
                write_line(
                    &mut out,
                    &format!("{action}: saga {} is now {}{repeated}", a.order_id, text(&done["status"])),
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
