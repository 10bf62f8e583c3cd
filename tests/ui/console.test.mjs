// The console in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by
// playwright-core against a real `causeway serve` (embedded, with a read token and an admin
// token). Places three orders through the API (one completes, one is declined, one is
// quarantined by a gateway that always fails), finds each saga by order id in the console,
// checks its steps in order on the timeline, retries the quarantined one from its page after
// the gateway recovers and sees it complete, visits every page, and fails on any console error.
// Screenshots go to $SCREENSHOTS (default: $CARGO_TARGET_DIR/ui-screenshots).
//
//   CAUSEWAY_BIN=path/to/causeway node tests/ui/console.test.mjs

import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";

const BIN = process.env.CAUSEWAY_BIN;
assert.ok(BIN, "set CAUSEWAY_BIN to the causeway binary");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = process.env.SCREENSHOTS || join(process.env.CARGO_TARGET_DIR || tmpdir(), "ui-screenshots");
const ADMIN = "console-admin-token-0001";
const READ = "console-read-token-00001";

mkdirSync(SHOTS, { recursive: true });

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => resolve(port)); });
    s.on("error", reject);
  });
}

async function until(what, f, timeoutMs = 30000) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    try { const v = await f(); if (v) return v; } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
}

const dir = mkdtempSync(join(tmpdir(), "causeway-ui-"));
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const node = spawn(BIN, ["serve", "--data-dir", join(dir, "data"), "--listen", `127.0.0.1:${port}`,
  "--step-timeout-ms", "400", "--step-attempts", "2"], {
  env: { ...process.env, CAUSEWAY_ADMIN_TOKEN: ADMIN, CAUSEWAY_READ_TOKEN: READ, RUST_LOG: "warn" },
  stdio: ["ignore", "inherit", "inherit"],
});
let nodeExited = null;
node.on("exit", (code) => { nodeExited = code; });

const json = { "Content-Type": "application/json" };
const asAdmin = { ...json, Authorization: `Bearer ${ADMIN}` };
const asReader = { Authorization: `Bearer ${READ}` };
async function call(method, path, body, headers = json) {
  const r = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}
const address = { line1: "1 Analytical Way", city: "London", postal_code: "N1 1AA", country: "GB" };
async function place(customer, price) {
  const r = await call("POST", "/api/orders", {
    customer_id: customer, currency: "EUR", shipping_address: address,
    items: [{ sku: "TEA-1", quantity: 1, unit_price_minor: price }],
  });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body.order_id;
}
const sagaStatus = async (id) => (await call("GET", `/api/sagas/${id}`, undefined, asReader)).body?.status;

let browser, page;
try {
  await until("the node to be ready", async () => (await fetch(`${base}/readyz`)).ok);
  // Reads need the credential; probes do not.
  assert.equal((await fetch(`${base}/api/sagas`)).status, 401);
  assert.equal((await fetch(`${base}/ui/sagas`)).status, 401);
  assert.equal((await fetch(`${base}/healthz`)).status, 200);

  assert.equal((await call("POST", "/api/products/TEA-1/stock", { quantity: 50 })).status, 200);
  const completed = await place("customer-complete", 1200);
  await until("the first saga to complete", async () => (await sagaStatus(completed)) === "completed");
  const declined = await place("customer-declined", 5_000_000); // over the simulated card limit
  await until("the declined saga to compensate", async () => (await sagaStatus(declined)) === "compensated");
  assert.equal((await call("PUT", "/api/admin/simulator/gateway", { failure_rate: 1.0 }, asAdmin)).status, 200);
  const parked = await place("customer-parked", 900);
  await until("the saga to be quarantined", async () => (await sagaStatus(parked)) === "quarantined");

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
  const errors = [];
  page.on("console", (m) => { if (m.type() === "error") errors.push(`console: ${m.text()} (${page.url()})`); });
  page.on("pageerror", (e) => errors.push(`page error: ${e.message} (${page.url()})`));
  page.on("requestfailed", (r) => { if (!r.url().includes("/api/events/live")) errors.push(`request failed: ${r.url()}`); });

  // Unauthenticated, the console answers 401 with its sign-in form.
  const first = await page.goto(`${base}/ui`);
  assert.equal(first.status(), 401);
  const expected401 = errors.splice(0).filter((e) => !e.includes("401"));
  assert.deepEqual(expected401, [], "only the expected 401 before signing in");
  await page.fill("#token", "not the token");
  await page.click("#sign-in");
  await page.waitForSelector("#login-error");
  errors.splice(0); // the refused sign-in's 401
  await page.fill("#token", READ);
  await page.click("#sign-in");
  await page.waitForURL(`${base}/ui`);
  await page.waitForSelector("#in-flight");
  await until("two overview samples (rates)", async () => (await page.textContent("#rate-started .v")) !== "–", 10000);
  assert.equal((await page.textContent("#started .v")).trim(), "3");
  // The quarantined saga has not ended: the current definition (2) carries it.
  await until("sagas not ended per definition", async () => (await page.$("#definition-2")) !== null, 10000);
  await page.screenshot({ path: join(SHOTS, "overview.png"), fullPage: true });

  const timeline = async () => page.$$eval("#timeline tr[data-event]", (rows) => rows.map((r) => r.dataset.event));
  const inOrder = (events, expected) => {
    let i = 0;
    for (const e of events) if (e === expected[i]) i++;
    return i === expected.length;
  };
  async function open(id, want) {
    await page.goto(`${base}/ui/sagas`);
    await page.fill("#filter-order", id);
    await page.click("#saga-filters button[type=submit]");
    await page.waitForSelector(`#sagas tr[data-order="${id}"]`);
    await page.click(`#sagas tr[data-order="${id}"] a`);
    await page.waitForURL(`${base}/ui/sagas/${id}`);
    await page.waitForSelector(`#saga-status [data-status="${want}"]`);
    return timeline();
  }

  let events = await open(completed, "completed");
  assert.ok(inOrder(events, ["SagaStarted", "StepRequested", "StepSucceeded", "StepRequested", "StepSucceeded",
    "StepRequested", "StepSucceeded", "StepRequested", "StepSucceeded", "StepRequested", "StepSucceeded", "SagaCompleted"]), events.join());
  await page.screenshot({ path: join(SHOTS, "saga-completed.png"), fullPage: true });

  events = await open(declined, "compensated");
  assert.ok(inOrder(events, ["SagaStarted", "StepRequested", "StepSucceeded", "StepRequested", "StepFailed",
    "CompensationRequested", "CompensationDone", "SagaCompensated"]), events.join());
  await page.screenshot({ path: join(SHOTS, "saga-declined.png"), fullPage: true });

  events = await open(parked, "quarantined");
  assert.ok(inOrder(events, ["SagaStarted", "StepRequested", "StepSucceeded", "StepRequested", "StepRequested", "SagaQuarantined"]), events.join());
  assert.match(await page.textContent("#saga-reason"), /no reply after 2 attempts/);
  // The current saga definition (2: the fraud check before the payment).
  assert.equal((await page.textContent("#saga-definition")).trim(), "2");
  await page.screenshot({ path: join(SHOTS, "saga-quarantined.png"), fullPage: true });

  // Without the admin token the page refuses to send the action; with a wrong one the node
  // refuses it (401); either way nothing is recorded.
  const before = (await call("GET", `/api/sagas/${parked}`, undefined, asReader)).body.version;
  await page.click("#action-retry");
  await page.waitForSelector("#toast .msg.error");
  await page.click(".operator summary");
  await page.fill("#admin-token", "not-the-admin-token-000");
  await page.dispatchEvent("#admin-token", "change");
  const refused = page.waitForResponse((r) => r.url().includes(`/api/admin/sagas/${parked}/retry`));
  await page.click("#action-retry");
  assert.equal((await refused).status(), 401);
  await page.waitForSelector("#toast .msg.error >> text=/refused/");
  errors.splice(0).forEach((e) => assert.match(e, /401/, "only the refused action's 401"));
  assert.equal(await sagaStatus(parked), "quarantined");
  assert.equal((await call("GET", `/api/sagas/${parked}`, undefined, asReader)).body.version, before);
  // The gateway recovers; the operator retries from the saga's page and sees it complete.
  assert.equal((await call("PUT", "/api/admin/simulator/gateway", { failure_rate: 0 }, asAdmin)).status, 200);
  await page.fill("#admin-token", ADMIN);
  await page.dispatchEvent("#admin-token", "change");
  await page.fill("#operator-name", "ops@example.com");
  await page.dispatchEvent("#operator-name", "change");
  await page.fill("#action-reason", "the payment gateway is back");
  await page.click("#action-retry");
  await page.waitForSelector(`#saga-status [data-status="completed"]`, { timeout: 30000 });
  events = await timeline();
  assert.ok(inOrder(events, ["SagaQuarantined", "OperatorActed", "StepRequested", "StepSucceeded", "SagaCompleted"]), events.join());
  const acted = await page.textContent('#timeline tr[data-event="OperatorActed"]');
  assert.match(acted, /retry by ops@example\.com: the payment gateway is back/);
  await page.screenshot({ path: join(SHOTS, "saga-retried.png"), fullPage: true });
  // A repeat of an action a saga's state no longer allows is refused with its state.
  const again = await call("POST", `/api/admin/sagas/${parked}/resume`, { operator: "ops@example.com" }, asAdmin);
  assert.equal(again.status, 409);
  assert.equal(again.body.status, "completed");
  await page.reload();
  await page.waitForSelector("#no-actions");
  // A causation link leads to the event that caused a step (here the reply to the payment).
  await page.locator('#timeline tr[data-event="StepSucceeded"]', { hasText: "TakePayment" }).locator("td:last-child a").click();
  await page.waitForSelector("#event tr[data-position]");
  assert.match(await page.textContent("#event"), /CommandReplied/);

  // The list filters by state, newest first.
  await page.goto(`${base}/ui/sagas?status=completed`);
  await page.waitForSelector("#sagas tr[data-order]");
  const listed = await page.$$eval("#sagas tr[data-order]", (rows) => rows.map((r) => r.dataset.order));
  assert.deepEqual(listed, [parked, completed]);
  await page.screenshot({ path: join(SHOTS, "sagas.png"), fullPage: true });

  // The stream browser, the log from a position and from a time, the live feed, read models,
  // dead letters.
  await page.goto(`${base}/ui/streams/saga-${parked}`);
  await page.waitForSelector("#stream-events tr[data-position]");
  assert.match(await page.textContent("#stream-events"), /"action": "retry"/);
  await page.screenshot({ path: join(SHOTS, "stream.png"), fullPage: true });
  await page.goto(`${base}/ui/log?from_position=1`);
  await page.waitForSelector('#log-events tr[data-position="1"]');
  await page.goto(`${base}/ui/log?from_time=${encodeURIComponent(new Date(Date.now() - 3600e3).toISOString())}`);
  await page.waitForSelector('#log-events tr[data-position="1"]');
  await page.goto(`${base}/ui/live`);
  await page.waitForSelector("#live");
  const fourth = await place("customer-live", 300);
  await page.waitForSelector(`#live a[href="/ui/streams/order-${fourth}"]`, { timeout: 15000 });
  await page.screenshot({ path: join(SHOTS, "live.png"), fullPage: true });
  await page.goto(`${base}/ui/read-models`);
  await page.waitForSelector("#read-models tr td");
  await page.goto(`${base}/ui/dead-letters`);
  await page.waitForSelector("#dead-letters tr td");
  assert.match(await page.textContent("#dead-letters"), /TakePayment/);
  await page.screenshot({ path: join(SHOTS, "dead-letters.png"), fullPage: true });

  assert.deepEqual(errors, [], "no console errors after signing in");
  assert.equal(nodeExited, null, "the node kept running");
  console.log(`console test passed; screenshots in ${SHOTS}`);
} catch (e) {
  if (page) {
    console.error(`failed on ${page.url()}; screenshot in ${join(SHOTS, "failure.png")}`);
    await page.screenshot({ path: join(SHOTS, "failure.png"), fullPage: true }).catch(() => {});
  }
  throw e;
} finally {
  if (browser) await browser.close();
  node.kill("SIGTERM");
  await until("the node to stop", async () => nodeExited !== null, 20000).catch(() => node.kill("SIGKILL"));
  rmSync(dir, { recursive: true, force: true });
}
