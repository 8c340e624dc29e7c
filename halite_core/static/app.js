// The Jobs page: plain JavaScript over halite's HTTP API (/api/openapi.json), no build step.
"use strict";

const state = { token: sessionStorage.getItem("halite-token"), me: null, cursors: [null],
                page: 0, filters: {}, stream: null, jobs: new Map() };
const $ = (selector) => document.querySelector(selector);

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (state.token) headers["X-Auth-Token"] = state.token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers,
                                       body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await response.json().catch(() => ({ error: response.statusText }));
  if (response.status === 401 && path !== "/api/login") { logout(); }
  if (!response.ok) { const err = new Error(data.error || response.statusText); err.status = response.status; throw err; }
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function show(view) {
  for (const id of ["login-view", "jobs-view", "job-view", "timeline-view"]) $("#" + id).hidden = id !== view;
  $("#nav").hidden = view === "login-view";
}

function time(iso) { return iso ? new Date(iso).toLocaleString() : ""; }

// ---------------------------------------------------------------- login
async function login(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  try {
    const me = await api("POST", "/api/login", { username: form.get("username"),
      password: form.get("password"), eauth: form.get("eauth") || undefined });
    state.token = me.token; sessionStorage.setItem("halite-token", me.token);
    $("#login-error").textContent = "";
    route();
  } catch (err) { $("#login-error").textContent = err.message; }
}

function logout() {
  if (state.token) fetch("/api/logout", { method: "POST", headers: { "X-Auth-Token": state.token } });
  state.token = null; state.me = null; sessionStorage.removeItem("halite-token");
  stopStream(); show("login-view");
}

// ---------------------------------------------------------------- jobs
function jobRow(job) {
  const status = el("span", { class: `badge ${job.status}` }, job.status === "running" ? "Running" : job.status);
  return el("tr", { class: "job", tabindex: "0", "data-jid": job.jid,
                    onclick: () => { location.hash = `#/job/${job.jid}`; },
                    onkeydown: (e) => { if (e.key === "Enter") location.hash = `#/job/${job.jid}`; } },
    el("td", {}, job.jid), el("td", {}, job.function), el("td", {}, job.target),
    el("td", {}, job.target_type), el("td", {}, job.user), el("td", {}, time(job.start_time)),
    el("td", { class: "status" }, status));
}

async function loadJobs() {
  const params = new URLSearchParams({ limit: "50" });
  for (const [key, value] of Object.entries(state.filters)) if (value) params.set(key, value);
  const cursor = state.cursors[state.page];
  if (cursor) params.set("cursor", cursor);
  try {
    const page = await api("GET", `/api/jobs?${params}`);
    $("#jobs-error").textContent = "";
    const body = $("#jobs tbody"); body.replaceChildren();
    state.jobs.clear();
    for (const job of page.jobs) { state.jobs.set(job.jid, job); body.append(jobRow(job)); }
    state.cursors[state.page + 1] = page.next;
    $("#next").disabled = !page.next; $("#prev").disabled = state.page === 0;
  } catch (err) { $("#jobs-error").textContent = err.message; }
}

function filtersFrom(form) {
  const data = new FormData(form);
  return Object.fromEntries([...data.entries()].filter(([, v]) => v));
}

// Live: the event stream updates the first page without reloading it.
function startStream() {
  if (state.stream || !state.token) return;
  state.stream = new EventSource(`/api/jobs/stream?token=${encodeURIComponent(state.token)}`);
  const refresh = () => { if (state.page === 0 && !$("#jobs-view").hidden) loadJobs(); };
  let pending = null;
  const soon = () => { if (!pending) pending = setTimeout(() => { pending = null; refresh(); }, 300); };
  for (const type of ["new", "return", "complete"]) state.stream.addEventListener(type, soon);
}

function stopStream() { if (state.stream) { state.stream.close(); state.stream = null; } }

// ---------------------------------------------------------------- one job
function stateTable(states) {
  const body = el("tbody");
  for (const s of states) {
    const kind = s.result === "failed" ? "failed" : Object.keys(s.changes || {}).length ? "changed" : s.result;
    body.append(el("tr", { class: `state-${kind}` }, el("td", {}, s.id), el("td", {}, s.function),
      el("td", {}, s.name), el("td", {}, kind === "changed" ? "changed" : s.result),
      el("td", {}, s.duration_ms), el("td", {}, s.comment)));
  }
  return el("table", { class: "states" },
    el("thead", {}, el("tr", {}, ...["State", "Function", "Name", "Result", "ms", "Comment"].map((h) => el("th", {}, h)))),
    body);
}

function minionBlock(m) {
  const block = el("div", { class: `minion${m.failed ? " failed" : ""}`, "data-minion": m.minion });
  block.append(el("h3", {}, `${m.minion}: ${m.state}${m.failed ? " — FAILED" : ""}`));
  block.append(el("p", {}, `success: ${m.success}  retcode: ${m.retcode ?? ""}`));
  const hs = m.highstate;
  if (hs && hs.kind === "states") {
    const failing = hs.states.filter((s) => s.result === "failed");
    if (failing.length) {
      const details = el("details", { class: "failing", open: "" }, el("summary", {}, `${failing.length} failed`));
      details.append(stateTable(failing)); block.append(details);
    }
    const all = el("details", {}, el("summary", {}, `all ${hs.states.length} states`));
    all.append(stateTable(hs.states)); block.append(all);
  } else if (hs && hs.kind === "render_error") {
    block.append(el("pre", { class: "error" }, hs.errors.join("\n")));
  } else {
    block.append(el("pre", {}, JSON.stringify(m.return, null, 2)));
  }
  return block;
}

async function loadJob(jid) {
  show("job-view");
  try {
    const job = await api("GET", `/api/jobs/${encodeURIComponent(jid)}`);
    $("#job-title").textContent = `${job.function} — ${job.jid}`;
    const meta = $("#job-meta"); meta.replaceChildren();
    for (const [k, v] of [["Status", job.status], ["Target", `${job.target} (${job.target_type})`],
                          ["User", job.user], ["Started", time(job.start_time)], ["Ended", time(job.end_time)],
                          ["Arguments", JSON.stringify(job.arguments)], ["Keyword arguments", JSON.stringify(job.kwargs)]]) {
      meta.append(el("dt", {}, k), el("dd", {}, v));
    }
    const counts = $("#job-counts"); counts.replaceChildren();
    if (job.states) {
      counts.append(el("span", { class: "pass" }, `pass ${job.states.passed}`),
                    el("span", { class: "fail" }, `fail ${job.states.failed}`),
                    el("span", { class: "changed" }, `changed ${job.states.changed}`));
    }
    counts.append(el("span", {}, `minions ${job.minions.returned}/${job.minions.targeted}, failed ${job.minions.failed}`));
    $("#minions").replaceChildren(...job.minion_results.map(minionBlock));
    const kill = $("#kill");
    kill.hidden = !(job.may_kill && job.status === "running");
    kill.onclick = async () => {
      if (!confirm(`Kill job ${job.jid} (${job.function}) on the minions still running it?`)) return;
      try {
        const result = await api("POST", `/api/jobs/${encodeURIComponent(job.jid)}/kill`);
        $("#kill-result").textContent = `signalled: ${result.signalled.join(", ") || "none"}`;
        loadJob(job.jid);
      } catch (err) { $("#kill-result").textContent = err.message; }
    };
  } catch (err) { $("#job-title").textContent = err.message; }
}

// ---------------------------------------------------------------- timeline
async function loadTimeline() {
  show("timeline-view");
  const data = await api("GET", `/api/jobs/timeline?window=24h&group_by=${$("#group-by").value}`);
  const end = Date.now(), start = end - 24 * 3600 * 1000;
  const rows = data.rows.map((row) => {
    const track = el("div", { class: "track" });
    for (const bar of row.bars) {
      const from = Math.max(new Date(bar.start).getTime(), start), to = new Date(bar.end).getTime();
      const link = el("a", { class: `bar ${bar.status}`, href: `#/job/${bar.jid}`, title: `${bar.jid} ${bar.status}` });
      // Set through the CSSOM: the page's Content-Security-Policy refuses style attributes.
      link.style.left = `${(100 * (from - start)) / (end - start)}%`;
      link.style.width = `${(100 * Math.max(to - from, 0)) / (end - start)}%`;
      track.append(link);
    }
    return el("div", { class: "timeline-row" }, el("span", {}, `${row.key} (${row.bars.length})`), track);
  });
  $("#timeline").replaceChildren(...rows);
}

// ---------------------------------------------------------------- routing
async function route() {
  if (!state.token) { show("login-view"); return; }
  if (!state.me) {
    try { state.me = await api("GET", "/api/me"); } catch { return; }
    $("#who").textContent = state.me.user;
  }
  const [, view, arg] = (location.hash || "#/jobs").split("/");
  if (view === "job" && arg) { $("#kill-result").textContent = ""; loadJob(arg); }
  else if (view === "timeline") loadTimeline();
  else { show("jobs-view"); loadJobs(); }
  if ($("#live").checked) startStream();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", logout);
  $("#filters").addEventListener("submit", (e) => {
    e.preventDefault(); state.filters = filtersFrom(e.target); state.page = 0; state.cursors = [null]; loadJobs();
  });
  $("#next").addEventListener("click", () => { state.page += 1; loadJobs(); });
  $("#prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); loadJobs(); });
  $("#live").addEventListener("change", (e) => (e.target.checked ? startStream() : stopStream()));
  $("#group-by").addEventListener("change", loadTimeline);
  window.addEventListener("hashchange", route);
  route();
});
