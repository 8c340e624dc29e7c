// The Minions and States pages. Loaded after app.js (shared helpers), no build step.
"use strict";

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
