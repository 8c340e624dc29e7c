// The Jobs page: plain JavaScript over halite's HTTP API (/api/openapi.json), no build step.
"use strict";

const state = { token: sessionStorage.getItem("halite-token"), me: null, stream: null, jobs: new Map() };
const $ = (selector) => document.querySelector(selector);

// The API's answer; a refusal or failure is an Error whose message a person can act on
// (err.status is the HTTP status, err.missing the permission a 403 names).
async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  const token = state.token;  // the session this call belongs to
  if (token) headers["X-Auth-Token"] = token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw Object.assign(new Error("halite cannot be reached: the master or its network is down; try again shortly"),
                        { status: 0 });
  }
  const data = await response.json().catch(() => ({ error: response.statusText }));
  // A 401 ends the session it was asked in, not one logged in since (a late answer).
  if (response.status === 401 && path !== "/api/login" && token === state.token) {
    logout();
    $("#login-error").textContent = "Your session has ended: log in again.";
  }
  if (!response.ok) {
    const err = new Error(failureText(response.status, data));
    err.status = response.status; err.missing = data.missing;
    throw err;
  }
  return data;
}

function failureText(status, data) {
  const said = data.error || `error ${status}`;
  if (status === 403 && data.missing) return `You may not do this: your roles lack ${data.missing}.`;
  if (status === 503) return `${said} (the server is up, what it depends on is not: try again shortly)`;
  if (status === 429) return `${said} (too many at once: try again shortly)`;
  if (status === 500) return `${said} (the master's log says more)`;
  return said;
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

// The login form offers the external auth the engine is configured with.
async function loginForm() {
  show("login-view");
  try {
    const info = await api("GET", "/api/login");
    const field = $("#eauth");
    field.placeholder = info.eauth;
    if (!field.value) field.value = info.eauth;
  } catch { /* the form still works: the server applies its default */ }
}

function logout() {
  if (state.token) fetch("/api/logout", { method: "POST", headers: { "X-Auth-Token": state.token } });
  state.token = null; state.me = null; sessionStorage.removeItem("halite-token");
  stopStream(); loginForm();
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
  const token = state.token;
  const response = await fetch(`${path}?${asked}`, { headers: { "X-Auth-Token": token, "Accept": "text/csv" } });
  if (response.status === 401 && token === state.token) logout();
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
// Every view is in the URL: #/<view>[/<id>][?<its filters, page, window...>], so that a
// view can be linked to, survives a reload and the back button goes back through views.
function hashState() {
  const hash = (location.hash || "#/jobs").slice(1);
  const at = hash.indexOf("?");  // the first ?: a value may hold another (search=a?b)
  const path = at < 0 ? hash : hash.slice(0, at), query = at < 0 ? "" : hash.slice(at + 1);
  const [, view = "jobs", arg] = path.split("/");
  let id = arg;
  try { id = arg === undefined ? undefined : decodeURIComponent(arg); }
  catch { return { view: "broken", arg, params: new URLSearchParams() }; }  // a link cut mid-%
  return { view, arg: id, params: new URLSearchParams(query) };
}

// The URL of a view with these parameters (empty ones left out).
function viewHash(view, params = new URLSearchParams(), arg) {
  const kept = new URLSearchParams([...params].filter(([, v]) => v !== "" && v != null));
  const query = [...kept].length ? `?${kept}` : "";
  return `#/${view}${arg === undefined ? "" : "/" + encodeURIComponent(arg)}${query}`;
}

// Go to a view with these parameters: a new entry in the history (the back button
// returns to the view as it was); the hashchange that follows loads it.
function goTo(view, params, arg) {
  const hash = viewHash(view, params, arg);
  if (location.hash === hash) route(); else location.hash = hash;
}

async function route() {
  if (!state.token) { loginForm(); return; }
  if (!state.me) {
    try { state.me = await api("GET", "/api/me"); }
    catch (err) {
      if (!state.token) return;  // a 401: the login form says the session ended
      // Said where the page opens, tried again at the next view asked for.
      show("jobs-view"); $("#jobs-error").textContent = err.message;
      return;
    }
    $("#who").textContent = state.me.user;
  }
  const { view, arg, params } = hashState();
  if (view === "broken") {
    show("jobs-view");
    supersedeJobs();
    $("#jobs-error").textContent = "This link is cut or mangled (a % not followed by two hex digits): open the job from the list.";
    return;
  }
  if (view === "job" && arg) { $("#kill-result").textContent = ""; $("#rerun-result").replaceChildren(); loadJob(arg, params); }
  else if (view === "timeline") loadTimeline(params);
  else if (view === "minions") loadMinions(params);
  else if (view === "minion" && arg) loadMinion(arg, params);
  else if (view === "states") loadStates(params);
  else if (view === "state" && arg) loadState(arg, params);
  else { show("jobs-view"); loadJobs(params); }
  if ($("#live").checked) startStream();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", logout);
  // The views' own controls (filters, pages, the timeline's window) are wired by their
  // scripts, through the URL (goTo).
  $("#live").addEventListener("change", (e) => (e.target.checked ? startStream() : stopStream()));
  for (const button of document.querySelectorAll(".downloads button")) {
    button.addEventListener("click", () => download(button));
  }
  window.addEventListener("hashchange", route);
  route();
});
