// The console's pages. Everything shown comes from /api/* and goes onto the
// page with textContent (never innerHTML): nothing a sidecar, an agent name
// or a policy says is ever parsed as HTML. Writes send the session's CSRF
// token; a viewer gets no write controls, and the console and the sidecar
// refuse a viewer's write anyway.
"use strict";

let me = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child == null ? "" : String(child)));
  }
  return node;
}

function showError(message) {
  document.getElementById("error").textContent = message || "";
}

async function api(method, path, body) {
  const headers = {};
  if (method !== "GET") {
    headers["X-CSRF-Token"] = me ? me.csrf : "";
    headers["Content-Type"] = "application/json";
  }
  const response = await fetch("/api/" + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin",
  });
  if (response.status === 401) { window.location.href = "/login"; throw new Error("signed out"); }
  const text = await response.text();
  let json = null;
  try { json = JSON.parse(text); } catch (_) { json = { raw: text }; }
  if (!response.ok) {
    const why = (json && (json.message || json.error)) || response.statusText;
    throw new Error(method + " " + path + ": " + response.status + " " + why);
  }
  return json;
}

function table(headers, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows));
}

// Draws now, then again 2 s after each draw has finished (slow sidecars never pile draws up).
async function refreshing(draw) {
  const again = async () => {
    try { await draw(); } catch (e) { showError(e.message); }
    setTimeout(again, 2000);
  };
  await again();
}

function secondsLeft(expiry) {
  if (!expiry) return "";
  const left = Math.round((Date.parse(expiry) - Date.now()) / 1000);
  return isNaN(left) ? "" : left + " s";
}

// ---- Overview: every sidecar's state, refreshed every 2 s.
async function overview(main) {
  const body = el("div", { id: "fleet" });
  const flow = el("tbody", {});
  main.append(el("h1", {}, "Overview"), body, el("h2", {}, "Live flow"),
    el("table", { id: "flow" }, el("thead", {}, el("tr", {}, ...["time", "caller", "", "sidecar", "request", "decision", "layer", "reason"].map((h) => el("th", {}, h)))), flow));
  follow((e) => {
    if (e.direction === "mgmt") return;
    flow.prepend(flowRow(e));
    while (flow.children.length > 15) flow.lastChild.remove();
  }, () => {});
  async function draw() {
    try {
      const fleet = await api("GET", "fleet");
      const rows = fleet.sidecars.map((s) => {
        const h = s.health || {};
        const jwks = h.jwks && typeof h.jwks === "object" ? (h.jwks.last_error ? "error: " + h.jwks.last_error : (h.jwks.last_refresh || "")) : "";
        const fact = (f) => !f ? "" : f.source !== "graph" ? f.source :
          (f.last_error ? "graph error" : "graph, " + (f.age_seconds == null ? "not yet" : f.age_seconds + " s ago"));
        const graph = "risk: " + fact(h.risk) + "; tags: " + fact(h.tags);
        return el("tr", { "data-sidecar": s.name },
          el("td", {}, s.name),
          el("td", { class: "state-" + s.state }, s.state),
          el("td", {}, s.error || h.reason || ""),
          el("td", {}, secondsLeft(h.svid_expiry)),
          el("td", {}, h.policy_version || ""),
          el("td", {}, h.enforcement_mode || ""),
          el("td", {}, String(jwks)),
          el("td", {}, graph),
          el("td", {}, s.latency_ms + " ms"));
      });
      body.replaceChildren(table(["sidecar", "state", "reason", "SVID left", "policy", "mode", "JWKS", "risk / tags", "latency"], rows));
      showError("");
    } catch (e) { showError(e.message); }
  }
  await refreshing(draw);
}

// ---- Network access: each sidecar's allow-list; changes are confirmed first.
async function network(main) {
  main.append(el("h1", {}, "Network access"));
  const fleet = await api("GET", "fleet");
  for (const s of fleet.sidecars) {
    const section = el("section", { "data-sidecar": s.name });
    main.append(section);
    await drawAllowList(section, s.name);
  }
}

async function drawAllowList(section, name) {
  section.replaceChildren(el("h2", {}, name));
  let current;
  try { current = (await api("GET", "sidecars/" + encodeURIComponent(name) + "/mtls-policy")).allowed_ids || []; }
  catch (e) { section.append(el("p", { class: "state-down" }, e.message)); return; }
  const propose = (next) => {
    const added = next.filter((id) => !current.includes(id));
    const removed = current.filter((id) => !next.includes(id));
    const box = el("div", { class: "confirm" },
      el("p", {}, "Change the allow-list of " + name + "?"),
      ...added.map((id) => el("p", {}, "+ " + id)),
      ...removed.map((id) => el("p", {}, "- " + id)),
      el("button", { type: "button", class: "apply", onclick: async () => {
        try {
          await api("PUT", "sidecars/" + encodeURIComponent(name) + "/mtls-policy", { allowed_ids: next });
          await drawAllowList(section, name);
        } catch (e) { showError(e.message); }
      } }, "Apply"),
      el("button", { type: "button", onclick: () => box.remove() }, "Cancel"));
    section.append(box);
  };
  const admin = me && me.role === "admin";
  const rows = current.map((id) => el("tr", {}, el("td", {}, id),
    el("td", {}, admin ? el("button", { type: "button", class: "remove", onclick: () => propose(current.filter((x) => x !== id)) }, "Remove") : "")));
  section.append(table(["allowed caller", ""], rows));
  if (admin) {
    const input = el("input", { type: "text", size: "60", placeholder: "spiffe://trust-domain/path", class: "new-id" });
    section.append(el("p", {}, input, el("button", { type: "button", class: "add", onclick: () => {
      const id = input.value.trim();
      if (id) propose(current.concat([id]));
    } }, "Add")));
  }
}

// ---- Policy: the effective policy, checked by the sidecar itself (a dry
// run of the real PUT) before it can be saved, a diff against the running
// version, and If-Match so two editors cannot overwrite each other.
function lineDiff(before, after) {
  const a = before.split("\n"), b = after.split("\n");
  const n = a.length, m = b.length;
  if (n * m > 4000000) return ["(too large to show a diff: " + n + " lines before, " + m + " after)"];
  const lcs = Array.from({ length: n + 1 }, () => new Array(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--)
    lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  const out = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) { i++; j++; }
    else if (lcs[i + 1][j] >= lcs[i][j + 1]) out.push("- " + a[i++]);
    else out.push("+ " + b[j++]);
  }
  while (i < n) out.push("- " + a[i++]);
  while (j < m) out.push("+ " + b[j++]);
  return out;
}

async function policy(main) {
  main.append(el("h1", {}, "Policy"));
  const fleet = await api("GET", "fleet");
  const pick = el("select", { id: "policy-sidecar" }, ...fleet.sidecars.map((s) => el("option", { value: s.name }, s.name)));
  const summary = el("div", { id: "policy-summary" });
  const editor = el("textarea", { id: "policy-text", rows: "24", cols: "100", spellcheck: "false" });
  const outcome = el("pre", { id: "policy-outcome" });
  const admin = me.role === "admin";
  let running = "", etag = null, checked = null;
  const save = el("button", { type: "button", id: "policy-save", disabled: "disabled" }, "Save");
  const base = () => "sidecars/" + encodeURIComponent(pick.value) + "/policy";
  async function load() {
    const response = await fetch("/api/" + base(), { credentials: "same-origin" });
    const answer = await response.json();
    if (!response.ok) { showError(answer.message || answer.error); return; }
    etag = response.headers.get("ETag");
    running = JSON.stringify(answer.policy, null, 2);
    editor.value = running;
    checked = null;
    save.setAttribute("disabled", "disabled");
    outcome.textContent = "";
    const entries = (answer.policy.policies || []).concat(answer.policy.federated_policies || []);
    summary.replaceChildren(table(["caller", "description", "rules"], entries.map((e) =>
      el("tr", {}, el("td", {}, e.name), el("td", {}, e.description), el("td", {}, String((e.rules || []).length))))));
  }
  async function send(dryRun) {
    const headers = { "X-CSRF-Token": me.csrf, "Content-Type": "application/yaml" };
    if (etag) headers["If-Match"] = etag;
    const response = await fetch("/api/" + base() + (dryRun ? "?dry_run=true" : ""), {
      method: "PUT", headers, body: editor.value, credentials: "same-origin" });
    return { status: response.status, body: await response.json().catch(() => ({})) };
  }
  pick.addEventListener("change", load);
  editor.addEventListener("input", () => { checked = null; save.setAttribute("disabled", "disabled"); });
  main.append(el("p", {}, "Sidecar ", pick), summary);
  if (!admin) editor.setAttribute("readonly", "readonly");
  main.append(editor);
  if (admin) {
    const check = el("button", { type: "button", id: "policy-check", onclick: async () => {
      const r = await send(true);
      if (r.status === 200) {
        checked = editor.value;
        save.removeAttribute("disabled");
        outcome.textContent = "valid: " + r.body.entries + " caller entries, " + r.body.rules + " rules\n" + lineDiff(running, editor.value).join("\n");
      } else if (r.status === 412) {
        outcome.textContent = "the policy changed since you loaded it: reload it first";
      } else {
        outcome.textContent = "not valid, nothing was sent:\n" + (r.body.message || r.body.error || r.status);
      }
    } }, "Check");
    save.addEventListener("click", async () => {
      if (checked !== editor.value) return;
      const r = await send(false);
      if (r.status === 200) { await load(); outcome.textContent = "saved: version " + r.body.new_version; }
      else if (r.status === 412) outcome.textContent = "someone else saved first: reload, then apply your change again";
      else outcome.textContent = "refused: " + (r.body.message || r.body.error || r.status);
    });
    main.append(el("p", {}, check, save, el("button", { type: "button", onclick: load }, "Reload")));
  }
  main.append(outcome);
  await load();
}

// ---- Risk and tags: pushed to every sidecar at once.
async function risk(main) {
  main.append(el("h1", {}, "Risk and tags"));
  const result = el("div", { id: "push-result" });
  if (me.role !== "admin") {
    main.append(el("p", {}, "Viewers can read; pushes need the admin role."));
  } else {
    const id = el("input", { type: "text", size: "60", id: "risk-id", placeholder: "spiffe://trust-domain/agent" });
    const level = el("select", { id: "risk-level" }, ...["low", "medium", "high", "clear"].map((l) => el("option", { value: l }, l)));
    // A push goes to every sidecar; each answers for itself.
    const pushToAll = async (route, body) => {
      try {
        const answer = await api("PUT", route, body);
        result.replaceChildren(table(["sidecar", "status"], Object.entries(answer.results).map(([name, r]) =>
          el("tr", {}, el("td", {}, name), el("td", {}, String(r.status) + (r.error ? " " + r.error : ""))))));
      } catch (e) { showError(e.message); }
    };
    const push = el("button", { type: "button", id: "risk-push", onclick: () => pushToAll("agent-risk",
      { spiffe_id: id.value.trim(), risk_level: level.value === "clear" ? null : level.value }) }, "Push risk");
    main.append(el("p", {}, id, level, push));
    const tagId = el("input", { type: "text", size: "60", id: "tag-id", placeholder: "spiffe://trust-domain/agent" });
    const tag = el("input", { type: "text", size: "20", id: "tag-value", placeholder: "tag (empty: clear)" });
    const pushTag = el("button", { type: "button", id: "tag-push", onclick: () => pushToAll("agent-tags",
      { spiffe_id: tagId.value.trim(), tag: tag.value.trim() === "" ? null : tag.value.trim() }) }, "Push tag");
    main.append(el("p", {}, tagId, tag, pushTag));
  }
  main.append(result);
}

// ---- The merged live stream of every sidecar's audit events (EventSource
// reconnects by itself, resuming after the last id it saw).
function follow(onEvent, onNotice) {
  const source = new EventSource("/api/audit/stream");
  source.addEventListener("audit", (m) => { try { onEvent(JSON.parse(m.data)); } catch (_) { /* not JSON */ } });
  source.addEventListener("dropped", (m) => {
    try { const d = JSON.parse(m.data); onNotice((d.sidecar || "this page") + " lost " + d.dropped + " events"); } catch (_) { /* ignore */ }
  });
  source.addEventListener("sidecar", (m) => {
    try { const d = JSON.parse(m.data); onNotice(d.sidecar + ": " + d.state + (d.error ? " (" + d.error + ")" : "")); } catch (_) { /* ignore */ }
  });
  return source;
}

function flowRow(e) {
  const who = e.caller_policy || e.caller_spiffe_id || e.actor || "";
  return el("tr", { class: "decision-" + e.decision },
    el("td", {}, String(e.timestamp || "").replace("T", " ").replace("Z", "")),
    el("td", {}, who), el("td", {}, "\u2192"), el("td", {}, e.sidecar),
    el("td", {}, (e.method || "") + " " + (e.path || "")),
    el("td", { class: "decision-" + e.decision }, e.decision), el("td", {}, e.layer), el("td", {}, e.reason));
}

// ---- Audit: the merged live stream, filtered.
async function audit(main) {
  main.append(el("h1", {}, "Audit"));
  const filters = {};
  const inputs = ["caller", "sidecar", "layer", "decision"].map((name) => {
    const input = el("input", { type: "text", placeholder: name, "data-filter": name, size: "24" });
    input.addEventListener("input", () => { filters[name] = input.value.trim(); redraw(); });
    return input;
  });
  const notices = el("ul", { id: "notices" });
  const body = el("tbody", {});
  main.append(el("p", {}, ...inputs), el("div", { id: "audit" },
    el("table", {}, el("thead", {}, el("tr", {}, ...["time", "caller", "", "sidecar", "request", "decision", "layer", "reason"].map((h) => el("th", {}, h)))), body)),
    el("h2", {}, "Stream"), notices);
  const events = [];
  const matches = (e) => Object.entries(filters).every(([k, v]) => !v || String(k === "caller"
    ? (e.caller_policy || "") + " " + (e.caller_spiffe_id || "") + " " + (e.actor || "") : e[k] || "").includes(v));
  function redraw() { body.replaceChildren(...events.filter(matches).slice(0, 200).map(flowRow)); }
  follow((e) => {
    events.unshift(e);
    if (events.length > 1000) events.pop();
    if (matches(e)) { body.prepend(flowRow(e)); while (body.children.length > 200) body.lastChild.remove(); }
  }, (text) => {
    notices.prepend(el("li", {}, text));
    while (notices.children.length > 20) notices.lastChild.remove();
  });
}

// ---- Test calls: what a sidecar's live policy, allow-list and Layer 4 facts
// say of a request (GET /mgmt/explain, no token), one at a time or as a
// matrix of expected outcomes.
async function tests(main) {
  main.append(el("h1", {}, "Test calls"));
  const fleet = await api("GET", "fleet");
  const pick = el("select", { id: "test-sidecar" }, ...fleet.sidecars.map((s) => el("option", { value: s.name }, s.name)));
  const caller = el("input", { type: "text", size: "60", id: "test-caller", placeholder: "spiffe://trust-domain/caller" });
  const method = el("input", { type: "text", size: "8", id: "test-method", value: "GET" });
  const path = el("input", { type: "text", size: "30", id: "test-path", value: "/" });
  const result = el("pre", { id: "test-result" });
  const explain = (c, m, p) => api("GET", "sidecars/" + encodeURIComponent(pick.value) + "/explain?caller=" +
    encodeURIComponent(c) + "&method=" + encodeURIComponent(m) + "&path=" + encodeURIComponent(p));
  const one = el("button", { type: "button", id: "test-explain", onclick: async () => {
    try {
      const r = await explain(caller.value.trim(), method.value.trim(), path.value.trim());
      result.textContent = r.verdict + " (" + r.status + ", " + r.layer + ", " + r.reason + ")\n\n" + r.text;
    } catch (e) { result.textContent = e.message; }
  } }, "Explain");
  main.append(el("p", {}, "Sidecar ", pick), el("p", {}, caller, method, path, one), result);
  const matrix = el("textarea", { id: "test-matrix", rows: "8", cols: "100", spellcheck: "false",
    placeholder: "one per line: caller method path expected-status, e.g. spiffe://td/a GET /budget/read 200" });
  const rows = el("tbody", {});
  const run = el("button", { type: "button", id: "test-run", onclick: async () => {
    rows.replaceChildren();
    for (const line of matrix.value.split("\n").map((l) => l.trim()).filter((l) => l)) {
      const [c, m, p, expected] = line.split(/\s+/);
      let got = "", detail = "";
      try { const r = await explain(c, m, p); got = String(r.status); detail = r.layer + " " + r.reason; }
      catch (e) { got = "error"; detail = e.message; }
      const ok = got === expected;
      rows.append(el("tr", { class: ok ? "decision-allow" : "decision-deny" }, el("td", {}, c), el("td", {}, m + " " + p),
        el("td", {}, expected), el("td", {}, got), el("td", {}, detail), el("td", {}, ok ? "pass" : "FAIL")));
    }
  } }, "Run the matrix");
  main.append(el("h2", {}, "Matrix"), matrix, el("p", {}, run),
    el("table", { id: "test-table" }, el("thead", {}, el("tr", {}, ...["caller", "request", "expected", "got", "why", ""].map((h) => el("th", {}, h)))), rows));
}

async function main() {
  const page = document.body.dataset.page;
  for (const a of document.querySelectorAll("[data-nav]")) if (a.dataset.nav === page) a.classList.add("current");
  try {
    me = await api("GET", "me");
  } catch (e) { showError(e.message); return; }
  document.getElementById("me").textContent = me.name + " (" + me.role + ")";
  document.getElementById("logout").addEventListener("click", async () => {
    try { await api("POST", "logout"); } catch (_) { /* signed out anyway */ }
    window.location.href = "/login";
  });
  const pages = { overview, network, policy, risk, audit, tests };
  const main = document.getElementById("main");
  try { await (pages[page] || overview)(main); } catch (e) { showError(e.message); }
}

document.addEventListener("DOMContentLoaded", main);
