// The timeline of jobs: its controls, its URL and its answer; charts.js draws it. Loaded
// after app.js (shared helpers) and charts.js, no build step.
"use strict";

// ---------------------------------------------------------------- timeline
const TIMELINE = {
  windows: { "1h": ["the last hour", 3600e3], "4h": ["the last 4 hours", 4 * 3600e3],
             "24h": ["the last 24 hours", 24 * 3600e3], "7d": ["the last 7 days", 7 * 24 * 3600e3] },
  groups: ["function", "user"],
  asked: 0,      // the latest load: an older answer arriving after it is dropped
  chart: null,
};

// The window and grouping the URL asks for (the API's defaults for what it does not).
function timelineParams(params) {
  const asked = params.get("window"), groupBy = params.get("group_by");
  return { windowName: Object.hasOwn(TIMELINE.windows, asked) ? asked : "24h",
           groupBy: TIMELINE.groups.includes(groupBy) ? groupBy : "function" };
}

function timelineControls() {
  return new URLSearchParams({ window: $("#timeline-window").value, group_by: $("#group-by").value });
}

function zoomButtons(chart) {
  const zoomed = Boolean(chart && chart.isZoomedOrPanned && chart.isZoomedOrPanned());
  $("#timeline-reset").disabled = !zoomed;
  $("#timeline-zoom-out").disabled = !zoomed;
  $("#timeline-zoom-in").disabled = !chart;
}

// The router's call, with the view's URL parameters (#/timeline?window=4h&group_by=user);
// without them, those of the URL.
async function loadTimeline(params) {
  show("timeline-view");
  const { windowName, groupBy } = timelineParams(params instanceof URLSearchParams ? params : hashState().params);
  $("#timeline-window").value = windowName;
  $("#group-by").value = groupBy;
  // The URL says what is shown, defaults included (#/timeline from the menu), so that it
  // can be copied as it is; replaced in place, it adds no step to the history.
  const shownHash = viewHash("timeline", timelineControls());
  if (hashState().view === "timeline" && location.hash !== shownHash) history.replaceState(null, "", shownHash);
  const asked = ++TIMELINE.asked;
  const [words, span] = TIMELINE.windows[windowName];
  $("#timeline-caption").textContent = `Jobs of ${words} by ${groupBy}: loading…`;
  try {
    const data = await api("GET", `/api/jobs/timeline?${new URLSearchParams({ window: windowName, group_by: groupBy })}`);
    if (asked !== TIMELINE.asked) return;
    $("#timeline-error").textContent = "";
    drawTimeline(data, words, span);
  } catch (err) {
    if (asked !== TIMELINE.asked) return;
    $("#timeline-error").textContent = err.message;
    $("#timeline-caption").textContent = `Jobs of ${words} by ${groupBy}`;
    // Nothing left of another window or grouping to be taken for this one.
    if (TIMELINE.chart) TIMELINE.chart.destroy();
    TIMELINE.chart = null;
    $("#timeline-numbers").replaceChildren();
    $("#timeline-truncated").hidden = true;
    zoomButtons(null);
  }
}

function drawTimeline(data, words, span) {
  const bars = data.rows.flatMap((row) => row.bars);
  const failed = bars.filter((bar) => bar.status === "failed").length;
  const running = bars.filter((bar) => bar.status === "running").length;
  const { count, RESULTS, LABELS } = HaliteCharts;
  $("#timeline-caption").textContent = bars.length
    ? `Jobs of ${words} by ${data.group_by}: ${count(bars.length)} jobs in ${count(data.rows.length)} rows,`
      + ` ${count(failed)} failed, ${count(running)} running`
    : `No jobs in ${words}`;
  const notice = $("#timeline-truncated");
  notice.hidden = !data.truncated;
  notice.textContent = data.truncated
    ? `The window holds more than the ${count(bars.length)} jobs shown: the oldest are left out. A shorter window shows them all.`
    : "";
  $("#timeline-numbers").replaceChildren(HaliteCharts.numbersTable(
    `Jobs by ${data.group_by} and result`, [data.group_by, ...RESULTS.map((r) => LABELS[r]), "Total"],
    data.rows.map((row) => [row.key, ...RESULTS.map((r) => row.bars.filter((bar) => bar.status === r).length),
                            row.bars.length])));
  try {
    TIMELINE.chart = HaliteCharts.timelineChart($("#timeline-canvas"), data, {
      span, onZoom: (chart) => { TIMELINE.chart = chart; zoomButtons(chart); } });
  } catch (err) {
    TIMELINE.chart = null;
    $("#timeline-error").textContent = err.message;
  }
  zoomButtons(TIMELINE.chart);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const id of ["#timeline-window", "#group-by"]) {
    $(id).addEventListener("change", () => goTo("timeline", timelineControls()));
  }
  $("#timeline-reset").addEventListener("click", () => {
    if (TIMELINE.chart) TIMELINE.chart.resetZoom();
    zoomButtons(TIMELINE.chart);
  });
  // Zoom about the middle of what is shown: for a keyboard, and for touch screens, where
  // the drag is a mouse's only.
  $("#timeline-zoom-in").addEventListener("click", () => {
    if (TIMELINE.chart) HaliteCharts.zoomBy(TIMELINE.chart, 2);
    zoomButtons(TIMELINE.chart);
  });
  $("#timeline-zoom-out").addEventListener("click", () => {
    if (TIMELINE.chart) HaliteCharts.zoomBy(TIMELINE.chart, 0.5);
    zoomButtons(TIMELINE.chart);
  });
});
