// One job's view: its minions, their states and returns, kill and re-run. Loaded after app.js
// and jobs.js (shared helpers), no build step.
"use strict";

// ---------------------------------------------------------------- YAML
// A small, safe YAML writer for JSON values (a minion's return): block style, strings quoted
// whenever YAML 1.1 or 1.2 could read them as anything else (true, no, ~, 012, 1e3, 2026-11-28,
// .inf, a leading indicator, ': ' or ' #'), multi-line text as a literal block.
const YAML_WORDS = /^(?:y|n|yes|no|true|false|on|off|null|~)$/i;
const YAML_PLAIN = /^[A-Za-z_/][A-Za-z0-9_/.|@%+=,()'-]*(?: [A-Za-z0-9_/.|@%+=,()'-]+)*$/;
// What no style but a double-quoted escape can hold: controls, YAML 1.1's line breaks, a BOM.
const YAML_UNSAFE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029\ufeff\ufffe\uffff]/;

function yamlQuoted(text) {
  return JSON.stringify(text).replace(/[\u007f-\u009f\u2028\u2029\ufeff\ufffe\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

function yamlScalar(value) {
  if (value === null || value === undefined) return "null";
  if (typeof value === "boolean") return String(value);
  if (typeof value === "number") {  // YAML 1.1 reads 1e+21 as text: 1.0e+21 is a float to both
    const text = String(value);
    return /e/.test(text) && !text.includes(".") ? text.replace("e", ".0e") : text;
  }
  const text = String(value);
  return YAML_PLAIN.test(text) && !YAML_WORDS.test(text) ? text : yamlQuoted(text);
}

// A literal block (|) for text of several lines: its lines indented by two under the key or
// dash at `column`, with an explicit indentation (a diff's first line may start with a space)
// and the chomping that gives its trailing newlines back.
function yamlBlock(text, column) {
  if (!text.includes("\n") || YAML_UNSAFE.test(text) || !text.trim()) return null;
  const trailing = /\n*$/.exec(text)[0].length;
  const chomp = trailing === 0 ? "-" : trailing === 1 ? "" : "+";
  const body = trailing ? text.slice(0, -1) : text;
  const pad = " ".repeat(column + 2);
  return `|2${chomp}\n` + body.split("\n").map((line) => (line ? pad + line : "")).join("\n");
}

function isContainer(value) { return value !== null && typeof value === "object"; }

function yamlEmpty(value) {
  if (Array.isArray(value)) return value.length ? null : "[]";
  return Object.keys(value).length ? null : "{}";
}

// `value` (a container) as block lines at `column`.
function yamlLines(value, column) {
  const pad = " ".repeat(column);
  const lines = [];
  const entries = Array.isArray(value) ? value.map((v) => [null, v]) : Object.entries(value);
  for (const [key, item] of entries) {
    // A key over 1,024 characters (a state's key holds its name: a long script) is
    // written in YAML's explicit form, which has no such limit.
    const shown = key === null ? null : yamlScalar(key);
    const head = key === null ? `${pad}-` : shown.length > 1000 ? `${pad}? ${shown}\n${pad}:` : `${pad}${shown}:`;
    if (isContainer(item)) {
      const empty = yamlEmpty(item);
      if (empty) { lines.push(`${head} ${empty}`); continue; }
      const inner = yamlLines(item, column + 2);
      if (key === null) lines.push(`${pad}- ${inner[0].slice(column + 2)}`, ...inner.slice(1));
      else lines.push(head, ...inner);
    } else {
      const block = typeof item === "string" ? yamlBlock(item, column) : null;
      lines.push(`${head} ${block ?? yamlScalar(item)}`);
    }
  }
  return lines;
}

function yaml(value) {
  if (!isContainer(value)) return `${yamlScalar(value)}\n`;
  return `${yamlEmpty(value) ?? yamlLines(value, 0).join("\n")}\n`;
}

// ---------------------------------------------------------------- one job's parts
// A minion's result in the job, as the list's: running, failed, changed or pass.
function minionResult(m) {
  if (m.state === "running") return "running";
  if (m.failed) return "failed";
  const counts = m.highstate && m.highstate.counts;
  return counts && counts.changed ? "changed" : "pass";
}

function stateResult(s) {
  if (s.result === "failed") return "failed";
  if (s.result === "not_run") return "not_run";
  return s.changes && Object.keys(s.changes).length ? "changed" : "pass";
}

const MINION_STATES = { returned: "returned", running: "running", no_return: "no return", killed: "killed" };

// Changes as a person reads them: a diff (file.managed) coloured line by line, the rest as
// indented key: value.
function diffView(text) {
  const pre = el("pre", { class: "diff" });
  const lines = text.replace(/\n$/, "").split("\n");
  for (const line of lines) {
    const kind = /^(\+\+\+|---)( |$)/.test(line) ? "file" : line.startsWith("@@") ? "hunk"
      : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "same";
    const sign = kind === "add" || kind === "del" ? el("b", { class: "sign" }, line[0]) : "";
    pre.append(el("span", { class: kind }, sign, `${sign ? line.slice(1) : line}\n`));
  }
  return pre;
}

function changesView(changes) {
  if (!isContainer(changes)) return changes == null || changes === "" ? [] : [el("pre", { class: "changes" }, yaml(changes))];
  const parts = [];
  const rest = Array.isArray(changes) ? changes : { ...changes };
  if (!Array.isArray(changes) && typeof changes.diff === "string") {
    parts.push(diffView(changes.diff)); delete rest.diff;
  }
  if (yamlEmpty(rest) === null) parts.push(el("pre", { class: "changes" }, yaml(rest)));
  return parts;
}

// A state table: run order first; a click on ID, Function, Result or Duration sorts by it
// (again: the other way). Each state is a tbody of its own, its changes in a second row.
const STATE_COLUMNS = [
  { key: "order", label: "#", value: (s, i) => s.run_num ?? i },
  { key: "result", label: "Result", value: (s) => ["failed", "changed", "not_run", "pass"].indexOf(stateResult(s)) },
  { key: "id", label: "ID", value: (s) => String(s.id ?? "") },
  { key: "function", label: "Function", value: (s) => String(s.function ?? "") },
  { key: null, label: "Name" },
  { key: "duration", label: "Duration", value: (s) => s.duration_ms ?? -1 },
  { key: null, label: "Comment" },
];

function stateTable(states, caption) {
  const table = el("table", { class: "states" }, el("caption", {}, caption));
  const headers = STATE_COLUMNS.map((c) => {
    const th = el("th", { scope: "col" });
    if (c.key) {
      th.dataset.sort = c.key;
      th.setAttribute("aria-sort", c.key === "order" ? "ascending" : "none");
      th.append(el("button", { type: "button", class: "sort", onclick: () => sortBy(c) }, c.label));
    } else th.append(c.label);
    return th;
  });
  table.append(el("thead", {}, el("tr", {}, ...headers)));
  const groups = states.map((s, i) => {
    const kind = stateResult(s);
    const group = el("tbody", { class: `state state-${kind}`, "data-state": s.id ?? "" },
      el("tr", {}, el("td", { class: "num" }, s.run_num ?? i), el("td", {}, resultBadge(kind)),
         el("td", { class: "id" }, s.id ?? ""), el("td", {}, s.function ?? ""), el("td", {}, s.name ?? ""),
         el("td", { class: "num" }, s.duration_ms == null ? "" : span(s.duration_ms)),
         el("td", { class: "comment" }, commentText(s.comment))));
    const changes = changesView(s.changes);
    if (changes.length) {
      group.append(el("tr", { class: "changes-row" },
        el("td", { colspan: String(STATE_COLUMNS.length) }, el("span", { class: "sub" }, "Changes"), ...changes)));
    }
    return { group, s, i };
  });
  table.append(...groups.map((g) => g.group));
  let current = { key: "order", dir: 1 };
  function sortBy(column) {
    const dir = current.key === column.key ? -current.dir : 1;
    current = { key: column.key, dir };
    groups.sort((a, b) => {
      const x = column.value(a.s, a.i), y = column.value(b.s, b.i);
      const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return order * dir || a.i - b.i;
    });
    table.append(...groups.map((g) => g.group));
    for (const th of headers) {
      if (th.dataset.sort) th.setAttribute("aria-sort", th.dataset.sort !== column.key ? "none" : dir > 0 ? "ascending" : "descending");
    }
  }
  return el("div", { class: "table-wrap" }, table);
}

// A minion's raw return, to copy or to save as JSON or YAML.
function returnTools(job, m) {
  const status = el("span", { role: "status", class: "tool-status" });
  const name = `halite-${safe(job.jid)}-${safe(m.minion)}`;
  const copy = async () => {
    try {
      if (!navigator.clipboard) throw new Error("this browser does not allow copying here");
      await navigator.clipboard.writeText(JSON.stringify(m.return, null, 2));
      status.textContent = "Copied.";
    } catch (err) { status.textContent = `Not copied: ${err.message}`; }
  };
  return el("p", { class: "return-tools" },
    el("button", { type: "button", class: "copy-json", onclick: copy }, "Copy JSON"),
    el("button", { type: "button", class: "save-json",
                   onclick: () => save(new Blob([JSON.stringify(m.return, null, 2) + "\n"], { type: "application/json" }), `${name}.json`) },
       "Download JSON"),
    el("button", { type: "button", class: "save-yaml",
                   onclick: () => save(new Blob([yaml(m.return)], { type: "application/yaml" }), `${name}.yaml`) },
       "Download YAML"),
    status);
}

// What a minion said: its states, its render errors, or its return written readably.
function returnView(job, m) {
  const hs = m.highstate;
  if (m.state === "running") return [el("p", { class: "sub" }, "Running: no return yet.")];
  if (m.state === "no_return") return [el("p", { class: "sub" }, "No return: the minion did not answer, or no longer ran the job.")];
  if (m.state === "killed") return [el("p", { class: "sub" }, "Killed: no return.")];
  const parts = [];
  if (m.truncated) parts.push(el("p", { class: "note" }, "The return was larger than the index keeps (max_return_bytes): what is stored is cut short."));
  if (hs && hs.kind === "states") {
    const failing = hs.states.filter((s) => s.result === "failed").length;
    parts.push(stateTable(hs.states, `${many(hs.states.length, "state")} of ${m.minion}` +
                                     (failing ? `, ${failing} failed` : "") + " (click a heading to sort)"));
  } else if (hs && hs.kind === "render_error") {
    parts.push(el("p", {}, "The states did not render:"), el("pre", { class: "error" }, (hs.errors || []).join("\n")));
  } else if (hs && hs.kind === "already_running") {
    parts.push(el("p", {}, "Another state run was in progress:"), el("pre", {}, (hs.messages || []).join("\n")));
  } else if (m.return === null || m.return === undefined) {
    parts.push(el("p", { class: "sub" }, "The minion returned nothing (null)."));
  } else if (typeof m.return === "string") {
    parts.push(el("pre", { class: "return" }, m.return));
  } else {
    parts.push(el("pre", { class: "return" }, yaml(m.return)));
  }
  return parts;
}

// "returned 3 min ago · retcode 2 · success false · 1.2 s": nothing of what a running
// minion has not said yet.
function minionFacts(m) {
  const facts = [];
  if (m.state === "returned") {
    facts.push(el("span", {}, "returned ", timeEl(m.returned_at)));
    if (m.retcode != null) facts.push(el("span", {}, `retcode ${m.retcode}`));
    if (m.success != null) facts.push(el("span", {}, `success ${m.success}`));
    const ms = m.highstate && m.highstate.counts && m.highstate.counts.duration_ms;
    if (ms != null) facts.push(el("span", {}, span(ms)));
  } else if (m.returned_at) {
    facts.push(el("span", {}, `${MINION_STATES[m.state] || m.state} `, timeEl(m.returned_at)));
  }
  return facts;
}

function minionBlock(job, m, open) {
  const result = minionResult(m);
  const block = el("details", { class: `minion result-${result}${m.failed ? " failed" : ""}`, "data-minion": m.minion });
  if (open) block.open = true;
  block.append(el("summary", {},
    el("h3", {}, m.minion), " ", resultBadge(result),
    m.state !== "returned" && m.state !== "running" ? el("span", { class: "tag" }, MINION_STATES[m.state] || m.state) : "",
    el("span", { class: "facts" }, ...minionFacts(m))));
  // Its contents are made when it first opens: a job of thousands of minions stays quick.
  const fill = () => {
    if (block.dataset.filled) return;
    block.dataset.filled = "1";
    block.append(el("p", { class: "minion-links" },
      link(`#/minion/${encodeURIComponent(m.minion)}`, `${m.minion}'s history`)));
    if (m.state === "returned") block.append(returnTools(job, m));
    block.append(...returnView(job, m));
  };
  if (open) fill(); else block.addEventListener("toggle", () => { if (block.open) fill(); });
  return block;
}

// Failed first, then running, then by id (the API's order, kept when it is that already).
function sortedMinions(results) {
  const rank = (m) => (m.failed ? 0 : m.state === "running" ? 1 : 2);
  return results.map((m, i) => ({ m, i })).sort((a, b) => rank(a.m) - rank(b.m) || a.i - b.i).map((x) => x.m);
}

function minionTable(listed, blocks) {
  const head = ["Minion", "Result", "State", "Retcode", "Success", "Duration", "States", "Failed states", "Returned"];
  const body = el("tbody");
  listed.forEach((m, i) => {
    const hs = m.highstate;
    const counts = hs && hs.counts;
    const failing = hs && hs.failing ? hs.failing.map((f) => f.id) : [];
    const answered = m.state === "returned";
    const reveal = () => {
      const block = blocks[i];
      block.open = true;
      block.scrollIntoView({ block: "start" });
      block.querySelector("summary").focus({ preventScroll: true });
    };
    body.append(el("tr", { class: `minion-row result-${minionResult(m)}`, "data-minion": m.minion, tabindex: "0",
                           onclick: (e) => { if (!e.target.closest("a")) reveal(); },
                           onkeydown: (e) => { if (e.key === "Enter" && e.target === e.currentTarget) reveal(); } },
      el("th", { scope: "row" }, m.minion), el("td", {}, resultBadge(minionResult(m))),
      el("td", {}, MINION_STATES[m.state] || m.state),
      el("td", { class: "num" }, answered ? m.retcode ?? "" : ""),
      el("td", {}, answered && m.success != null ? String(m.success) : ""),
      el("td", { class: "num" }, counts && counts.duration_ms != null ? span(counts.duration_ms) : ""),
      el("td", {}, counts ? countsText(counts) : ""),
      stateLinks(failing),
      el("td", {}, timeEl(m.returned_at))));
  });
  return el("div", { class: "table-wrap" },
    el("table", { id: "minion-results", class: "minion-results" },
       el("caption", {}, "Minions, failed first"),
       el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col" }, h)))), body));
}

const AUTO_OPEN = 20;

// The minions part: drawn again without a fetch when only the Failed only switch changes.
// opened: the minions whose details were open (a live redraw keeps them open).
function drawMinions(job, failedOnly, opened = null) {
  const results = sortedMinions(job.minion_results);
  const listed = failedOnly ? results.filter((m) => m.failed) : results;
  // Failed minions open by themselves, the first AUTO_OPEN of them: a job that failed on
  // thousands must not build thousands of state tables before it shows.
  let autoOpen = AUTO_OPEN;
  const blocks = listed.map((m) => minionBlock(job, m, opened ? opened.has(m.minion)
    : (m.failed ? autoOpen-- > 0 : listed.length <= 10)));
  const parts = [];
  if (!results.length) parts.push(el("p", { class: "sub" }, "No minion was targeted."));
  else if (!listed.length) parts.push(el("p", { class: "sub" }, "No minion failed this job."));
  else parts.push(minionTable(listed, blocks));
  if (listed.length < results.length) {
    parts.push(el("p", { class: "sub hidden-count" },
                  `${many(results.length - listed.length, "minion")} that did not fail ${results.length - listed.length === 1 ? "is" : "are"} hidden.`));
  }
  $("#minions").replaceChildren(...parts, ...blocks);
}

// A state's comment as Salt's CLI shows it: a list is one line each; anything else not
// text is its JSON (not "[object Object]").
function commentText(comment) {
  if (comment == null) return "";
  if (Array.isArray(comment)) return comment.map((c) => (typeof c === "string" ? c : JSON.stringify(c))).join("\n");
  return typeof comment === "string" ? comment : JSON.stringify(comment);
}

function argText(value) { return typeof value === "string" ? value : JSON.stringify(value); }

function argumentsView(job) {
  const args = job.arguments || [], kwargs = job.kwargs || {};
  const list = el("span", { class: "args" });
  for (const a of args) list.append(el("code", {}, argText(a)), " ");
  for (const [k, v] of Object.entries(kwargs)) list.append(el("code", {}, `${k}=${argText(v)}`), " ");
  return list.childElementCount ? list : el("span", { class: "sub" }, "none");
}

function jobMeta(job) {
  const m = job.minions || {};
  const minions = `${m.returned}/${m.targeted} returned` + (m.failed ? `, ${m.failed} failed` : "") +
                  (m.changed ? `, ${m.changed} changed` : "");
  const rows = [
    ["Result", resultBadge(job.result) || job.status],
    ["Status", job.status],
    ["Target", el("span", {}, String(job.target ?? ""), " ", el("span", { class: "sub" }, job.target_type || ""))],
    ["User", job.user],
    ["Started", timeEl(job.start_time)],
    ["Ended", job.end_time ? timeEl(job.end_time) : "—"],
    ["Duration", jobDuration(job)],
    ["Minions", minions],
    ["Arguments", argumentsView(job)],
  ];
  if (job.master_id) rows.push(["Master", job.master_id]);
  const meta = $("#job-meta");
  meta.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  const counts = $("#job-counts"); counts.replaceChildren();
  if (job.states) {
    const s = job.states;
    counts.append(el("span", {}, `${many(s.states, "state")} on the minions:`),
                  el("span", {}, `${s.failed} `, resultBadge("failed")),
                  el("span", {}, `${s.passed} `, resultBadge("pass")),
                  // A state that changed something also passed or failed: counted twice.
                  el("span", { title: "states that changed something, whether they passed or failed" },
                     `${s.changed} `, resultBadge("changed")),
                  s.duration_ms != null ? el("span", { class: "sub" }, `${span(s.duration_ms)} of state runs in all`) : "");
  }
}

// ---------------------------------------------------------------- one job
// Each load of the job view is numbered: an answer (a GET, a re-run) that arrives after
// another job was opened is dropped, never shown over it.
let jobLoad = 0;
// job: the job on screen (the Failed only switch redraws it); jid: the job the view was last
// opened for, even before its answer came (back to the list, the focus returns to its row).
const jobShown = { job: null, jid: null };

// Whether the job view is on screen for this job: an answer that lands after the operator
// moved on (another view, another job) must not draw into, or bring back, a view it left.
function jobOnScreen(jid) { return !$("#job-view").hidden && jobShown.jid === jid; }

function clearJob() {
  for (const id of ["#kill", "#rerun-failed", "#rerun-all"]) { const b = $(id); b.hidden = true; b.onclick = null; }
  for (const id of ["#job-meta", "#job-links", "#job-counts", "#minions"]) $(id).replaceChildren();
  $("#job-links").hidden = true;
  jobShown.job = null;
}

// params: the URL's (from route); none for a refresh after a kill or a re-run.
async function loadJob(jid, params) {
  const failedOnly = (params || hashState().params).get("failed") === "1";
  $("#failed-only").checked = failedOnly;
  if (params && jobShown.job && jobShown.job.jid === jid && !$("#job-view").hidden) {
    drawMinions(jobShown.job, failedOnly);  // the switch, or back and forth through it
    return;
  }
  show("job-view");
  jobShown.jid = jid;
  const mine = ++jobLoad;
  clearJob();
  $("#job-title").textContent = `Job ${jid}`;
  $("#job-status").textContent = "Loading…";
  // Opened from a row with the keyboard: the focus goes on with the view, not to the page's top.
  if (focusLost()) $("#job-title").focus({ preventScroll: true });
  try {
    shownAs("job-view", `/api/jobs/${encodeURIComponent(jid)}`, {}, null, `job-${safe(jid)}`);
    const job = await api("GET", `/api/jobs/${encodeURIComponent(jid)}`);
    if (mine !== jobLoad || !jobOnScreen(jid)) return;
    $("#job-status").textContent = "";
    showJob(job, mine);
  } catch (err) {
    if (mine === jobLoad && jobOnScreen(jid)) { $("#job-title").textContent = errorText(err); $("#job-status").textContent = ""; }
  }
}

// The job on screen, drawn from its answer; again (opened details kept open) when the live
// stream says one of its minions returned or it completed.
function showJob(job, mine, opened = null) {
  document.title = `${job.function} ${job.jid} · halite`;
  $("#job-title").textContent = `${job.function} — ${job.jid}`;
  jobMeta(job);
  jobShown.job = job;
  drawMinions(job, $("#failed-only").checked, opened);
  const kill = $("#kill");
  kill.hidden = !(job.may_kill && job.status === "running");
  kill.onclick = async () => {
    if (!confirm(`Kill job ${job.jid} (${shownName(job.function)}) on the minions still running it?`)) return;
    kill.disabled = true;  // until answered: a second click must not kill twice
    try {
      const result = await api("POST", `/api/jobs/${encodeURIComponent(job.jid)}/kill`);
      if (!jobOnScreen(job.jid)) return;  // the operator moved on: the audit log has it
      $("#kill-result").textContent = `signalled: ${result.signalled.join(", ") || "none"}`;
      loadJob(job.jid);
    } catch (err) { if (jobOnScreen(job.jid)) $("#kill-result").textContent = errorText(err); }
    finally { kill.disabled = false; }
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
}

// Live: the job on screen fetched again, quietly (a failure leaves it as it was). Not a new
// load of the view: a re-run's answer still on its way is still this view's.
async function refreshJob(jid) {
  if ($("#job-view").hidden || !jobShown.job || jobShown.job.jid !== jid) return;
  const mine = jobLoad;
  let job;
  try { job = await api("GET", `/api/jobs/${encodeURIComponent(jid)}`); } catch { return; }
  if (mine !== jobLoad || !jobOnScreen(jid) || !jobShown.job || jobShown.job.jid !== jid) return;
  const opened = new Set([...document.querySelectorAll("#minions details.minion[open]")].map((d) => d.dataset.minion));
  showJob(job, mine, opened);
}

// The Failed only switch is in the URL (#/job/<jid>?failed=1): back and reload keep it.
$("#failed-only").addEventListener("change", (e) => {
  const { arg, params } = hashState();
  if (e.target.checked) params.set("failed", "1"); else params.delete("failed");
  goTo("job", params, arg);
});

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
      if (load !== jobLoad || !jobOnScreen(job.jid)) return;  // the operator moved on
      result.replaceChildren("Re-run as ", ...jobLinks([outcome.jid]), ` on ${many(outcome.minions.length, "minion")}`,
                             outcome.missing.length ? `; not published to (no accepted key): ${namesText(outcome.missing)}` : "");
      loadJob(job.jid);  // its re-runs now list the new job
    } catch (err) { if (load === jobLoad && jobOnScreen(job.jid)) result.replaceChildren(errorText(err)); }
    finally { for (const b of [$("#rerun-failed"), $("#rerun-all")]) b.disabled = false; }
  };
}
