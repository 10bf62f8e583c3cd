// The Causeway console: renders each /ui address from the node's JSON API. No framework, no
// build step; everything it loads comes from this node.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);

// A short stable digest of a text (FNV-1a, 32 bits), for idempotency keys.
function digest(text) {
  let x = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    x ^= text.charCodeAt(i);
    x = Math.imul(x, 0x01000193) >>> 0;
  }
  return x.toString(16);
}
const main = () => $("#main");

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function toast(text, error = false) {
  const m = h("div", { class: error ? "msg error" : "msg" }, text);
  $("#toast").append(m);
  setTimeout(() => m.remove(), error ? 9000 : 4000);
}

function adminToken() { return sessionStorage.getItem("causeway.admin") || ""; }
function operatorName() { return localStorage.getItem("causeway.operator") || ""; }

async function api(path, options = {}) {
  const resp = await fetch(path, { credentials: "same-origin", ...options });
  const text = await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = { raw: text }; }
  if (resp.status === 401 && !options.admin) { location.href = "/ui/login"; throw new Error("sign in"); }
  if (!resp.ok) {
    const msg = body && body.error ? body.error.message : `${resp.status} ${resp.statusText}`;
    const err = new Error(msg);
    err.status = resp.status;
    err.body = body;
    throw err;
  }
  return body;
}

async function admin(path, body, idempotencyKey) {
  const token = adminToken();
  if (!token) throw new Error("enter the admin token (Operator, at the top) first");
  const headers = { "Content-Type": "application/json", Authorization: `Bearer ${token}` };
  if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
  return api(path, { method: "POST", headers, body: JSON.stringify(body || {}), admin: true });
}

const ns = (n) => (n ? new Date(Number(n) / 1e6) : null);
function fmtTime(n) {
  const d = ns(n);
  return d ? d.toISOString().replace("T", " ").replace("Z", "") : "";
}
function fmtDur(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "";
  if (ms < 1) return "<1 ms";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(2)} s`;
  return `${(ms / 60000).toFixed(1)} min`;
}
function age(n) {
  const d = ns(n);
  return d ? fmtDur(Date.now() - d.getTime()) + " ago" : "";
}
const status = (s) => h("span", { class: `status ${s}`, "data-status": s }, s);
const sagaLink = (id) => h("a", { href: `/ui/sagas/${id}`, class: "mono" }, id);
const streamLink = (id) => h("a", { href: `/ui/streams/${encodeURIComponent(id)}`, class: "mono" }, id);

// ----- pages -----

let overviewTimer = null;
async function overviewPage() {
  const root = main();
  root.replaceChildren(h("h1", {}, "Overview"), h("div", { id: "overview" }, h("p", { class: "muted" }, "Loading…")));
  let prev = null;
  const draw = async () => {
    let o, metrics = "";
    try {
      o = await api("/api/overview");
      metrics = await fetch("/metrics").then((r) => (r.ok ? r.text() : "")).catch(() => "");
    } catch (e) { toast(e.message, true); return; }
    const now = Date.now();
    const ended = (x) => (x.sagas.completed || 0) + (x.sagas.compensated || 0) + (x.sagas.failed || 0);
    let started = "–", finished = "–";
    if (prev) {
      const dt = (now - prev.at) / 1000;
      started = ((o.sagas_started - prev.o.sagas_started) / dt).toFixed(1);
      finished = ((ended(o) - ended(prev.o)) / dt).toFixed(1);
    }
    prev = { at: now, o };
    const relay = (metrics.match(/^causeway_relay_lag_events\s+([0-9.e+]+)/m) || [])[1];
    const card = (k, v, id) => h("div", { class: "card", id }, h("div", { class: "v" }, String(v)), h("div", { class: "k" }, k));
    const order = ["running", "retrying", "compensating", "quarantined", "failed", "completed", "compensated"];
    const sagaCards = order.filter((s) => s in o.sagas).map((s) => [s, o.sagas[s]]).map(([s, n]) =>
      h("a", { href: `/ui/sagas?status=${s}`, class: "card", id: `count-${s}` }, h("div", { class: "v" }, String(n)), h("div", { class: "k" }, s)));
    $("#overview").replaceChildren(
      h("div", { class: "cards" },
        card("orders / s (sagas started)", started, "rate-started"),
        card("sagas ended / s", finished, "rate-ended"),
        card("sagas in flight", o.in_flight, "in-flight"),
        card("sagas started", o.sagas_started, "started"),
        card("open dead letters", o.dead_letters_open, "dead-letters"),
        card("log head", o.head, "head"),
        card("relay lag (events)", relay === undefined ? "no relay" : Number(relay), "relay-lag")),
      h("h2", {}, "Sagas by outcome"),
      h("div", { class: "cards" }, sagaCards),
      h("h2", {}, `Sagas not ended, per definition (this build starts definition ${o.definition})`),
      h("div", { class: "cards", id: "definitions" }, Object.keys(o.open_by_definition || {}).length
        ? Object.entries(o.open_by_definition).map(([d, n]) => card(`definition ${d}`, n, `definition-${d}`))
        : h("span", { class: "muted" }, "none")),
      h("h2", {}, "Read models"),
      h("table", {}, h("tr", {}, h("th", {}, "read model"), h("th", { class: "num" }, "checkpoint"), h("th", { class: "num" }, "lag (events)")),
        o.read_models.map((m) => h("tr", {}, h("td", {}, m.name), h("td", { class: "num" }, m.checkpoint), h("td", { class: "num" }, m.lag)))));
  };
  await draw();
  overviewTimer = setInterval(draw, 2000);
}

async function sagasPage() {
  const q = new URLSearchParams(location.search);
  const root = main();
  const statusSel = h("select", { id: "filter-status", name: "status" }, h("option", { value: "" }, "any"),
    ["running", "retrying", "compensating", "quarantined", "failed", "completed", "compensated"].map((s) =>
      h("option", { value: s, selected: q.get("status") === s }, s)));
  const orderIn = h("input", { id: "filter-order", name: "order_id", value: q.get("order_id") || "", placeholder: "order id", size: 38 });
  const olderIn = h("input", { id: "filter-older", name: "older_than_secs", value: q.get("older_than_secs") || "", placeholder: "seconds", size: 8 });
  const form = h("form", { class: "filters", id: "saga-filters" },
    h("label", {}, "status", statusSel), h("label", {}, "order id", orderIn), h("label", {}, "older than (s)", olderIn),
    h("button", { type: "submit", class: "primary" }, "Filter"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    if (statusSel.value) p.set("status", statusSel.value);
    if (orderIn.value.trim()) p.set("order_id", orderIn.value.trim());
    if (olderIn.value.trim()) p.set("older_than_secs", olderIn.value.trim());
    location.href = `/ui/sagas${p.toString() ? "?" + p : ""}`;
  });
  const table = h("table", { id: "sagas" });
  const pager = h("div", { class: "pager" });
  root.replaceChildren(h("h1", {}, "Sagas"), form, table, pager);
  const p = new URLSearchParams();
  for (const k of ["status", "order_id", "older_than_secs", "after"]) if (q.get(k)) p.set(k, q.get(k));
  p.set("limit", "50");
  let page;
  try { page = await api(`/api/sagas?${p}`); } catch (e) { table.replaceChildren(h("tr", {}, h("td", { class: "error" }, e.message))); return; }
  table.replaceChildren(...[
    h("tr", {}, h("th", {}, "order"), h("th", {}, "status"), h("th", {}, "definition"), h("th", {}, "step in flight"), h("th", {}, "started"), h("th", {}, "last moved"), h("th", {}, "reason")),
    page.sagas.length ? page.sagas.map((s) => h("tr", { "data-order": s.order_id },
      h("td", {}, sagaLink(s.order_id)), h("td", {}, status(s.status)), h("td", { class: "num" }, String(s.definition || 1)), h("td", {}, s.current || ""),
      h("td", { title: fmtTime(s.started_at_ns) }, age(s.started_at_ns)), h("td", { title: fmtTime(s.updated_at_ns) }, age(s.updated_at_ns)),
      h("td", {}, s.reason || ""))) : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No sagas match."))].flat());
  if (page.next) {
    const n = new URLSearchParams(q);
    n.set("after", page.next);
    pager.append(h("a", { href: `/ui/sagas?${n}`, id: "older" }, "Older →"));
  }
}

// The actions, and the states that allow them (the node checks again, and says why not).
const ACTIONS = [
  ["retry", "Retry the step now", "primary", ["running", "retrying", "compensating", "quarantined", "failed"]],
  ["resume", "Resume (from quarantine)", "", ["quarantined"]],
  ["compensate", "Compensate (abort)", "danger", ["running", "retrying", "quarantined"]],
  ["mark-compensation-done", "Mark compensation done by hand", "danger", ["compensating", "quarantined", "failed"]],
];

async function sagaPage(id) {
  const root = main();
  let t;
  try { t = await api(`/api/sagas/${encodeURIComponent(id)}`); } catch (e) {
    root.replaceChildren(h("h1", {}, "Saga"), h("p", { class: "error", id: "saga-error" }, e.message));
    return;
  }
  const reason = h("input", { id: "action-reason", placeholder: "reason (required to mark a compensation done)" });
  // A quarantine on the forward path cannot be marked done; one in a compensation cannot be
  // compensated again.
  const compensating = /^(CancelShipment|RefundPayment|ReleaseStock|CancelOrder)\b/.test(t.current || "");
  const allowed = ACTIONS.filter(([name, , , states]) => states.includes(t.status)
    && !(t.status === "quarantined" && name === "mark-compensation-done" && !compensating)
    && !(t.status === "quarantined" && name === "compensate" && compensating));
  const buttons = allowed.map(([name, label, cls]) => h("button", { id: `action-${name}`, class: cls, type: "button",
    onclick: async (ev) => {
      const b = ev.currentTarget;
      const operator = operatorName() || "console";
      b.disabled = true;
      try {
        // One click per version and request: a double click is one action, an edited reason another.
        const key = `${name}-${t.version}-${digest(operator + "\n" + reason.value)}`;
        const body = { operator, reason: reason.value, expected_version: t.version };
        const done = await admin(`/api/admin/sagas/${id}/${name}`, body, key);
        toast(done.status === "pending"
          ? `${name}: sent to the saga's owner, which has not answered yet`
          : `${name}: the saga is now ${done.status}${done.repeated ? " (already done)" : ""}`);
        clearTimeout(sagaTimer);
        sagaTimer = setTimeout(() => sagaPage(id), 400);
      } catch (e) {
        toast(`${name} refused: ${e.message}`, true);
        b.disabled = false;
      }
    } }, label));
  const started = t.steps.length ? Number(t.steps[0].at_ns) : 0;
  const firstRequest = {};
  let prevAt = started;
  const ids = new Set(t.steps.map((s) => s.event_id).filter(Boolean));
  const rows = t.steps.map((s, i) => {
    const at = Number(s.at_ns);
    const key = (s.detail || "").split(" ")[0];
    let took = "";
    if (s.event === "StepRequested" || s.event === "CompensationRequested") {
      if (!(key in firstRequest)) firstRequest[key] = at;
    } else if (["StepSucceeded", "StepFailed", "CompensationDone"].includes(s.event) && key in firstRequest) {
      took = fmtDur((at - firstRequest[key]) / 1e6);
    }
    const since = fmtDur((at - prevAt) / 1e6);
    prevAt = at;
    const cause = s.causation_id
      ? h("a", { href: ids.has(s.causation_id) ? `#e-${s.causation_id}` : `/ui/events/${s.causation_id}`, class: "mono", title: s.causation_id },
        s.causation_id.slice(0, 8))
      : "";
    const cls = s.event === "OperatorActed" ? "operator" : (["StepFailed", "SagaFailed", "SagaQuarantined"].includes(s.event) ? "failure" : null);
    return h("tr", { id: s.event_id ? `e-${s.event_id}` : null, class: cls, "data-event": s.event },
      h("td", { class: "num" }, i + 1), h("td", { class: "mono" }, fmtTime(s.at_ns)), h("td", { class: "num" }, since),
      h("td", {}, s.event), h("td", {}, s.detail || ""), h("td", { class: "num" }, took),
      h("td", {}, h("a", { href: `/ui/log?from_position=${s.position}`, class: "mono" }, s.position)), h("td", {}, cause));
  });
  const streams = ["saga", "order", "payment", "shipment", "replies"].map((c) => streamLink(`${c}-${id}`));
  root.replaceChildren(
    h("h1", {}, "Saga ", h("span", { class: "mono", id: "saga-id" }, id), " ", h("span", { id: "saga-status" }, status(t.status))),
    h("dl", { class: "facts" },
      h("dt", {}, "started"), h("dd", {}, fmtTime(t.started_at_ns)),
      h("dt", {}, "last moved"), h("dd", {}, `${fmtTime(t.updated_at_ns)} (${age(t.updated_at_ns)})`),
      h("dt", {}, "in flight"), h("dd", {}, t.current || "–"),
      h("dt", {}, "definition"), h("dd", { id: "saga-definition" }, String(t.definition || 1)),
      h("dt", {}, "reason"), h("dd", { id: "saga-reason" }, t.reason || "–"),
      h("dt", {}, "streams"), h("dd", {}, streams.flatMap((l) => [l, " "]))),
    h("div", { class: "actions" }, h("strong", {}, "Operator actions"),
      h("span", { class: "muted" }, " (each is recorded in the saga's stream; needs the admin token)"),
      buttons.length ? [h("div", { class: "row" }, reason), h("div", { class: "row" }, buttons)]
        : h("div", { class: "row muted", id: "no-actions" }, `The saga has ${t.status === "failed" ? "failed" : "ended"}; no action applies.`)),
    h("h2", {}, "Timeline"),
    h("table", { id: "timeline" },
      h("tr", {}, h("th", { class: "num" }, "#"), h("th", {}, "time (UTC)"), h("th", { class: "num" }, "+"), h("th", {}, "event"),
        h("th", {}, "detail"), h("th", { class: "num" }, "took"), h("th", { class: "num" }, "position"), h("th", {}, "caused by")),
      rows));
  watchSaga(id, t.status, t.version);
}

// One poller per page: it redraws the saga when its version changes, while it has not ended.
let sagaTimer = null;
function watchSaga(id, status, version) {
  clearTimeout(sagaTimer);
  if (["completed", "compensated"].includes(status)) return;
  sagaTimer = setTimeout(async () => {
    try {
      const t = await api(`/api/sagas/${encodeURIComponent(id)}`);
      if (t.version !== version) return sagaPage(id);
    } catch (_) { /* shown on the next full draw */ }
    watchSaga(id, status, version);
  }, 1500);
}

function eventsTable(events, id) {
  return h("table", { id },
    h("tr", {}, h("th", { class: "num" }, "position"), h("th", {}, "stream"), h("th", { class: "num" }, "v"), h("th", {}, "type"),
      h("th", {}, "recorded (UTC)"), h("th", {}, "payload"), h("th", {}, "metadata")),
    events.length ? events.map((e) => h("tr", { "data-position": e.position },
      h("td", { class: "num" }, e.position), h("td", {}, streamLink(e.stream_id)), h("td", { class: "num" }, e.version),
      h("td", {}, e.event_type), h("td", { class: "mono" }, e.recorded_at),
      h("td", {}, h("pre", {}, JSON.stringify(e.payload, null, 2))),
      h("td", {}, h("pre", {}, Object.keys(e.metadata || {}).length ? JSON.stringify(e.metadata, null, 2) : "")))) :
      h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No events.")));
}

async function streamPage(id) {
  const q = new URLSearchParams(location.search);
  const from = Number(q.get("from_version") || 1);
  const root = main();
  root.replaceChildren(h("h1", {}, "Stream ", h("span", { class: "mono" }, id)));
  try {
    const events = await api(`/api/streams/${encodeURIComponent(id)}/events?from_version=${from}&limit=100`);
    root.append(eventsTable(events, "stream-events"));
    if (events.length === 100) root.append(h("div", { class: "pager" }, h("a", { href: `?from_version=${from + 100}` }, "Next →")));
  } catch (e) { root.append(h("p", { class: "error" }, e.message)); }
}

async function eventPage(id) {
  const root = main();
  root.replaceChildren(h("h1", {}, "Event ", h("span", { class: "mono" }, id)));
  try {
    const e = await api(`/api/events/by-id/${encodeURIComponent(id)}`);
    root.append(eventsTable([e], "event"),
      h("p", {}, "Caused by ", h("a", { href: `/ui/events/${e.causation_id}`, class: "mono" }, e.causation_id),
        " · correlation ", h("span", { class: "mono" }, e.correlation_id), " · ",
        h("a", { href: `/ui/log?from_position=${e.position}` }, "the log from here")));
  } catch (e) {
    root.append(h("p", { class: "error", id: "event-error" }, e.status === 404 ? "No event of this id in this node's log (it may be the request that started it)." : e.message));
  }
}

async function logPage() {
  const q = new URLSearchParams(location.search);
  const root = main();
  const pos = h("input", { name: "from_position", value: q.get("from_position") || "", placeholder: "position", size: 10 });
  const at = h("input", { name: "from_time", value: q.get("from_time") || "", placeholder: "2026-12-03T10:00:00Z", size: 24 });
  const form = h("form", { class: "filters", method: "get", action: "/ui/log" },
    h("label", {}, "from position", pos), h("label", {}, "or from time (RFC 3339)", at), h("button", { type: "submit", class: "primary" }, "Read"));
  root.replaceChildren(h("h1", {}, "The log"), form);
  const p = new URLSearchParams();
  if (q.get("from_time")) p.set("from_time", q.get("from_time")); else p.set("from_position", q.get("from_position") || "1");
  p.set("limit", "100");
  try {
    const events = await api(`/api/events?${p}`);
    root.append(eventsTable(events, "log-events"));
    if (events.length) root.append(h("div", { class: "pager" }, h("a", { href: `/ui/log?from_position=${events[events.length - 1].position + 1}` }, "Next →")));
  } catch (e) { root.append(h("p", { class: "error" }, e.message)); }
}

let feed = null;
function livePage() {
  const root = main();
  const list = h("table", { id: "live" }, h("tr", {}, h("th", { class: "num" }, "position"), h("th", {}, "stream"), h("th", {}, "type"), h("th", {}, "recorded (UTC)")));
  root.replaceChildren(h("h1", {}, "Live feed"), h("p", { class: "muted" }, "Every event as it is appended (newest on top, the last 200)."), list);
  feed = new EventSource("/api/events/live");
  feed.onmessage = null;
  const add = (msg) => {
    let e;
    try { e = JSON.parse(msg.data); } catch (_) { return; }
    list.insertBefore(h("tr", {}, h("td", { class: "num" }, e.position), h("td", {}, streamLink(e.stream_id)), h("td", {}, e.event_type), h("td", { class: "mono" }, e.recorded_at)), list.children[1] || null);
    while (list.children.length > 201) list.lastChild.remove();
  };
  const types = ["OrderPlaced", "OrderConfirmed", "OrderCancelled", "SagaStarted", "StepRequested", "StepSucceeded", "StepFailed",
    "CompensationRequested", "CompensationDone", "SagaCompleted", "SagaCompensated", "SagaFailed", "SagaQuarantined", "OperatorActed",
    "CommandReplied", "StockAdded", "StockReserved", "StockCommitted", "StockReleased", "PaymentAuthorized", "PaymentCaptured",
    "PaymentDeclined", "PaymentRefunded", "ShipmentCreated", "ShipmentCancelled"];
  for (const t of types) feed.addEventListener(t, add);
  feed.addEventListener("message", add);
}

async function readModelsPage() {
  const root = main();
  root.replaceChildren(h("h1", {}, "Read models"));
  let o;
  try { o = await api("/api/overview"); } catch (e) { root.append(h("p", { class: "error" }, e.message)); return; }
  root.append(h("table", { id: "read-models" },
    h("tr", {}, h("th", {}, "read model"), h("th", { class: "num" }, "checkpoint"), h("th", { class: "num" }, "lag (events)"), h("th", {}, "")),
    o.read_models.map((m) => h("tr", {}, h("td", {}, m.name), h("td", { class: "num" }, m.checkpoint), h("td", { class: "num" }, m.lag),
      h("td", {}, h("button", { type: "button", onclick: async (ev) => {
        ev.currentTarget.disabled = true;
        try {
          const r = await admin(`/api/admin/projections/${m.name}/replay`, {});
          toast(`${m.name} rebuilt to ${r[0].checkpoint} in ${r[0].millis} ms`);
        } catch (e) { toast(`rebuild refused: ${e.message}`, true); }
        readModelsPage();
      } }, "Rebuild"))))));
}

async function deadLettersPage() {
  const root = main();
  root.replaceChildren(h("h1", {}, "Dead letters"));
  let page;
  try { page = await api("/api/dead-letters?limit=200"); } catch (e) { root.append(h("p", { class: "error" }, e.message)); return; }
  const letters = page.letters || page.dead_letters || page.items || (Array.isArray(page) ? page : []);
  root.append(h("table", { id: "dead-letters" },
    h("tr", {}, h("th", {}, "consumer"), h("th", {}, "state"), h("th", {}, "event"), h("th", {}, "stream"), h("th", {}, "reason"), h("th", {}, "")),
    letters.length ? letters.map((l) => {
      const c = l.consumer, ev = l.event_id;
      return h("tr", {}, h("td", {}, c), h("td", {}, l.resolved ? "resolved" : "open"), h("td", { class: "mono" }, `${l.event_type} ${ev}`),
        h("td", {}, streamLink(l.stream_id)), h("td", {}, l.reason),
        h("td", {}, l.resolved ? "" : h("button", { type: "button", onclick: async (e2) => {
          e2.currentTarget.disabled = true;
          try { await admin(`/api/admin/dead-letters/${c}/${ev}/redrive`, null); toast("re-driven"); }
          catch (e) { toast(`re-drive failed: ${e.message}`, true); }
          deadLettersPage();
        } }, "Re-drive")));
    }) : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No dead letters."))));
}

function route() {
  const path = location.pathname.replace(/\/+$/, "");
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("here", a.getAttribute("href") === path);
  let m;
  if (path === "/ui" || path === "") return overviewPage();
  if (path === "/ui/sagas") return sagasPage();
  if ((m = path.match(/^\/ui\/sagas\/([^/]+)$/))) return sagaPage(decodeURIComponent(m[1]));
  if ((m = path.match(/^\/ui\/streams\/(.+)$/))) return streamPage(decodeURIComponent(m[1]));
  if ((m = path.match(/^\/ui\/events\/([^/]+)$/))) return eventPage(decodeURIComponent(m[1]));
  if (path === "/ui/log") return logPage();
  if (path === "/ui/live") return livePage();
  if (path === "/ui/read-models") return readModelsPage();
  if (path === "/ui/dead-letters") return deadLettersPage();
  main().replaceChildren(h("h1", {}, "Not found"), h("p", {}, "No console page at this address. ", h("a", { href: "/ui" }, "Overview")));
}

document.addEventListener("DOMContentLoaded", () => {
  const tok = $("#admin-token"), op = $("#operator-name");
  tok.value = adminToken();
  op.value = operatorName();
  tok.addEventListener("change", () => sessionStorage.setItem("causeway.admin", tok.value.trim()));
  op.addEventListener("change", () => localStorage.setItem("causeway.operator", op.value.trim()));
  $("#find-order").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = $("#find-order-id").value.trim();
    if (id) location.href = `/ui/sagas/${encodeURIComponent(id)}`;
  });
  Promise.resolve().then(route).catch((e) => toast(e.message, true));
});
