// The console's charts: jobs per hour by result (the Jobs view) and the timeline, drawn
// with Chart.js (vendor/: with its date-fns time adapter and its zoom plugin). Loaded
// after app.js (api, el, $, goTo), no build step. The page's Content-Security-Policy
// refuses inline styles: Chart.js draws on a canvas and sizes it through the CSSOM, which
// the policy allows, as does everything here.
"use strict";

const HaliteCharts = (() => {
  // Stacked bottom to top: what needs a look first sits on the axis.
  const RESULTS = ["failed", "changed", "pass", "running"];
  const LABELS = { failed: "Failed", changed: "Changed", pass: "Pass", running: "Running" };
  // Okabe–Ito, told apart with every common colour-blindness; charts.css may override
  // them (and does for a dark theme) through these custom properties.
  const FALLBACK = { failed: "#D55E00", changed: "#E69F00", pass: "#009E73", running: "#0072B2" };
  const HOUR = 3600 * 1000;
  const dark = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;
  // No animation for those who asked their system for less motion.
  const still = window.matchMedia ? window.matchMedia("(prefers-reduced-motion: reduce)") : null;
  const animation = (wanted) => (wanted && !(still && still.matches) ? undefined : false);
  const drawn = new Map();  // canvas -> how to draw it again (a change of colour scheme)

  function available() { return typeof window.Chart === "function"; }

  // The colours in force where the chart is: the results' from charts.css, the text the
  // page's own, the grid a faint version of it.
  function palette(node) {
    const style = getComputedStyle(node);
    const custom = (name, fallback) => style.getPropertyValue(name).trim() || fallback;
    const colours = {};
    for (const result of RESULTS) colours[result] = custom(`--chart-${result}`, FALLBACK[result]);
    colours.text = style.color;
    colours.grid = custom("--chart-grid", "rgba(128, 128, 128, 0.25)");
    colours.edge = custom("--chart-edge", "#ffffff");
    colours.select = custom("--chart-select", "rgba(0, 114, 178, 0.15)");
    return colours;
  }

  function count(n) { return Number(n || 0).toLocaleString("en"); }

  // 24-hour, as the axes (date-fns "HH:mm").
  function clock(ms) { return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" }); }

  function when(ms) { return new Date(ms).toLocaleString(); }

  function duration(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  // Text cut to n characters with an ellipsis; the full text is in the tooltip.
  function clip(text, n) { text = String(text ?? ""); return text.length > n ? `${text.slice(0, n - 1)}…` : text; }

  function destroy(canvas) {
    const chart = canvas && available() ? Chart.getChart(canvas) : undefined;
    if (chart) chart.destroy();
    drawn.delete(canvas);
  }

  // A table of the same numbers, for screen readers (and for anyone if the chart fails).
  function numbersTable(caption, head, rows) {
    return el("table", { class: "visually-hidden chart-numbers" },
      el("caption", {}, caption),
      el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...rows.map((row) => el("tr", {},
        ...row.map((cell, i) => el(i ? "td" : "th", i ? {} : { scope: "row" }, cell))))));
  }

  function axisColours(colours) {
    return { ticks: { color: colours.text }, grid: { color: colours.grid }, border: { color: colours.grid } };
  }

  // ------------------------------------------------------------ jobs per hour
  // Jobs per hour by result, stacked, from an /api/jobs/activity answer. Drawn anew in
  // the figure at each call (the chart before it destroyed); a click on a bar lists that
  // hour's jobs of that result.
  function activityChart(figure, activity, { animate = true } = {}) {
    const hours = activity.hours || [];
    const starts = hours.map((h) => new Date(h.hour_start).getTime());
    const title = `Jobs per hour, last ${hours.length} hours: ${count(activity.total)} jobs, `
                + `${count(activity.running)} running`;
    const sums = Object.fromEntries(RESULTS.map((r) => [r, hours.reduce((n, h) => n + (h.results?.[r] || 0), 0)]));
    const busiest = hours.reduce((best, h, i) => (h.count > (hours[best]?.count ?? -1) ? i : best), 0);
    const summary = `${title}. ${RESULTS.map((r) => `${count(sums[r])} ${r}`).join(", ")}.`
                  + (hours.length && hours[busiest].count ? ` Busiest hour ${clock(starts[busiest])}:`
                     + ` ${count(hours[busiest].count)} jobs.` : "");
    destroy(figure.querySelector("canvas"));
    const canvas = el("canvas", { role: "img", "aria-label": summary });
    const table = numbersTable("Jobs per hour by result",
      ["Hour", ...RESULTS.map((r) => LABELS[r]), "Total"],
      hours.map((h, i) => [`${when(starts[i])}`, ...RESULTS.map((r) => h.results?.[r] || 0), h.count]));
    figure.replaceChildren(el("figcaption", {}, title), el("div", { class: "chart-box" }, canvas), table);
    if (!available()) { figure.append(el("p", { class: "error" }, "The chart library did not load.")); return null; }

    const colours = palette(figure);
    const first = starts[0] ?? Date.now() - 24 * HOUR;
    const last = (starts[starts.length - 1] ?? Date.now()) + HOUR;
    const chart = new Chart(canvas, {
      type: "bar",
      data: {
        datasets: RESULTS.map((result) => ({
          label: LABELS[result], result,
          // Each bar in the middle of its hour, an hour wide: the ticks fall on its edges.
          data: hours.map((h, i) => ({ x: starts[i] + HOUR / 2, y: h.results?.[result] || 0, hour: starts[i] })),
          backgroundColor: colours[result], borderColor: colours.edge, borderWidth: 0,
          barPercentage: 1, categoryPercentage: 0.9,
        })),
      },
      options: {
        responsive: true, maintainAspectRatio: false, animation: animation(animate),
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { type: "time", stacked: true, min: first, max: last, offset: false,
               time: { unit: "hour", displayFormats: { hour: "HH:mm" } },
               ...axisColours(colours),
               ticks: { color: colours.text, maxRotation: 0, autoSkipPadding: 16 } },
          y: { stacked: true, beginAtZero: true, ...axisColours(colours),
               ticks: { color: colours.text, precision: 0 },
               title: { display: true, text: "jobs", color: colours.text } },
        },
        plugins: {
          legend: { position: "bottom", labels: { color: colours.text, boxWidth: 12, boxHeight: 12 } },
          tooltip: {
            filter: (item) => item.parsed.y > 0,
            callbacks: {
              title: (items) => items.length ? `${clock(items[0].raw.hour)}–${clock(items[0].raw.hour + HOUR)}` : "",
              label: (item) => `${item.dataset.label}: ${count(item.parsed.y)}`,
              footer: (items) => items.length ? `${count(hours[items[0].dataIndex].count)} jobs` : "",
            },
          },
        },
        onHover: (event, elements) => { canvas.style.cursor = elements.length ? "pointer" : "default"; },
        onClick: (event, elements, chart) => {
          // On a bar: that hour's jobs of that result; elsewhere in the hour: all of them.
          const [hit] = chart.getElementsAtEventForMode(event, "nearest", { intersect: true }, false);
          const at = hit || elements[0];
          if (!at) return;
          const hour = starts[at.index];
          const params = new URLSearchParams({ start: new Date(hour).toISOString(),
                                               end: new Date(hour + HOUR).toISOString() });
          if (hit) params.set("result", chart.data.datasets[hit.datasetIndex].result);
          goTo("jobs", params);
        },
      },
    });
    drawn.set(canvas, () => activityChart(figure, activity, { animate: false }));
    return chart;
  }

  // Fetch the last 24 hours' activity and draw it in #activity. Safe to call as often as
  // wanted (each view of the Jobs page, each live update): a call while one is under way
  // asks for one more fetch after it, and each draw replaces the chart before it.
  let activityRun = null, activityAgain = false;

  async function drawActivity() {
    const figure = $("#activity");
    if (!figure) return;
    try {
      activityChart(figure, await api("GET", "/api/jobs/activity?hours=24"),
                    { animate: !figure.querySelector("canvas") });
    } catch (err) {
      // Keep the last chart, if any, and say why it is not fresh.
      let line = figure.querySelector(".error");
      if (!line) { line = el("p", { class: "error", role: "alert" }); figure.append(line); }
      line.textContent = `Jobs per hour: ${err.message}`;
    }
  }

  function loadActivity() {
    if (activityRun) { activityAgain = true; return activityRun; }
    activityRun = (async () => {
      try { do { activityAgain = false; await drawActivity(); } while (activityAgain); }
      finally { activityRun = null; }
    })();
    return activityRun;
  }

  // ------------------------------------------------------------ timeline
  // Ticks on round times of the local clock (Chart.js counts its steps from the axis's
  // start: a window ending now would have ticks at 19:19, 19:31...), as many as fit, again
  // at each zoom; a tick at midnight, and every tick of a span of days, shows the date.
  const MINUTE = 60 * 1000;
  const STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880].map((m) => m * MINUTE);

  function roundTicks(scale) {
    const room = Math.max(2, Math.floor(scale.width / 70));
    const step = STEPS.find((s) => (scale.max - scale.min) / s <= room) || STEPS[STEPS.length - 1];
    const ticks = [];
    for (let local = Math.ceil(localMs(scale.min) / step) * step; ; local += step) {
      const value = local + new Date(local).getTimezoneOffset() * MINUTE;
      if (value > scale.max) break;
      if (value >= scale.min) ticks.push({ value, major: step >= 1440 * MINUTE || localMs(value) % (1440 * MINUTE) === 0 });
    }
    scale.ticks = ticks;
  }

  function localMs(ms) { return ms - new Date(ms).getTimezoneOffset() * MINUTE; }

  function tickLabel(value, index, ticks) {
    const tick = ticks[index];
    return tick && tick.major ? new Date(value).toLocaleDateString([], { day: "numeric", month: "short" }) : clock(value);
  }

  // The timeline: each job a floating bar from its start to its end (or now) on a time
  // axis, one row per function or user, coloured by result; zoom with a drag across the
  // chart, Ctrl + wheel or a pinch (when the zoom plugin has its touch library), each
  // bar's details in its tooltip and a click on it opens the job.
  //   canvas: where to draw (the chart before it destroyed); timeline: an
  //   /api/jobs/timeline answer; span: the window in ms; onZoom(chart): after each zoom.
  function timelineChart(canvas, timeline, { span, now = Date.now(), onZoom = () => {}, animate = true } = {}) {
    destroy(canvas);
    if (!available()) throw new Error("The chart library did not load.");
    const rows = timeline.rows || [];
    const keys = rows.map((row) => row.key);
    const ms = (iso) => new Date(iso).getTime();
    const end = Math.max(now, ...rows.flatMap((row) => row.bars.map((bar) => ms(bar.end))));
    const start = end - span;
    const colours = palette(canvas.closest("figure") || canvas);
    const box = canvas.parentElement;
    // A row's height whatever their number; the box is as tall as its rows (set through
    // the CSSOM: the policy refuses style attributes, not this).
    box.style.height = `${Math.max(180, keys.length * 28 + 90)}px`;
    const datasets = RESULTS.map((result) => ({
      label: LABELS[result], result,
      data: rows.flatMap((row) => row.bars.filter((bar) => bar.status === result).map((bar) => ({
        x: [Math.max(ms(bar.start), start), Math.max(ms(bar.end), ms(bar.start))], y: row.key, bar }))),
      // A thin edge at each bar's start tells apart jobs that follow each other closely.
      backgroundColor: colours[result], borderColor: colours.edge, borderWidth: { left: 1 }, borderSkipped: false,
      minBarLength: 5, grouped: false, barPercentage: 0.8, categoryPercentage: 1,
    }));
    const counts = Object.fromEntries(datasets.map((d) => [d.result, d.data.length]));
    for (const d of datasets) d.label = `${LABELS[d.result]} (${count(counts[d.result])})`;

    const chart = new Chart(canvas, {
      type: "bar",
      data: { labels: keys, datasets },
      options: {
        indexAxis: "y", responsive: true, maintainAspectRatio: false,
        animation: animation(animate),
        interaction: { mode: "nearest", intersect: true },
        scales: {
          x: { type: "time", min: start, max: end, position: "top", ...axisColours(colours),
               afterBuildTicks: roundTicks,
               ticks: { color: colours.text, maxRotation: 0, autoSkipPadding: 16, callback: tickLabel,
                        font: (context) => (context.tick && context.tick.major ? { weight: "bold" } : undefined) } },
          y: { type: "category", ...axisColours(colours),
               ticks: { color: colours.text, autoSkip: false,
                        // Long functions and user names cut to fit; the tooltip has them whole.
                        callback(value) { return clip(this.getLabelForValue(value), this.chart.width < 600 ? 14 : 30); } } },
        },
        plugins: {
          legend: { position: "bottom", labels: { color: colours.text, boxWidth: 12, boxHeight: 12 } },
          tooltip: {
            callbacks: {
              title: (items) => items.length ? items[0].raw.y : "",
              label: (item) => describe(item.raw.bar, now),
            },
          },
          zoom: {
            limits: { x: { min: "original", max: "original", minRange: 60 * 1000 } },
            zoom: {
              mode: "x",
              wheel: { enabled: true, modifierKey: "ctrl" },  // a plain wheel scrolls the page
              pinch: { enabled: true },
              drag: { enabled: true, threshold: 5, backgroundColor: colours.select, borderColor: colours.running, borderWidth: 1 },
              onZoomComplete: ({ chart }) => onZoom(chart),
            },
          },
        },
        onHover: (event, elements) => { canvas.style.cursor = elements.length ? "pointer" : "default"; },
        onClick: (event, elements) => {
          if (!elements.length) return;
          const { datasetIndex, index } = elements[0];
          location.hash = `#/job/${encodeURIComponent(datasets[datasetIndex].data[index].bar.jid)}`;
        },
      },
    });
    const failed = counts.failed || 0, total = datasets.reduce((n, d) => n + d.data.length, 0);
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `Timeline of ${count(total)} jobs by ${timeline.group_by} in ${keys.length} rows,`
                        + ` ${count(failed)} failed, ${count(counts.running)} running.`);
    drawn.set(canvas, () => onZoom(timelineChart(canvas, timeline, { span, now, onZoom, animate: false })));
    return chart;
  }

  // Zoom the time axis by a factor about the middle of what is shown (2: half the span);
  // out to the whole window or more is the window itself.
  function zoomBy(chart, factor) {
    const x = chart.scales.x, whole = chart.getInitialScaleBounds().x;
    const middle = (x.min + x.max) / 2, half = (x.max - x.min) / 2 / factor;
    if (half * 2 >= whole.max - whole.min) { chart.resetZoom("none"); return; }
    chart.zoomScale("x", { min: middle - half, max: middle + half }, "none");
  }

  // A bar's details, one line each, as its tooltip shows them.
  function describe(bar, now) {
    const start = new Date(bar.start).getTime(), end = new Date(bar.end).getTime();
    return [
      `Job ${bar.jid}`,
      `Function: ${bar.function ?? "?"}`,
      `User: ${bar.user ?? "?"}`,
      `Target: ${clip(bar.target ?? "?", 80)}`,
      `Start: ${when(start)}`,
      bar.status === "running" ? `Running for ${duration(Math.max(end, now) - start)}`
                               : `End: ${when(end)} (${duration(end - start)})`,
      `Minions: ${bar.minions ?? "?"}, failed: ${bar.failed_minions ?? 0}`,
      `Result: ${bar.status}`,
    ];
  }

  // A change of the colour scheme (dark or light) draws every chart again in its colours.
  if (dark && dark.addEventListener) {
    dark.addEventListener("change", () => {
      for (const [canvas, again] of [...drawn]) if (canvas.isConnected) again(); else drawn.delete(canvas);
    });
  }

  return { RESULTS, LABELS, activityChart, loadActivity, timelineChart, zoomBy, numbersTable, describe, clip, count, duration };
})();

// What the Jobs view calls (jobs.js): draw (or redraw) #activity.
function loadActivity() { return HaliteCharts.loadActivity(); }

function activityChart(figure, activity) { return HaliteCharts.activityChart(figure, activity); }

function timelineChart(canvas, timeline, options) { return HaliteCharts.timelineChart(canvas, timeline, options); }
