// The Jobs page's list of jobs, and the display helpers the job and fleet views share.
// Loaded after app.js (the API, el, $, routing), no build step.
"use strict";

// ---------------------------------------------------------------- shared display helpers
// A result as a badge: its word, a symbol and a fill, so that it never rests on colour
// alone (colour-blind safe): ✕ failed (the only solid one), △ changed, ✓ pass, ● running.
const RESULT_MARKS = { failed: "\u2715", changed: "\u25b3", pass: "\u2713", running: "\u25cf",
                       not_run: "\u25cb", killed: "\u2715", no_return: "\u2715" };
const RESULT_WORDS = { not_run: "would change", no_return: "no return" };

function resultBadge(result) {
  if (!result) return "";
  return el("span", { class: `badge result-${result}` },
    el("span", { class: "mark", "aria-hidden": "true" }, RESULT_MARKS[result] || "\u25cc"),
    ` ${RESULT_WORDS[result] || result}`);
}

// "5 min ago" for a time, with the exact time on hover; refreshed every half minute.
function ago(iso, now = Date.now()) {
  const then = new Date(iso).getTime();
  if (!iso || Number.isNaN(then)) return "";
  const seconds = Math.round((now - then) / 1000), s = Math.abs(seconds);
  const say = (n, unit) => (seconds < 0 ? `in ${n} ${unit}` : `${n} ${unit} ago`);
  if (s < 10) return "just now";
  if (s < 60) return say(s, "s");
  if (s < 3600) return say(Math.floor(s / 60), "min");
  if (s < 86400) return say(Math.floor(s / 3600), "h");
  if (s < 30 * 86400) return say(Math.floor(s / 86400), s < 2 * 86400 ? "day" : "days");
  return new Date(iso).toLocaleDateString();
}

function timeEl(iso, now) {
  if (!iso) return "";
  return el("time", { datetime: iso, title: new Date(iso).toLocaleString(), "data-ago": "" }, ago(iso, now));
}

setInterval(() => {
  const now = Date.now();
  for (const node of document.querySelectorAll("time[data-ago]")) node.textContent = ago(node.dateTime, now);
  for (const row of document.querySelectorAll("#jobs tr.job.result-running")) {  // "running 3m" goes on
    const job = state.jobs.get(row.dataset.jid);
    if (job) row.querySelector(".duration").textContent = jobDuration(job, now);
  }
}, 30000);

// A length of time: "850 ms", "12 s", "3m 12s", "2h 5m"; coarse drops the smaller unit.
function span(ms, coarse = false) {
  if (ms == null || Number.isNaN(ms)) return "";
  ms = Math.max(ms, 0);  // a minion's clock may put its end before its start
  if (ms < 10) return `${Math.round(ms * 10) / 10} ms`;  // Salt's state durations: 0.4 ms
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60), h = Math.floor(m / 60), d = Math.floor(h / 24);
  if (m < 60) return coarse ? `${m}m` : `${m}m ${s % 60}s`;
  if (h < 24) return coarse ? `${h}h` : `${h}h ${m % 60}m`;
  return `${d}d ${h % 24}h`;
}

// A job's duration: end - start, or "running 3m" while it runs.
function jobDuration(job, now = Date.now()) {
  const start = new Date(job.start_time).getTime();
  if (!job.start_time || Number.isNaN(start)) return "";
  if (job.status === "running" || !job.end_time) return `running ${span(Math.max(now - start, 0), true)}`;
  return span(Math.max(new Date(job.end_time).getTime() - start, 0));
}

// "11/12, 2 failed": returned of targeted, and how many failed.
function minionsText(m) {
  if (!m) return "";
  const counted = m.targeted ? `${m.returned}/${m.targeted}` : `${m.returned}`;
  return m.failed ? `${counted}, ${m.failed} failed` : counted;
}

// What a person can act on: app.js words refusals (a 403 names the permission lacking).
function errorText(err) {
  if (err && err.status === 403 && err.missing && !String(err.message).includes(err.missing)) {
    return `You lack ${err.missing}.`;
  }
  return err && err.message ? err.message : String(err);
}

// A table body while its rows load, when nothing matched, or when the load failed.
function noteRow(body, text, kind = "loading") {
  const columns = body.closest("table").querySelectorAll("thead th").length || 1;
  body.replaceChildren(el("tr", { class: `note ${kind}` }, el("td", { colspan: String(columns) }, text)));
}

function link(href, text) { return el("a", { href }, text); }

// A row that opens a view: focusable, opened by a click (not on a link of its own) or Enter.
function go(hash) {
  return { tabindex: "0",
           onclick: (e) => { if (!e.target.closest("a, button, summary")) location.hash = hash; },
           onkeydown: (e) => { if (e.key === "Enter" && e.target === e.currentTarget) location.hash = hash; } };
}

function stateLinks(ids, max = 6) {
  const cell = el("td", { class: "failing-states" });
  (ids || []).slice(0, max).forEach((id, i) => {
    if (i) cell.append(", ");
    cell.append(link(`#/state/${encodeURIComponent(id)}`, id));
  });
  if ((ids || []).length > max) cell.append(` and ${ids.length - max} more`);
  return cell;
}

function countsText(c) {
  if (!c) return "";
  const total = c.states ?? c.total;
  const parts = [];
  if (c.failed) parts.push(`${c.failed} failed`);
  if (c.changed) parts.push(`${c.changed} changed`);
  return parts.length ? `${total} states: ${parts.join(", ")}` : `${total} states`;
}

// A view's filters: the form filled from the URL's parameters, and parameters from the form
// (empty fields and a select's default left out, so that URLs stay short).
function fillForm(form, params) {
  for (const field of form.elements) {
    if (!field.name) continue;
    const value = params.get(field.name);
    if (field.type === "checkbox") field.checked = value === field.value;
    else if (field.tagName === "SELECT") field.value = value ?? selectDefault(field);
    else field.value = value ?? "";
  }
}

function selectDefault(select) {
  const option = [...select.options].find((o) => o.defaultSelected) || select.options[0];
  return option ? option.value : "";
}

function formParams(form) {
  const params = new URLSearchParams();
  for (const field of form.elements) {
    if (!field.name || (field.type === "checkbox" && !field.checked)) continue;
    if (field.tagName === "SELECT" && field.value === selectDefault(field)) continue;
    if (field.value) params.set(field.name, field.value);
  }
  return params;
}

function filtersFrom(form) { return Object.fromEntries(formParams(form)); }

// ---------------------------------------------------------------- the jobs list
// What the list may ask the API: everything else in the URL is left out (it would be a 400).
const JOB_FILTERS = ["search", "fun", "target", "user", "minion", "status", "result", "start", "end",
                     "include_system", "cursor"];
const FRESH_MS = 6000;  // how long a row that arrived or changed live stays marked
// focusBack: the job whose row takes the focus when the list is drawn (back from that job
// opened with the keyboard), whichever load draws first: a live refresh may overtake it.
const jobsShown = { key: null, params: new URLSearchParams(), next: null, fresh: new Map(), focusBack: null };
let jobsLoad = 0;
// A message put where the list goes (a mangled link): a list load still on its way would
// clear it when it lands, so it is superseded.
function supersedeJobs() { jobsLoad++; }
let pagerStack = null;  // the cursors before the page being opened (for Previous), until it shows

function jobSignature(job) {
  const m = job.minions || {};
  return [job.status, job.result, m.targeted, m.returned, m.failed, m.changed, job.end_time].join("|");
}

function jobRow(job, now) {
  const open = `#/job/${encodeURIComponent(job.jid)}`;
  const target = String(job.target ?? "");
  return el("tr", { class: `job result-${job.result || job.status}`, "data-jid": job.jid, ...go(open) },
    el("td", { class: "result" }, resultBadge(job.result) || job.status),
    el("td", { class: "jid" }, el("a", { href: open, tabindex: "-1" }, job.jid)),
    el("td", { class: "function" }, job.function, job.system ? el("span", { class: "tag" }, "bookkeeping") : "",
       job.arguments_preview ? el("span", { class: "args-preview", title: job.arguments_preview }, job.arguments_preview) : ""),
    el("td", { class: "target", title: target.length > 60 ? target : "" },
       target.length > 60 ? `${target.slice(0, 57)}…` : target, " ",
       el("span", { class: "sub" }, job.target_type || "")),
    el("td", { class: "opt" }, job.user),
    el("td", { class: "minions-count" }, minionsText(job.minions)),
    el("td", { class: "opt duration" }, jobDuration(job, now)),
    el("td", { class: "start" }, timeEl(job.start_time, now)));
}

// Filters that have no field of their own (the activity chart's time range) as chips that
// remove themselves, and one chip to clear every filter.
function jobChips(params) {
  const chips = $("#job-chips"); chips.replaceChildren();
  const remove = (...keys) => {
    const left = new URLSearchParams(params);
    for (const key of [...keys, "cursor"]) left.delete(key);
    goTo("jobs", left);
  };
  for (const [key, word] of [["start", "From"], ["end", "Before"]]) {
    const value = params.get(key);
    if (!value) continue;
    const when = new Date(value);
    const text = Number.isNaN(when.getTime()) ? value : when.toLocaleString();
    chips.append(el("button", { type: "button", class: "chip", "data-filter": key,
                                "aria-label": `Remove the filter: ${word.toLowerCase()} ${text}`,
                                onclick: () => remove(key) },
                    `${word} ${text} `, el("span", { "aria-hidden": "true" }, "\u2715")));
  }
  const active = JOB_FILTERS.filter((key) => key !== "cursor" && params.get(key));
  if (active.length) {
    chips.append(el("button", { type: "button", class: "chip clear", onclick: () => remove(...active) },
                    "Clear all filters"));
  }
  chips.hidden = !chips.childElementCount;
}

// The list as the URL says (#/jobs?fun=state.*&result=failed&cursor=...). quiet: a refresh
// for the live stream, which keeps the rows on screen until the new ones are in.
async function loadJobs(params = hashState().params, quiet = false) {
  document.title = "Jobs · halite";
  const query = new URLSearchParams({ limit: "50" });
  for (const key of JOB_FILTERS) if (params.get(key)) query.set(key, params.get(key));
  const key = query.toString();
  if (!quiet) {
    fillForm($("#filters"), params);
    jobChips(params);
    // Previous: the cursors before this page, kept in this history entry (they survive a reload).
    if (pagerStack && pagerStack.hash === location.hash) {
      history.replaceState({ ...(history.state || {}), jobsStack: pagerStack.stack, backIsPrev: pagerStack.back }, "");
    }
    pagerStack = null;
    // Taken once: a later load of the list (a filter, a page) does not go back to the row.
    jobsShown.focusBack = typeof jobShown === "object" ? jobShown.jid : null;
    if (typeof jobShown === "object") jobShown.jid = null;
  }
  const first = !params.get("cursor");
  $("#activity").hidden = !first;
  if (first && !quiet && typeof loadActivity === "function") loadActivity();
  const mine = ++jobsLoad;
  const body = $("#jobs tbody");
  const same = jobsShown.key === key;
  if (!quiet || !same) noteRow(body, "Loading…");
  try {
    shownAs("jobs-view", "/api/jobs", query, "jobs", "jobs");
    const page = await api("GET", `/api/jobs?${query}`);
    if (mine !== jobsLoad) return;  // a later load is on its way: this answer is stale
    $("#jobs-error").textContent = "";
    const now = Date.now();
    const before = new Map(same ? [...state.jobs].map(([jid, job]) => [jid, jobSignature(job)]) : []);
    state.jobs.clear();
    const rows = page.jobs.map((job) => {
      state.jobs.set(job.jid, job);
      const row = jobRow(job, now);
      // Marked: a row that arrived or changed since the list was last drawn with these filters.
      if (same && before.get(job.jid) !== jobSignature(job)) jobsShown.fresh.set(job.jid, now + FRESH_MS);
      if ((jobsShown.fresh.get(job.jid) || 0) > now) markFresh(row, jobsShown.fresh.get(job.jid) - now);
      return row;
    });
    // A live redraw keeps the keyboard's place: the focused row is focused again.
    const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest("#jobs tbody tr");
    const keep = focused ? focused.dataset.jid : null;
    body.replaceChildren(...rows);
    if (keep) { const again = rows.find((r) => r.dataset.jid === keep); if (again) again.focus({ preventScroll: true }); }
    if (!rows.length) noteRow(body, "No jobs match these filters.", "empty");
    // Back from a job opened with the keyboard: the focus returns to its row (also when a
    // live refresh overtook the load that went back, and drew the list first).
    const opened = jobsShown.focusBack;
    jobsShown.focusBack = null;
    if (opened && focusLost()) {
      const back = rows.find((r) => r.dataset.jid === opened);
      if (back) back.focus();
    }
    jobsShown.key = key; jobsShown.params = new URLSearchParams(params); jobsShown.next = page.next;
    $("#next").disabled = !page.next; $("#prev").disabled = first;
    $("#jobs-caption").textContent = `Jobs, newest first${first ? "" : " (a later page)"}`;
  } catch (err) {
    if (mine !== jobsLoad) return;
    jobsShown.focusBack = null;  // not carried to a later redraw, which may be much later
    $("#jobs-error").textContent = errorText(err);
    if (!quiet || !same) body.replaceChildren();
  }
}

function focusLost() {
  const active = document.activeElement;
  return !active || active === document.body || Boolean(active.closest("[hidden]"));
}

function markFresh(row, ms) {
  row.classList.add("fresh");
  setTimeout(() => row.classList.remove("fresh"), ms);
}

// The pager: the cursor is in the URL; Previous goes back in the history when it came from
// the previous page (also after a reload), else to the cursor kept before it, else page 1.
function nextPage(e) {
  e.stopImmediatePropagation();
  if (!jobsShown.next) return;
  const params = new URLSearchParams(jobsShown.params);
  const stack = [...((history.state || {}).jobsStack || []), params.get("cursor") || ""];
  params.set("cursor", jobsShown.next);
  pagerStack = { hash: viewHash("jobs", params), stack, back: true };
  goTo("jobs", params);
}

function previousPage(e) {
  e.stopImmediatePropagation();
  const here = history.state || {};
  if (here.backIsPrev) { history.back(); return; }
  const stack = here.jobsStack || [];
  const params = new URLSearchParams(jobsShown.params);
  const cursor = stack.length ? stack[stack.length - 1] : "";
  if (cursor) params.set("cursor", cursor); else params.delete("cursor");
  pagerStack = { hash: viewHash("jobs", params), stack: stack.slice(0, -1), back: false };
  goTo("jobs", params);
}

function filterJobs(e) {
  e.preventDefault(); e.stopImmediatePropagation();
  goTo("jobs", formParams(e.target));
}

// Registered now, before app.js's own listeners (added when the document is loaded), which
// they supersede: the filters, the page and the view live in the URL.
$("#filters").addEventListener("submit", filterJobs);
$("#include-system").addEventListener("change", () => $("#filters").requestSubmit());
$("#next").addEventListener("click", nextPage);
$("#prev").addEventListener("click", previousPage);

// ---------------------------------------------------------------- live
// The event stream redraws the first page (throttled), marking the rows that arrived or
// changed, and the activity chart (less often). A second redraw a moment later catches a
// return that reached the bus before the index.
const live = { soon: null, again: null, activity: 0, activityTimer: null, job: null, jobAgain: null,
               retry: 1000, loading: false, more: false };
const ACTIVITY_EVERY_MS = 15000;

// One live reload at a time: events that come while one is on its way ask for one more
// after it, so that a slow answer is shown rather than superseded again and again.
async function liveRefresh() {
  const { view, params } = hashState();
  if ($("#jobs-view").hidden || view !== "jobs" || params.get("cursor")) return;
  if (live.loading) { live.more = true; return; }
  live.loading = true;
  try { await loadJobs(params, true); } finally { live.loading = false; }
  if (live.more) { live.more = false; setTimeout(liveRefresh, 1000); }
}

function liveActivity() {
  if (typeof loadActivity !== "function" || live.activityTimer) return;
  const wait = Math.max(0, live.activity + ACTIVITY_EVERY_MS - Date.now());
  live.activityTimer = setTimeout(() => {
    live.activityTimer = null; live.activity = Date.now();
    const { view, params } = hashState();
    if (!$("#jobs-view").hidden && view === "jobs" && !params.get("cursor")) loadActivity();
  }, wait);
}

function liveChanged(event) {
  if (!live.soon) live.soon = setTimeout(() => { live.soon = null; liveRefresh(); }, 300);
  clearTimeout(live.again);
  live.again = setTimeout(liveRefresh, 2500);
  liveActivity();
  let jid = null;
  try { jid = JSON.parse(event.data).jid; } catch { /* an event without a job: nothing to follow */ }
  if (jid && typeof refreshJob === "function" && jobShown.job && jobShown.job.jid === jid) liveJob(jid);
}

// The job on screen follows its returns: at most one fetch a second, again once the index
// has the return (it may reach the bus a moment earlier).
function liveJob(jid) {
  if (!live.job) live.job = setTimeout(() => { live.job = null; refreshJob(jid); }, 300);
  clearTimeout(live.jobAgain);
  live.jobAgain = setTimeout(() => refreshJob(jid), 2500);
}

function startStream() {
  if (state.stream || !state.token) return;
  const stream = new EventSource(`/api/jobs/stream?token=${encodeURIComponent(state.token)}`);
  state.stream = stream;
  for (const type of ["new", "return", "complete"]) stream.addEventListener(type, liveChanged);
  stream.addEventListener("open", () => { live.retry = 1000; $("#live-note").textContent = ""; });
  stream.onerror = () => {
    if (stream.readyState !== EventSource.CLOSED) return;  // the browser reconnects by itself
    // Refused (a session that ended, a server that answered 503): said, and tried again
    // after a while; a session that ended is found by asking who we are.
    if (state.stream === stream) state.stream = null;
    $("#live-note").textContent = "Live updates paused: the event stream was refused; trying again…";
    setTimeout(async () => {
      if (!state.token || !$("#live").checked || state.stream) return;
      try { await api("GET", "/api/me"); } catch { return; }  // a 401 goes to the login form
      startStream();
    }, live.retry);
    live.retry = Math.min(live.retry * 2, 60000);
  };
}

function stopStream() { if (state.stream) { state.stream.close(); state.stream = null; } }
