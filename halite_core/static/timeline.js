// The timeline of jobs. Loaded after app.js (shared helpers), no build step.
"use strict";

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
