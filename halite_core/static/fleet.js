// The Minions and States pages. Loaded after app.js and jobs.js (shared helpers), no build step.
"use strict";

// ---------------------------------------------------------------- the fleet
// Each view's filters are in the URL (#/minions?failing=true&minion=web*,
// #/states?window=4h&result=changed); its list pages with the API's `next` cursor: "More"
// appends the next page. Each load is numbered: a late answer for filters no longer shown
// is dropped.
const fleetLoads = {};

// The API parameters of a view: its filters from the URL, only those the API takes.
function apiParams(params, keys) {
  const query = new URLSearchParams({ limit: "50" });
  for (const key of keys) if (params.get(key)) query.set(key, params.get(key));
  return query;
}

async function pageInto(kind, path, params, body, row, more, error, empty) {
  const mine = fleetLoads[kind];
  const button = $(more);
  const first = !params.get("cursor");
  if (first) { noteRow(body, "Loading…"); button.hidden = true; }  // no "More" of the list it replaces
  else { button.disabled = true; button.textContent = "Loading…"; }
  try {
    const data = await api("GET", `${path}?${params}`);
    if (mine !== fleetLoads[kind]) return null;
    $(error).textContent = "";
    const items = data[kind === "minion" ? "jobs" : kind === "state" ? "runs" : kind];
    const now = Date.now();
    if (first) body.replaceChildren();
    for (const item of items) body.append(row(item, now));
    if (first && !items.length) noteRow(body, empty, "empty");
    button.hidden = !data.next;
    button.onclick = () => {
      if (mine !== fleetLoads[kind]) return;  // a click that came as other filters' load began
      const next = new URLSearchParams(params); next.set("cursor", data.next);
      pageInto(kind, path, next, body, row, more, error, empty);
    };
    return data;
  } catch (err) {
    if (mine !== fleetLoads[kind]) return null;
    $(error).textContent = errorText(err);
    if (first) body.replaceChildren();
    return null;
  } finally {
    if (mine === fleetLoads[kind]) { button.disabled = false; button.textContent = "More"; }
  }
}

function startLoad(kind) { fleetLoads[kind] = (fleetLoads[kind] || 0) + 1; }

// A filter form goes to its view with the form's parameters (a new history entry).
function filterForm(selector, view, arg) {
  $(selector).addEventListener("submit", (e) => {
    e.preventDefault(); e.stopImmediatePropagation();  // before app.js's listener, which loads without the URL
    goTo(view, formParams(e.target), typeof arg === "function" ? arg() : arg);
  });
}

function jobLink(jid, text = jid) { return link(`#/job/${encodeURIComponent(jid)}`, text); }

function minionRow(m, now) {
  const run = m.state_run;
  return el("tr", { class: `link minion-row${m.failing ? " failing" : ""}`, "data-minion": m.minion,
                    ...go(`#/minion/${encodeURIComponent(m.minion)}`) },
    el("th", { scope: "row" }, link(`#/minion/${encodeURIComponent(m.minion)}`, m.minion)),
    el("td", {}, run ? resultBadge(run.result) : el("span", { class: "sub" }, "no state run")),
    el("td", {}, run ? jobLink(run.jid, run.function) : "", " ", run ? timeEl(run.start_time, now) : ""),
    el("td", {}, run ? countsText(run.counts) : ""),
    stateLinks(run ? run.failing_states : []),
    el("td", {}, m.last_job ? jobLink(m.last_job.jid, m.last_job.function) : "", " ",
       m.last_job ? timeEl(m.last_job.start_time, now) : ""));
}

async function loadMinions(params = hashState().params) {
  show("minions-view");
  document.title = "Minions · halite";
  fillForm($("#minion-filters"), params);
  const query = apiParams(params, ["minion", "failing"]);
  startLoad("minions");
  shownAs("minions-view", "/api/minions", query, "minions", "minions");
  await pageInto("minions", "/api/minions", query, $("#minions-table tbody"), minionRow, "#minions-more",
                 "#minions-error", "No minion matches these filters.");
}

function minionJobRow(j, now) {
  const took = j.returned_at && j.start_time ? new Date(j.returned_at) - new Date(j.start_time) : null;
  return el("tr", { class: `link${j.result === "failed" ? " failing" : ""}`, "data-jid": j.jid, ...go(`#/job/${encodeURIComponent(j.jid)}`) },
    el("td", {}, resultBadge(j.result)),
    el("td", { class: "jid" }, jobLink(j.jid)), el("td", {}, j.function, j.test_run ? el("span", { class: "tag" }, "dry run") : ""),
    el("td", {}, timeEl(j.start_time, now)), el("td", { class: "opt num" }, took == null || took < 0 ? "" : span(took)),
    el("td", {}, MINION_STATES[j.state] || j.state), el("td", {}, countsText(j.counts)), stateLinks(j.failing_states));
}

async function loadMinion(id, params = hashState().params) {
  show("minion-view");
  document.title = `${id} · halite`;
  $("#minion-title").textContent = id;
  fillForm($("#minion-job-filters"), params);
  const query = apiParams(params, ["fun", "result"]);
  startLoad("minion");
  shownAs("minion-view", `/api/minions/${encodeURIComponent(id)}`, query, "jobs", `minion-${safe(id)}`);
  await pageInto("minion", `/api/minions/${encodeURIComponent(id)}`, query, $("#minion-jobs tbody"), minionJobRow,
                 "#minion-more", "#minion-error", "No job of this minion matches these filters.");
}

function failingStateRow(s, now) {
  const open = `#/state/${encodeURIComponent(s.state_id)}`;
  return el("tr", { class: "link", "data-state": s.state_id, ...go(open) },
    el("th", { scope: "row" }, link(open, s.state_id)), el("td", {}, s.function), el("td", {}, s.name), el("td", {}, s.sls),
    el("td", { class: "num" }, s.minions), el("td", { class: "num" }, s.runs),
    el("td", { class: "opt" }, timeEl(s.first, now)), el("td", {}, timeEl(s.last, now)),
    el("td", { class: "comment" }, s.comment));
}

const WINDOW_WORDS = { "1h": "hour", "4h": "4 hours", "24h": "24 hours", "7d": "7 days" };

async function loadStates(params = hashState().params) {
  show("states-view");
  document.title = "States · halite";
  const form = $("#state-filters");
  fillForm(form, params);
  const query = apiParams(params, ["result", "window", "minion", "sls"]);
  const result = params.get("result") || form.elements.result.value;
  const within = params.get("window") || form.elements.window.value;
  $("#states-caption").textContent = `States that ${result === "changed" ? "changed something" : "failed"}` +
    ` in the last ${WINDOW_WORDS[within] || within}, busiest first`;
  startLoad("states");
  shownAs("states-view", "/api/states", query, "states", "states");
  await pageInto("states", "/api/states", query, $("#states-table tbody"), failingStateRow, "#states-more",
                 "#states-error", "No state matches these filters in this window.");
}

function stateRunRow(r, now) {
  return el("tr", { class: r.result === "failed" ? "failing" : "", "data-minion": r.minion },
    el("td", {}, resultBadge(r.result)),
    el("td", {}, link(`#/minion/${encodeURIComponent(r.minion)}`, r.minion)), el("td", { class: "jid" }, jobLink(r.jid)),
    el("td", {}, r.function), el("td", {}, r.name), el("td", {}, timeEl(r.start_time, now)),
    el("td", { class: "comment" }, r.comment));
}

async function loadState(id, params = hashState().params) {
  show("state-view");
  document.title = `${id} · halite`;
  $("#state-title").textContent = id;
  fillForm($("#state-run-filters"), params);
  const query = apiParams(params, ["result", "minion"]);
  const summary = $("#state-summary"); summary.replaceChildren();
  startLoad("state");
  shownAs("state-view", `/api/states/${encodeURIComponent(id)}`, query, "runs", `state-${safe(id)}`);
  const data = await pageInto("state", `/api/states/${encodeURIComponent(id)}`, query, $("#state-runs tbody"),
                              stateRunRow, "#state-more", "#state-error", "No failed or changed run of this state matches.");
  if (data) {
    const f = data.failed;
    summary.append(f.runs ? el("span", {}, resultBadge("failed"), ` in ${many(f.runs, "run")} on ${many(f.minions, "minion")}, first `,
                                timeEl(f.first), ", last ", timeEl(f.last))
                          : el("span", {}, resultBadge("pass"), " never failed"));
  }
}

filterForm("#minion-filters", "minions");
filterForm("#minion-job-filters", "minion", () => hashState().arg);
filterForm("#state-filters", "states");
filterForm("#state-run-filters", "state", () => hashState().arg);
$("#failing-only").addEventListener("change", () => $("#minion-filters").requestSubmit());
