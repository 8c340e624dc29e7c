// One job's view: its minions, kill and re-run. Loaded after app.js (shared helpers), no build step.
"use strict";

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
