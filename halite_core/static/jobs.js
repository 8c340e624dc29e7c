// The Jobs page's list of jobs. Loaded after app.js (shared helpers), no build step.
"use strict";

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
