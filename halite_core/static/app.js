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
  for (const id of ["login-view", "jobs-view", "job-view", "timeline-view", "minions-view", "minion-view",
                    "states-view", "state-view"]) $("#" + id).hidden = id !== view;
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
    el("td", { class: "status" }, status), el("td", {}, resultBadge(job.result)));
}

// A result (running, failed, changed, pass) as a badge; nothing for none (a live listing).
function resultBadge(result) {
  return result ? el("span", { class: `badge result-${result}` }, result) : "";
}

function link(href, text) { return el("a", { href }, text); }

function go(hash) { return { tabindex: "0", onclick: (e) => { if (e.target.tagName !== "A") location.hash = hash; },
                             onkeydown: (e) => { if (e.key === "Enter") location.hash = hash; } }; }

function stateLinks(ids) {
  const cell = el("td", { class: "failing-states" });
  (ids || []).forEach((id, i) => { if (i) cell.append(", "); cell.append(link(`#/state/${encodeURIComponent(id)}`, id)); });
  return cell;
}

function countsText(c) { return c ? `${c.failed} failed, ${c.changed} changed of ${c.states}` : ""; }

async function loadJobs() {
  const params = new URLSearchParams({ limit: "50" });
  for (const [key, value] of Object.entries(state.filters)) if (value) params.set(key, value);
  const cursor = state.cursors[state.page];
  if (cursor) params.set("cursor", cursor);
  try {
    shownAs("jobs-view", "/api/jobs", params, "jobs", "jobs");
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

// Each load of the job view is numbered: an answer (a GET, a re-run) that arrives after
// another job was opened is dropped, never shown over it.
let jobLoad = 0;

function clearJob() {
  for (const id of ["#kill", "#rerun-failed", "#rerun-all"]) { const b = $(id); b.hidden = true; b.onclick = null; }
  for (const id of ["#job-meta", "#job-links", "#job-counts", "#minions"]) $(id).replaceChildren();
  $("#job-links").hidden = true;
}

async function loadJob(jid) {
  show("job-view");
  const mine = ++jobLoad;
  clearJob();
  try {
    shownAs("job-view", `/api/jobs/${encodeURIComponent(jid)}`, {}, null, `job-${safe(jid)}`);
    const job = await api("GET", `/api/jobs/${encodeURIComponent(jid)}`);
    if (mine !== jobLoad) return;
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
    rerunLinks(job);
    // A re-run publishes the job again: only for a complete job, to those who may
    // (run:job:<function>); the server refuses one it cannot re-run, and says why.
    const rerunnable = job.may_rerun && job.status === "complete";
    // As the server chooses them: failed or never returned, not those an operator killed.
    const failed = job.minion_results.filter((m) => m.failed && m.state !== "killed").map((m) => m.minion);
    const all = job.minion_results.map((m) => m.minion).sort();
    rerunButton($("#rerun-failed"), rerunnable && failed.length > 0, job, "failed",
                `its ${many(failed.length, "failed minion")}`, failed, mine);
    rerunButton($("#rerun-all"), rerunnable && all.length > 0, job, "all", `all ${many(all.length, "minion")}`, all, mine);
  } catch (err) { if (mine === jobLoad) $("#job-title").textContent = err.message; }
}

function many(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }

function jobLinks(jids) {
  const links = [];
  jids.forEach((jid, i) => { if (i) links.push(", "); links.push(link(`#/job/${encodeURIComponent(jid)}`, jid)); });
  return links;
}

// The job this one runs again, and the jobs that run this one again (newest first).
function rerunLinks(job) {
  const links = $("#job-links"); links.replaceChildren();
  if (job.rerun_of) links.append(el("span", { class: "rerun-of" }, "Re-run of ", ...jobLinks([job.rerun_of])));
  if (job.reruns && job.reruns.length) {
    links.append(el("span", { class: "reruns" }, "Re-runs: ", ...jobLinks(job.reruns),
                    job.reruns_more ? ` (the newest ${job.reruns.length}; more are in the audit log)` : ""));
  }
  links.hidden = !links.childElementCount;
}

// A minion id may hold a newline: quoted then, so that it cannot add lines of its own
// to a confirmation.
function shownName(name) { return /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/.test(name) ? JSON.stringify(name) : name; }

function namesText(names, shown = 20) {
  const listed = names.slice(0, shown).map(shownName).join(", ");
  return names.length > shown ? `${listed} and ${names.length - shown} more` : listed;
}

function rerunButton(button, visible, job, minions, which, names, load) {
  button.hidden = !visible;
  button.onclick = async () => {
    if (!confirm(`Re-run job ${job.jid} (${shownName(job.function)}) with the same arguments, as you, on ${which}: ` +
                 `${namesText(names)}?`)) return;
    const result = $("#rerun-result");
    // Disabled until answered: a second click must not publish the job twice.
    for (const b of [$("#rerun-failed"), $("#rerun-all")]) b.disabled = true;
    result.replaceChildren("publishing…");
    try {
      const outcome = await api("POST", `/api/jobs/${encodeURIComponent(job.jid)}/rerun`, { minions });
      if (load !== jobLoad) return;  // another job is shown now: not this answer
      result.replaceChildren("Re-run as ", ...jobLinks([outcome.jid]), ` on ${many(outcome.minions.length, "minion")}`,
                             outcome.missing.length ? `; not published to (no accepted key): ${namesText(outcome.missing)}` : "");
      loadJob(job.jid);  // its re-runs now list the new job
    } catch (err) { if (load === jobLoad) result.replaceChildren(err.message); }
    finally { for (const b of [$("#rerun-failed"), $("#rerun-all")]) b.disabled = false; }
  };
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

// ---------------------------------------------------------------- the fleet
// Each list pages with the API's `next` cursor: "More" appends the next page.
const fleet = { minions: null, minion: null, states: null, state: null };

async function pageInto(kind, path, params, body, row, more, error) {
  try {
    const data = await api("GET", `${path}?${params}`);
    $(error).textContent = "";
    const items = data[kind === "minion" ? "jobs" : kind === "state" ? "runs" : kind];
    for (const item of items) body.append(row(item));
    const button = $(more);
    button.hidden = !data.next;
    button.onclick = () => { params.set("cursor", data.next); pageInto(kind, path, params, body, row, more, error); };
    return data;
  } catch (err) { $(error).textContent = err.message; return null; }
}

function minionRow(m) {
  const run = m.state_run;
  return el("tr", { class: `link minion-row${m.failing ? " failing" : ""}`, "data-minion": m.minion,
                    ...go(`#/minion/${encodeURIComponent(m.minion)}`) },
    el("td", {}, m.minion),
    el("td", {}, run ? `${run.function} ${time(run.start_time)}` : ""),
    el("td", {}, run ? resultBadge(run.result) : ""),
    el("td", {}, run ? countsText(run.counts) : ""),
    stateLinks(run ? run.failing_states : []),
    el("td", {}, m.last_job ? link(`#/job/${m.last_job.jid}`, `${m.last_job.function} ${time(m.last_job.start_time)}`) : ""));
}

async function loadMinions() {
  show("minions-view");
  const params = new URLSearchParams({ limit: "50" });
  for (const [key, value] of new FormData($("#minion-filters")).entries()) if (value) params.set(key, value);
  const body = $("#minions-table tbody"); body.replaceChildren();
  shownAs("minions-view", "/api/minions", params, "minions", "minions");
  await pageInto("minions", "/api/minions", params, body, minionRow, "#minions-more", "#minions-error");
}

function minionJobRow(j) {
  return el("tr", { class: `link${j.result === "failed" ? " failing" : ""}`, "data-jid": j.jid, ...go(`#/job/${j.jid}`) },
    el("td", {}, j.jid), el("td", {}, j.function), el("td", {}, time(j.start_time)), el("td", {}, j.state),
    el("td", {}, resultBadge(j.result)), el("td", {}, countsText(j.counts)), stateLinks(j.failing_states));
}

async function loadMinion(id) {
  show("minion-view");
  $("#minion-title").textContent = id;
  const body = $("#minion-jobs tbody"); body.replaceChildren();
  shownAs("minion-view", `/api/minions/${encodeURIComponent(id)}`, {}, "jobs", `minion-${safe(id)}`);
  await pageInto("minion", `/api/minions/${encodeURIComponent(id)}`, new URLSearchParams({ limit: "50" }),
                 body, minionJobRow, "#minion-more", "#minion-error");
}

function failingStateRow(s) {
  return el("tr", { class: "link", "data-state": s.state_id, ...go(`#/state/${encodeURIComponent(s.state_id)}`) },
    el("td", {}, s.state_id), el("td", {}, s.function), el("td", {}, s.name), el("td", {}, s.sls),
    el("td", {}, s.minions), el("td", {}, s.runs), el("td", {}, time(s.first)), el("td", {}, time(s.last)),
    el("td", {}, s.comment));
}

async function loadStates() {
  show("states-view");
  const params = new URLSearchParams({ limit: "50" });
  for (const [key, value] of new FormData($("#state-filters")).entries()) if (value) params.set(key, value);
  const body = $("#states-table tbody"); body.replaceChildren();
  shownAs("states-view", "/api/states", params, "states", "states");
  await pageInto("states", "/api/states", params, body, failingStateRow, "#states-more", "#states-error");
}

function stateRunRow(r) {
  return el("tr", { class: r.result === "failed" ? "failing" : "", "data-minion": r.minion },
    el("td", {}, link(`#/minion/${encodeURIComponent(r.minion)}`, r.minion)), el("td", {}, link(`#/job/${r.jid}`, r.jid)),
    el("td", {}, r.function), el("td", {}, r.name), el("td", {}, resultBadge(r.result)),
    el("td", {}, time(r.start_time)), el("td", {}, r.comment));
}

async function loadState(id) {
  show("state-view");
  $("#state-title").textContent = id;
  const body = $("#state-runs tbody"); body.replaceChildren();
  shownAs("state-view", `/api/states/${encodeURIComponent(id)}`, {}, "runs", `state-${safe(id)}`);
  const data = await pageInto("state", `/api/states/${encodeURIComponent(id)}`, new URLSearchParams({ limit: "50" }),
                              body, stateRunRow, "#state-more", "#state-error");
  const summary = $("#state-summary"); summary.replaceChildren();
  if (data) {
    const f = data.failed;
    summary.append(el("span", { class: "fail" }, f.runs ? `failed in ${many(f.runs, "run")} on ` +
      `${many(f.minions, "minion")}, first ${time(f.first)}, last ${time(f.last)}` : "never failed"));
  }
}

// ---------------------------------------------------------------- downloads
// What each view shows, to download: the API path and the filters it was loaded with (not
// its page: the download has every row that matches, up to the server's cap), the
// answer's list (null: one answer) and the file's name. A plain link would not do: the
// token travels in a header only, so the file is fetched with it and saved from memory.
const EXPORT_ROWS = 100000;  // the server's cap on a CSV export (docs/http.md); the JSON's too
const shown = {};

function shownAs(view, path, params, key, name) {
  const query = new URLSearchParams(params); query.delete("limit"); query.delete("cursor");
  shown[view] = { path, query, key, name };
}

function safe(text) { return String(text).replace(/[^A-Za-z0-9._-]/g, "_").slice(0, 80); }

function stamp() { return new Date().toISOString().replace(/[-:]|\.\d+/g, ""); }  // 20261128T120000Z

function save(blob, name) {
  const a = el("a", { href: URL.createObjectURL(blob), download: name, hidden: "" });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 60000);
}

async function downloadCsv({ path, query }) {
  const asked = new URLSearchParams(query); asked.set("format", "csv");
  const response = await fetch(`${path}?${asked}`, { headers: { "X-Auth-Token": state.token, "Accept": "text/csv" } });
  if (response.status === 401) logout();
  if (!response.ok) {
    const data = await response.json().catch(() => ({ error: response.statusText }));
    throw new Error(data.error || response.statusText);
  }
  const named = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
  save(await response.blob(), named ? named[1] : "halite.csv");
}

// The JSON: one answer, or a listing's pages followed by their cursors up to EXPORT_ROWS
// rows, as one answer of the same shape (its `next` is where it stopped, null at the end).
async function downloadJson({ path, query, key, name }) {
  const asked = new URLSearchParams(query);
  if (key) asked.set("limit", "500");
  const all = await api("GET", `${path}?${asked}`);
  while (key && all.next && all[key].length < EXPORT_ROWS) {
    asked.set("cursor", all.next); asked.set("limit", String(Math.min(500, EXPORT_ROWS - all[key].length)));
    const page = await api("GET", `${path}?${asked}`);
    all[key] = all[key].concat(page[key]); all.next = page.next;
  }
  save(new Blob([JSON.stringify(all, null, 2)], { type: "application/json" }), `halite-${name}-${stamp()}.json`);
}

async function download(button) {
  const what = shown[button.closest("section").id];
  const error = button.parentElement.querySelector(".error");
  if (!what) return;
  button.disabled = true; error.textContent = "";
  try { await (button.dataset.format === "csv" ? downloadCsv(what) : downloadJson(what)); }
  catch (err) { error.textContent = err.message; }
  finally { button.disabled = false; }
}

// ---------------------------------------------------------------- routing
async function route() {
  if (!state.token) { show("login-view"); return; }
  if (!state.me) {
    try { state.me = await api("GET", "/api/me"); } catch { return; }
    $("#who").textContent = state.me.user;
  }
  const [, view, arg] = (location.hash || "#/jobs").split("/");
  if (view === "job" && arg) { $("#kill-result").textContent = ""; $("#rerun-result").replaceChildren(); loadJob(arg); }
  else if (view === "timeline") loadTimeline();
  else if (view === "minions") loadMinions();
  else if (view === "minion" && arg) loadMinion(decodeURIComponent(arg));
  else if (view === "states") loadStates();
  else if (view === "state" && arg) loadState(decodeURIComponent(arg));
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
  $("#minion-filters").addEventListener("submit", (e) => { e.preventDefault(); loadMinions(); });
  $("#state-filters").addEventListener("submit", (e) => { e.preventDefault(); loadStates(); });
  for (const button of document.querySelectorAll(".downloads button")) {
    button.addEventListener("click", () => download(button));
  }
  window.addEventListener("hashchange", route);
  route();
});
