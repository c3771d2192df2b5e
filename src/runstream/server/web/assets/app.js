// runstream's web UI: plain DOM over the JSON API (/api/v1/<service>/<method>) and the live
// tail (/api/v1/tail, server-sent events). Every view's state is in the URL's hash, so a link
// shows a colleague the same thing and back/forward work. Text from the server is only ever
// set as text (never as HTML).

import { makeChart, color } from "/ui/charts.js";

const main = document.getElementById("main");
const PAGE_SIZE = 50;
const BASE_COLUMNS = ["run", "name", "status", "start", "duration", "user", "commit"];
const ORDERABLE = { name: "attributes.run_name", status: "attributes.status", start: "attributes.start_time" };
const state = { cleanup: [] };
// What the pages drew, for people poking in the console and for the browser tests.
window.runstream = { charts: {}, plots: {}, queries: [] };

// ------------------------------------------------------------------ helpers

class ApiError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

async function api(service, method, body) {
  const started = performance.now();
  const response = await fetch(`/api/v1/runstream.v1.${service}/${method}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    credentials: "same-origin",
    body: JSON.stringify(body || {}),
  });
  const data = await response.json().catch(() => ({}));
  window.runstream.queries.push({ service, method, body, ms: performance.now() - started });
  if (response.status === 401) {
    location.href = "/login";
    throw new ApiError("UNAUTHENTICATED", data.message || "sign in");
  }
  if (!response.ok) throw new ApiError(data.code || String(response.status), data.message || response.statusText);
  return data;
}

// An element with attributes and children; strings become text nodes, never HTML.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = !!v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function hashFor(path, params) {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v != null && v !== "") qs.set(k, v);
  const s = qs.toString();
  return `#${path}${s ? "?" + s : ""}`;
}

function go(path, params) {
  location.hash = hashFor(path, params);
}

const num = (v) => (v == null ? NaN : typeof v === "number" ? v : Number(v));
const statusName = (s) => String(s || "").replace("RUN_STATUS_", "");
const shortId = (id) => String(id).slice(0, 8);
function when(ms) {
  ms = num(ms);
  return ms ? new Date(ms).toLocaleString() : "";
}
function duration(run) {
  const start = num(run.start_time_ms);
  const end = num(run.end_time_ms) || (statusName(run.status) === "RUNNING" ? Date.now() : 0);
  if (!start || !end) return "";
  const s = Math.max(0, Math.round((end - start) / 1000));
  return s < 60 ? `${s}s` : s < 3600 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}
function fmt(v) {
  if (v == null || v === "") return "";
  const n = num(v);
  if (Number.isNaN(n)) return String(v);
  return Math.abs(n) >= 1e5 || (n !== 0 && Math.abs(n) < 1e-3) ? n.toExponential(4) : String(+n.toPrecision(6));
}
const user = (run) => (run.tags || {})["runstream.source.user"] || (run.tags || {})["mlflow.user"] || "";
const commit = (run) => ((run.tags || {})["runstream.source.git.commit"] || (run.tags || {})["mlflow.source.git.commit"] || "").slice(0, 8);

function errorBox(err) {
  return h("p", { class: "error", role: "alert" }, err instanceof ApiError ? `${err.code}: ${err.message}` : String(err));
}

function table(header, rows, attrs) {
  return h("table", attrs, h("thead", {}, h("tr", {}, header)), h("tbody", {}, rows));
}

// ------------------------------------------------------------------ router

const ROUTES = [
  [/^\/?$/, experimentsPage],
  [/^\/runs$/, runsPage],
  [/^\/run\/([^/]+)$/, runPage],
  [/^\/compare$/, comparePage],
  [/^\/models$/, modelsPage],
  [/^\/models\/(.+)$/, modelPage],
];

async function render() {
  for (const undo of state.cleanup.splice(0)) undo();
  window.runstream.charts = {};
  window.runstream.plots = {};
  const [path, query] = decodeURI(location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const found = ROUTES.find(([re]) => re.test(path));
  main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    if (!found) throw new Error(`no page at ${path}`);
    const match = path.match(found[0]);
    const content = await found[1](params, ...match.slice(1).map(decodeURIComponent));
    main.replaceChildren(content);
  } catch (err) {
    main.replaceChildren(errorBox(err));
  }
  document.body.dataset.ready = String(Date.now()); // the page is drawn (browser tests wait for it)
  void query;
}

window.addEventListener("hashchange", render);
render();

// ------------------------------------------------------------------ experiments

async function experimentsPage(params) {
  const q = params.get("q") || "";
  const filter = h("input", { type: "search", id: "experiment-filter", placeholder: "filter by name", value: q });
  filter.addEventListener("change", () => go("/", { q: filter.value.trim() }));
  const list = await api("QueryService", "ListExperiments", { name_like: q ? `%${q}%` : "", max_results: 1000 });
  const rows = (list.experiments || []).map((c) =>
    h(
      "tr",
      { "data-experiment-id": c.experiment.experiment_id },
      h("td", {}, h("a", { href: hashFor("/runs", { e: c.experiment.experiment_id }) }, c.experiment.name)),
      h("td", { class: "num runs" }, num(c.runs || 0)),
      h("td", { class: "num running" }, num(c.running || 0)),
      h("td", { class: "num finished" }, num(c.finished || 0)),
      h("td", { class: "num failed" }, num(c.failed || 0)),
      h("td", { class: "num killed" }, num(c.killed || 0)),
      h("td", {}, when(c.last_run_start_ms)),
    ),
  );
  return h(
    "section",
    {},
    h("h1", {}, "Experiments"),
    h("div", { class: "toolbar" }, filter, h("a", { href: "#/runs" }, "all runs")),
    rows.length
      ? table(["name", "runs", "running", "finished", "failed", "killed", "last run started"].map((c) => h("th", {}, c)), rows, { id: "experiments-table" })
      : h("p", { class: "muted" }, "No experiments yet."),
  );
}

// ------------------------------------------------------------------ runs

async function runsPage(params) {
  const experiments = (params.get("e") || "").split(",").filter(Boolean);
  const filter = params.get("q") || "";
  const order = params.get("o") || "";
  const columns = (params.get("c") || "").split(",").filter(Boolean);
  const token = params.get("p") || "";
  const selected = new Set((params.get("sel") || "").split(",").filter(Boolean));
  const here = (change) => hashFor("/runs", { e: experiments.join(","), q: filter, o: order, c: columns.join(","), sel: [...selected].join(","), ...change });

  const box = h("input", { type: "search", id: "runs-filter", placeholder: "metrics.loss < 0.5 and params.lr = '0.01'", value: filter });
  box.addEventListener("change", () => (location.hash = here({ q: box.value.trim(), p: "" })));
  let title = "All runs";
  if (experiments.length === 1) {
    const exp = await api("TrackingService", "GetExperiment", { experiment_id: experiments[0] }).catch(() => null);
    if (exp) title = exp.name;
  }
  const head = [h("h1", {}, title), h("div", { class: "toolbar" }, box, h("span", { class: "muted" }, "MLflow's filter language"))];
  let page;
  try {
    page = await api("QueryService", "SearchRuns", {
      experiment_ids: experiments,
      filter,
      order_by: order ? [order] : [],
      max_results: PAGE_SIZE,
      page_token: token,
      count_total: true,
    });
  } catch (err) {
    // The parser names the position of the mistake: point at it under the filter.
    const at = /at position (\d+)/.exec(err.message || "");
    const caret = at ? h("pre", { class: "error", id: "filter-caret" }, `${filter}\n${" ".repeat(Number(at[1]))}^`) : null;
    return h("section", {}, head, h("p", { class: "error", id: "filter-error", role: "alert" }, `${err.code}: ${err.message}`), caret);
  }
  const runs = page.runs || [];

  // Columns: the fixed ones, then the chosen params, metrics (last value) and tags.
  const available = { params: new Set(), metrics: new Set(), tags: new Set() };
  for (const run of runs) {
    Object.keys(run.params || {}).forEach((k) => available.params.add(k));
    (run.metrics || []).forEach((m) => available.metrics.add(m.key));
    Object.keys(run.tags || {}).filter((k) => !k.startsWith("runstream.source.") && !k.startsWith("mlflow.")).forEach((k) => available.tags.add(k));
  }
  const chooser = h(
    "details",
    { class: "columns", id: "column-chooser" },
    h("summary", {}, "Columns"),
    h(
      "div",
      { class: "list" },
      Object.entries(available).map(([kind, keys]) =>
        [...keys].sort().map((k) => {
          const name = `${kind}.${k}`;
          const box = h("input", { type: "checkbox", value: name, checked: columns.includes(name) });
          box.addEventListener("change", () => {
            const next = box.checked ? [...columns, name] : columns.filter((c) => c !== name);
            location.hash = here({ c: next.join(",") });
          });
          return h("label", {}, box, " ", name);
        }),
      ),
    ),
  );

  const sortHeader = (label, field) => {
    const [current, dir] = order.split(" ");
    const mark = current === field ? (dir === "DESC" ? " ▼" : " ▲") : "";
    const next = current === field && dir !== "DESC" ? `${field} DESC` : `${field} ASC`;
    return h("th", { class: "sortable", "data-order": field, onclick: () => (location.hash = here({ o: next, p: "" })) }, label + mark);
  };
  const header = [
    h("th", {}, ""),
    ...BASE_COLUMNS.map((c) => (ORDERABLE[c] ? sortHeader(c, ORDERABLE[c]) : h("th", {}, c))),
    ...columns.map((c) => sortHeader(c, c.replace(/^(params|metrics|tags)\.(.*)$/, (_, kind, key) => `${kind}.\`${key}\``))),
  ];
  const compare = h("button", { id: "compare-button", disabled: selected.size < 2 }, `Compare (${selected.size})`);
  compare.addEventListener("click", () => go("/compare", { runs: [...selected].join(",") }));
  const rows = runs.map((run) => {
    const metrics = Object.fromEntries((run.metrics || []).map((m) => [m.key, m.last_value]));
    const pick = h("input", { type: "checkbox", class: "select-run", checked: selected.has(run.run_id) });
    pick.addEventListener("change", () => {
      pick.checked ? selected.add(run.run_id) : selected.delete(run.run_id);
      history.replaceState(null, "", here({ p: token }));
      compare.disabled = selected.size < 2;
      compare.textContent = `Compare (${selected.size})`;
    });
    const status = statusName(run.status);
    return h(
      "tr",
      { "data-run-id": run.run_id },
      h("td", {}, pick),
      h("td", { class: "id" }, h("a", { href: hashFor(`/run/${run.run_id}`) }, shortId(run.run_id))),
      h("td", { class: "name" }, run.name),
      h("td", {}, h("span", { class: `status ${status}` }, status)),
      h("td", {}, when(run.start_time_ms)),
      h("td", { class: "num" }, duration(run)),
      h("td", {}, user(run)),
      h("td", { class: "id" }, commit(run)),
      columns.map((c) => {
        const [kind, ...rest] = c.split(".");
        const key = rest.join(".");
        const value = kind === "params" ? (run.params || {})[key] : kind === "metrics" ? metrics[key] : (run.tags || {})[key];
        return h("td", { class: kind === "metrics" ? "num" : "" }, kind === "metrics" ? fmt(value) : value ?? "");
      }),
    );
  });
  const total = num(page.total_count || 0);
  const paging = h(
    "div",
    { class: "toolbar" },
    h("span", { class: "muted", id: "runs-count" }, `${total.toLocaleString()} runs`),
    token ? h("a", { href: here({ p: "" }) }, "first page") : null,
    page.next_page_token ? h("a", { id: "next-page", href: here({ p: page.next_page_token }) }, "next page") : null,
    compare,
    chooser,
  );
  return h("section", {}, head, paging, table(header, rows, { id: "runs-table" }));
}

// ------------------------------------------------------------------ one run

async function runPage(params, runId) {
  const run = await api("TrackingService", "GetRun", { run_id: runId });
  const experiment = await api("TrackingService", "GetExperiment", { experiment_id: run.experiment_id }).catch(() => ({ name: run.experiment_id }));
  let summaries = run.metrics || [];
  if (run.metrics_truncated) {
    summaries = [];
    let token = "";
    do {
      const page = await api("TrackingService", "ListRunMetrics", { run_id: run.run_id, max_results: 10000, page_token: token });
      summaries.push(...(page.metrics || []));
      token = page.next_page_token || "";
    } while (token);
  }
  const status = statusName(run.status);
  const tags = run.tags || {};
  const view = {
    mode: params.get("agg") === "mean" ? "mean" : "writers",
    xTime: params.get("x") === "time" && params.get("agg") !== "mean", // the mean has no one wall time per step
    logY: params.get("log") === "1",
    smoothing: Math.min(0.99, Math.max(0, Number(params.get("smooth") || 0))),
    zoom: Object.fromEntries((params.getAll("z") || []).map((z) => { const [k, lo, hi] = z.split("~"); return [k, [Number(lo), Number(hi)]]; })),
    rewinds: (run.rewinds || []).map((r) => r.number),
  };
  const here = (change) => {
    const p = new URLSearchParams(location.hash.split("?")[1] || "");
    for (const [k, v] of Object.entries(change)) (v == null || v === "" ? p.delete(k) : p.set(k, v));
    return `#/run/${run.run_id}?${p}`;
  };
  const kv = (pairs) => h("dl", { class: "kv" }, pairs.filter(([, v]) => v !== "" && v != null).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  const overview = kv([
    ["id", h("code", {}, run.run_id)],
    ["status", h("span", { class: `status ${status}` }, status)],
    ["experiment", h("a", { href: hashFor("/runs", { e: run.experiment_id }) }, experiment.name)],
    ["started", when(run.start_time_ms)],
    ["ended", when(run.end_time_ms)],
    ["duration", duration(run)],
    ["last heard", when(run.last_heard_ms)],
    ["commit", tags["runstream.source.git.commit"] ? `${tags["runstream.source.git.commit"]}${tags["runstream.source.git.dirty"] === "true" ? " (with changes)" : ""}` : ""],
    ["entry point", tags["runstream.source.entry_point"] || tags["mlflow.source.name"] || ""],
    ["datasets", (run.inputs || []).map((i) => [i.name, i.digest && `@${i.digest}`, i.source && `(${i.source})`, i.context && `for ${i.context}`].filter(Boolean).join(" ")).join("; ")],
    ["forked from", run.parent_run_id ? h("span", { id: "fork-parent" }, h("a", { href: `#/run/${run.parent_run_id}` }, shortId(run.parent_run_id)), ` at step ${num(run.fork_step || 0).toLocaleString()} (its points up to there are shown here)`) : ""],
    ["forks", (run.fork_ids || []).length ? h("span", { id: "forks" }, ...run.fork_ids.flatMap((f, i) => [i ? ", " : "", h("a", { href: `#/run/${f}` }, shortId(f))])) : ""],
    ["rewinds", (run.rewinds || []).length ? h("span", { id: "rewinds" }, run.rewinds.map((r) => `to step ${num(r.step).toLocaleString()} at ${when(r.time_ms)} (${num(r.superseded_points || 0).toLocaleString()} points superseded, drawn faded)`).join("; ")) : ""],
  ]);
  const pairsTable = (obj, id) => {
    const keys = Object.keys(obj || {}).sort();
    return keys.length ? table([h("th", {}, "key"), h("th", {}, "value")], keys.map((k) => h("tr", {}, h("td", {}, k), h("td", {}, obj[k]))), { id }) : h("p", { class: "muted" }, "none");
  };

  const controls = h(
    "div",
    { class: "toolbar" },
    h("label", {}, "lines ", h("select", { id: "chart-mode", onchange: (e) => (location.hash = here({ agg: e.target.value === "mean" ? "mean" : "" })) },
      h("option", { value: "writers", selected: view.mode === "writers" }, "every writer"),
      h("option", { value: "mean", selected: view.mode === "mean" }, "mean with min–max"))),
    h("label", {}, "x ", h("select", { id: "x-axis", onchange: (e) => (location.hash = here({ x: e.target.value === "time" ? "time" : "", z: "" })) },
      h("option", { value: "step", selected: !view.xTime }, "step"),
      h("option", { value: "time", selected: view.xTime }, "wall time"))),
    h("label", {}, h("input", { type: "checkbox", id: "log-y", checked: view.logY, onchange: (e) => (location.hash = here({ log: e.target.checked ? "1" : "" })) }), " log y"),
    h("label", {}, "smoothing ", h("input", { type: "range", id: "smoothing", min: 0, max: 0.99, step: 0.01, value: view.smoothing, onchange: (e) => (location.hash = here({ smooth: e.target.value === "0" ? "" : e.target.value })) })),
    h("span", { class: "muted" }, "drag across a chart to zoom, double-click to reset"),
  );
  const grid = h("div", { class: "grid", id: "charts" });
  const charts = summaries.map((s, i) => {
    const card = h("div", { class: "card chart", "data-key": s.key, id: `chart-${i}` }, h("h3", {}, s.key), h("div", { class: "plot" }), h("div", { class: "note" }));
    grid.append(card);
    return { key: s.key, card, summary: s };
  });
  const section = h(
    "section",
    {},
    h("h1", {}, run.name || shortId(run.run_id)),
    overview,
    h("h2", {}, "Parameters"),
    pairsTable(run.params, "params-table"),
    h("h2", {}, "Metrics"),
    summaries.length ? controls : h("p", { class: "muted" }, "No metrics."),
    grid,
    h("h2", {}, "Tags"),
    pairsTable(tags, "tags-table"),
    h("h2", {}, "Artifacts"),
    await artifactTree(run.run_id),
  );
  // Draw once the cards are in the page (their width decides how many points to ask for).
  requestAnimationFrame(() => {
    Promise.all(charts.map((c) => drawChart(run.run_id, c, view, here))).then(() => {
      if (status === "RUNNING") follow(run.run_id, charts, view);
      document.body.dataset.charts = String(Date.now());
    });
  });
  return section;
}

function plotWidth(card) {
  return Math.max(300, Math.floor(card.getBoundingClientRect().width || 600) - 20);
}

// The lines of one key: every writer's own line, or the mean with the writers' min–max band.
async function fetchLines(runId, key, view, width, range) {
  const base = { run_id: runId, key, max_points: width, with_time: !!view.xTime };
  if (range) Object.assign(base, { min_step: String(range[0]), max_step: String(range[1]) });
  const toLine = (label, hist, band) => {
    const down = !!hist.downsampled;
    const steps = (down ? hist.bucket_last_step : hist.step || []).map(Number);
    // A time axis is in seconds (uPlot's); the steps stay, to turn a zoom back into steps.
    const x = view.xTime ? (down ? hist.bucket_last_timestamp_ms : hist.timestamp_ms || []).map((t) => Number(t) / 1000) : steps.slice();
    const y = (down ? hist.bucket_last : hist.value || []).map(Number);
    const line = { label, x, y, steps, downsampled: down, total: num(hist.total_points || 0) };
    if (down && band) Object.assign(line, { lo: hist.bucket_min.map(Number), hi: hist.bucket_max.map(Number) });
    return view.xTime ? foldSameTime(line) : line;
  };
  if (view.mode === "mean") {
    const [mean, lo, hi] = await Promise.all(
      ["AGGREGATE_MEAN", "AGGREGATE_MIN", "AGGREGATE_MAX"].map((aggregate) => api("QueryService", "GetMetricHistory", { ...base, with_time: false, aggregate })),
    );
    const line = toLine("mean", mean, false);
    const low = toLine("min", lo, true);
    const high = toLine("max", hi, true);
    // The band spans the lowest and the highest writer at each step (bucket min of the min, max of the max).
    line.lo = (low.lo || low.y).slice(0, line.x.length);
    line.hi = (high.hi || high.y).slice(0, line.x.length);
    return { lines: [line], writers: (mean.writers || []).length, downsampled: line.downsampled };
  }
  // Every writer's own history in one call (by_writer), each downsampled to the chart's width.
  const all = await api("QueryService", "GetMetricHistory", { ...base, by_writer: true });
  const writers = all.writers || [];
  const lines = (all.per_writer || []).map((hist, i) => toLine(writers[i], hist, true));
  // What each rewind superseded, faded (none for a key the rewind did not touch).
  const superseded = await Promise.all((view.rewinds || []).map((n) =>
    api("QueryService", "GetMetricHistory", { ...base, branch: n }).then((hist) => ({ ...toLine(`before rewind ${n}`, hist, false), faded: true }))));
  lines.push(...superseded.filter((l) => l.total > 0));
  return { lines, writers: writers.length, downsampled: lines.some((l) => l.downsampled) };
}

async function drawChart(runId, c, view, here) {
  const plot = c.card.querySelector(".plot");
  const note = c.card.querySelector(".note");
  const width = plotWidth(c.card);
  const range = view.zoom[c.key];
  try {
    const got = await fetchLines(runId, c.key, view, width, range);
    plot.replaceChildren();
    if (c.chart) c.chart.destroy();
    const positive = got.lines.every((l) => l.y.every((v) => !(v <= 0)));
    c.chart = makeChart(plot, {
      width,
      height: 260,
      lines: got.lines,
      logY: view.logY && positive,
      smoothing: view.smoothing,
      xTime: view.xTime,
      xLabel: view.xTime ? "wall time" : "step",
      onZoom: (lo, hi) => {
        const steps = view.xTime ? stepsWithin(got.lines, lo, hi) : [Math.floor(lo), Math.ceil(hi)];
        if (!steps) return;
        view.zoom[c.key] = steps;
        const p = new URLSearchParams(location.hash.split("?")[1] || "");
        p.delete("z");
        Object.entries(view.zoom).forEach(([k, [a, b]]) => p.append("z", `${k}~${a}~${b}`));
        history.pushState(null, "", `#/run/${runId}?${p}`);
        drawChart(runId, c, view, here);
      },
      onReset: () => {
        if (!view.zoom[c.key]) return;
        delete view.zoom[c.key];
        const p = new URLSearchParams(location.hash.split("?")[1] || "");
        p.delete("z");
        Object.entries(view.zoom).forEach(([k, [a, b]]) => p.append("z", `${k}~${a}~${b}`));
        history.pushState(null, "", `#/run/${runId}?${p}`);
        drawChart(runId, c, view, here);
      },
    });
    c.lines = got.lines;
    c.width = width;
    const total = got.lines.filter((l) => !l.faded).reduce((n, l) => n + l.total, 0);
    const superseded = got.lines.filter((l) => l.faded).reduce((n, l) => n + l.total, 0);
    note.textContent = `${total.toLocaleString()} points${superseded ? ` (and ${superseded.toLocaleString()} superseded by rewinds, faded)` : ""}${got.downsampled ? `, shown as ${width} buckets per line with their min–max` : ""}${range ? ` · steps ${range[0]}–${range[1]}` : ""}${view.logY && !positive ? " · log scale off: values ≤ 0" : ""}`;
    window.runstream.charts[c.key] = { data: c.chart.data, lines: got.lines, writers: got.writers, downsampled: got.downsampled, range: range || null, width };
    window.runstream.plots[c.key] = c.chart; // the uPlot instance, for scripts (benchmarks/ui.py zooms with it)
  } catch (err) {
    plot.replaceChildren(errorBox(err));
  }
}

// On a time axis, points logged within one millisecond share an x: fold them into one, with
// the last value and the min and max of them all (so a spike among them still shows).
function foldSameTime(line) {
  const { x, y, steps, lo, hi } = line;
  const out = { ...line, x: [], y: [], steps: [], lo: lo && [], hi: hi && [] };
  for (let i = 0; i < x.length; i++) {
    const n = out.x.length;
    if (n && out.x[n - 1] === x[i]) {
      out.y[n - 1] = y[i];
      out.steps[n - 1] = steps[i];
      if (lo) { out.lo[n - 1] = Math.min(out.lo[n - 1], lo[i]); out.hi[n - 1] = Math.max(out.hi[n - 1], hi[i]); }
      continue;
    }
    out.x.push(x[i]);
    out.y.push(y[i]);
    out.steps.push(steps[i]);
    if (lo) { out.lo.push(lo[i]); out.hi.push(hi[i]); }
  }
  if (!lo) { delete out.lo; delete out.hi; }
  return out;
}

// The step range of the points drawn between times lo and hi (seconds) on a time axis.
function stepsWithin(lines, lo, hi) {
  let first = Infinity;
  let last = -Infinity;
  for (const line of lines) {
    line.x.forEach((t, i) => {
      if (t >= lo && t <= hi) {
        first = Math.min(first, line.steps[i]);
        last = Math.max(last, line.steps[i]);
      }
    });
  }
  return first <= last ? [first, last] : null;
}

// While the run is RUNNING: new points as the loaders store them, appended to each writer's
// line; a chart holding more than two points per pixel is fetched again (downsampled).
function follow(runId, charts, view) {
  const byKey = Object.fromEntries(charts.map((c) => [c.key, c]));
  const from = Math.min(...charts.map((c) => num(c.summary.last_step) + 1).filter((n) => !Number.isNaN(n)), Infinity);
  const url = `/api/v1/tail?run_id=${encodeURIComponent(runId)}${Number.isFinite(from) ? `&from_step=${from}` : ""}`;
  const source = new EventSource(url);
  const dirty = new Set();
  let frame = 0;
  source.onmessage = (event) => {
    const points = JSON.parse(event.data);
    const c = byKey[points.key];
    if (!c || !c.lines || view.zoom[c.key] || view.mode !== "writers") return;
    let line = c.lines.find((l) => l.label === points.writer) || (c.lines.length === 1 && !c.lines[0].lo ? c.lines[0] : null);
    if (!line) {
      line = { label: points.writer, x: [], y: [], total: 0 };
      c.lines.push(line);
    }
    const last = line.steps && line.steps.length ? line.steps[line.steps.length - 1] : -Infinity;
    line.steps = line.steps || [];
    (points.step || []).map(Number).forEach((s, i) => {
      if (s > last) {
        line.steps.push(s);
        line.x.push(view.xTime ? Number(points.timestamp_ms[i]) / 1000 : s);
        line.y.push(Number(points.value[i]));
        if (line.lo) { line.lo.push(Number(points.value[i])); line.hi.push(Number(points.value[i])); }
      }
    });
    dirty.add(c);
    if (!frame) frame = requestAnimationFrame(redraw);
  };
  source.addEventListener("end", () => source.close());
  // A rewind superseded points the charts hold: draw the page again (the old ones faded).
  source.addEventListener("error", (event) => {
    if (event.data && JSON.parse(event.data).code === "FAILED_PRECONDITION") { source.close(); render(); }
  });
  const redraw = () => {
    frame = 0;
    for (const c of dirty) {
      const count = Math.max(...c.lines.map((l) => l.x.length));
      if (count > 2 * c.width) {
        if (!c.refetching) {
          c.refetching = true;
          drawChart(runId, c, view).finally(() => (c.refetching = false));
        }
        continue;
      }
      const data = c.lines.length === 1 ? [c.lines[0].x, c.lines[0].y, ...(c.lines[0].lo ? [c.lines[0].lo, c.lines[0].hi] : [])]
        : uPlot.join(c.lines.map((l) => (l.lo ? [l.x, l.y, l.lo, l.hi] : [l.x, l.y])));
      if (data.length === c.chart.data.length) {
        c.chart.setData(data);
        window.runstream.charts[c.key].data = c.chart.data;
        window.runstream.charts[c.key].live = (window.runstream.charts[c.key].live || 0) + 1;
      } else {
        drawChart(runId, c, view);
      }
    }
    dirty.clear();
  };
  state.cleanup.push(() => source.close());
}

// ------------------------------------------------------------------ artifacts

const PREVIEW_TEXT = /\.(txt|log|json|ya?ml|csv|tsv|md|py|cfg|ini|toml|html?|xml|js|sh)$/i; // shown as text, never rendered
const PREVIEW_IMAGE = /\.(png|jpe?g|gif|svg|webp)$/i;

async function artifactTree(runId, prefix = "") {
  let listing;
  try {
    listing = await api("ArtifactService", "ListArtifacts", { run_id: runId, prefix });
  } catch (err) {
    return errorBox(err);
  }
  const items = listing.artifacts || [];
  if (!items.length && !prefix) return h("p", { class: "muted" }, "No artifacts.");
  const preview = h("div", { class: "preview-box" });
  const list = h(
    "ul",
    {},
    items.map((a) => {
      const name = a.path.slice(prefix ? prefix.length + 1 : 0);
      const size = h("span", { class: "muted" }, ` ${bytes(num(a.size || 0))}`);
      if (a.is_dir) {
        const li = h("li", { "data-path": a.path }, h("a", { role: "button", tabindex: 0, class: "dir" }, `${name}/`), size);
        li.firstChild.addEventListener("click", async () => {
          if (li.querySelector("ul")) return li.querySelector("ul").remove();
          li.append(await artifactTree(runId, a.path));
        });
        return li;
      }
      const link = h("a", { role: "button", tabindex: 0, class: "download", "data-path": a.path }, name);
      link.addEventListener("click", async (event) => {
        if (link.dataset.url) return; // resolved: the browser follows the signed URL
        event.preventDefault();
        const signed = await api("ArtifactService", "GetDownloadUrl", { run_id: runId, path: a.path });
        link.href = signed.url;
        link.dataset.url = signed.url;
        link.setAttribute("download", name.split("/").pop());
        link.click();
      });
      const show = PREVIEW_TEXT.test(a.path) || PREVIEW_IMAGE.test(a.path)
        ? h("button", { class: "preview", onclick: () => showPreview(runId, a, preview) }, "preview")
        : null;
      return h("li", { "data-path": a.path }, link, size, " ", show);
    }),
  );
  return h("div", { class: "tree", id: prefix ? null : "artifacts" }, list, preview);
}

async function showPreview(runId, artifact, box) {
  const signed = await api("ArtifactService", "GetDownloadUrl", { run_id: runId, path: artifact.path });
  if (PREVIEW_IMAGE.test(artifact.path)) {
    box.replaceChildren(h("img", { class: "preview", src: signed.url, alt: artifact.path }));
    return;
  }
  const response = await fetch(signed.url, { headers: { Range: "bytes=0-65535" } });
  let text = await response.text();
  if (/\.json$/i.test(artifact.path)) {
    try { text = JSON.stringify(JSON.parse(text), null, 2); } catch { /* not whole: shown as it is */ }
  }
  if (/\.(csv|tsv)$/i.test(artifact.path)) text = text.split("\n").slice(0, 50).join("\n");
  box.replaceChildren(h("p", { class: "muted" }, artifact.path), h("pre", { class: "preview" }, text));
}

function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

// ------------------------------------------------------------------ compare

async function comparePage(params) {
  const ids = (params.get("runs") || "").split(",").filter(Boolean);
  if (ids.length < 2) return h("p", { class: "muted" }, "Select two or more runs in a runs table to compare them.");
  const width = Math.max(300, Math.floor(main.getBoundingClientRect().width / 2) - 40);
  const cmp = await api("QueryService", "CompareRuns", { run_ids: ids, max_points: width });
  const runs = cmp.runs || [];
  // A header row per table: a DOM node lives in one place only.
  const head = () => [h("th", {}, ""), runs.map((r, i) => h("th", { style: `color: ${color(i)}` }, h("a", { href: hashFor(`/run/${r.run_id}`) }, r.name || shortId(r.run_id))))];
  const params_ = (cmp.params || []).map((p) =>
    h("tr", { class: p.differs ? "differs" : "", "data-param": p.key }, h("td", {}, p.key), p.values.map((v, i) => h("td", {}, p.present[i] ? v : "—"))),
  );
  const metrics = (cmp.metrics || []).map((m) =>
    h(
      "tr",
      { "data-metric": m.key },
      h("td", {}, `${m.key} (${m.direction})`),
      m.last.map((v, i) => h("td", { class: `num${(m.best ?? 0) === i ? " best" : ""}` }, m.present[i] ? fmt(v) : "—")),
    ),
  );
  const grid = h("div", { class: "grid" });
  const cards = (cmp.series || []).map((set) => {
    const card = h("div", { class: "card chart", "data-key": set.key }, h("h3", {}, set.key), h("div", { class: "plot" }));
    grid.append(card);
    return [card, set];
  });
  requestAnimationFrame(() => {
    for (const [card, set] of cards) {
      const lines = set.histories.map((hist, i) => {
        const down = !!hist.downsampled;
        const line = { label: runs[i] ? runs[i].name || shortId(runs[i].run_id) : String(i), x: (down ? hist.bucket_last_step : hist.step || []).map(Number), y: (down ? hist.bucket_last : hist.value || []).map(Number) };
        if (down) Object.assign(line, { lo: hist.bucket_min.map(Number), hi: hist.bucket_max.map(Number) });
        return line;
      });
      const chart = makeChart(card.querySelector(".plot"), { width: plotWidth(card), height: 240, lines, smoothing: 0 });
      window.runstream.charts[set.key] = { data: chart.data, lines };
    }
    document.body.dataset.charts = String(Date.now());
  });
  window.runstream.compare = cmp;
  return h(
    "section",
    {},
    h("h1", {}, `Comparing ${runs.length} runs`),
    h("h2", {}, "Parameters"),
    params_.length ? table(head(), params_, { id: "compare-params" }) : h("p", { class: "muted" }, "No parameters."),
    h("h2", {}, "Metrics (last value; the best run marked)"),
    metrics.length ? table(head(), metrics, { id: "compare-metrics" }) : h("p", { class: "muted" }, "No metrics."),
    grid,
  );
}

// ------------------------------------------------------------------ models

async function modelsPage() {
  const found = await api("RegistryService", "SearchRegisteredModels", { max_results: 1000 });
  const rows = (found.models || []).map((m) =>
    h(
      "tr",
      { "data-model": m.name },
      h("td", {}, h("a", { href: hashFor(`/models/${encodeURIComponent(m.name)}`) }, m.name)),
      h("td", {}, (m.latest_versions || []).map((v) => `v${v.version} ${v.stage}`).join(", ")),
      h("td", {}, Object.entries(m.aliases || {}).map(([a, v]) => `@${a} → v${v}`).join(", ")),
      h("td", {}, when(m.updated_ms)),
    ),
  );
  return h(
    "section",
    {},
    h("h1", {}, "Models"),
    rows.length ? table(["name", "latest versions", "aliases", "updated"].map((c) => h("th", {}, c)), rows, { id: "models-table" }) : h("p", { class: "muted" }, "No registered models."),
  );
}

async function modelPage(params, name) {
  const [model, versions] = await Promise.all([
    api("RegistryService", "GetRegisteredModel", { name }),
    api("RegistryService", "ListModelVersions", { name }),
  ]);
  const list = versions.versions || [];
  const chosen = Number(params.get("v") || (list[0] && list[0].version) || 0);
  const rows = list.map((v) =>
    h(
      "tr",
      { "data-version": v.version, class: v.version === chosen ? "differs" : "" },
      h("td", {}, h("a", { href: hashFor(`/models/${encodeURIComponent(name)}`, { v: v.version }) }, `v${v.version}`)),
      h("td", {}, v.stage),
      h("td", {}, (v.aliases || []).map((a) => `@${a}`).join(" ")),
      h("td", { class: "id" }, h("a", { href: hashFor(`/run/${v.run_id}`) }, shortId(v.run_id))),
      h("td", {}, v.artifact_path),
      h("td", {}, v.created_by),
      h("td", {}, when(v.created_ms)),
    ),
  );
  const details = chosen ? await versionDetails(name, chosen) : null;
  return h(
    "section",
    {},
    h("h1", {}, model.name),
    model.description ? h("p", {}, model.description) : null,
    table(["version", "stage", "aliases", "run", "artifact", "by", "created"].map((c) => h("th", {}, c)), rows, { id: "versions-table" }),
    details,
  );
}

async function versionDetails(name, version) {
  const ref = { name, version };
  const [history, lineage, requests, me] = await Promise.all([
    api("RegistryService", "GetModelVersionHistory", ref),
    api("RegistryService", "GetModelVersionLineage", ref).catch(() => null),
    api("RegistryService", "ListTransitionRequests", ref).catch(() => ({ requests: [] })),
    api("AdminService", "WhoAmI", {}).catch(() => null), // not served by every role: then the server decides
  ]);
  const mayReview = !me || (me.scopes || []).includes("registry");
  const events = (history.events || []).map((e) =>
    h("tr", {}, h("td", {}, when(e.at_ms)), h("td", {}, e.kind), h("td", {}, e.actor), h("td", {}, [e.from_value, e.to_value].filter(Boolean).join(" → ")), h("td", {}, e.comment || "")),
  );
  const comment = h("input", { type: "text", id: "review-comment", placeholder: "a comment" });
  const stage = h("select", { id: "review-stage" }, ["Staging", "Production", "Archived", "None"].map((s) => h("option", { value: s }, s)));
  const out = h("p", { class: "muted", id: "review-result" });
  const act = (method, body) => async () => {
    try {
      await api("RegistryService", method, body());
      render();
    } catch (err) {
      out.replaceChildren(errorBox(err));
    }
  };
  const pending = (requests.requests || []).filter((r) => r.status === "pending");
  const review = h(
    "div",
    { class: "toolbar", id: "review" },
    comment,
    h("button", { onclick: act("CreateComment", () => ({ ...ref, comment: comment.value })) }, "comment"),
    stage,
    h("button", { onclick: act("CreateTransitionRequest", () => ({ ...ref, stage: stage.value, comment: comment.value })) }, "request transition"),
    pending.map((r) => [
      h("button", { onclick: act("ApproveTransitionRequest", () => ({ request_id: r.request_id, comment: comment.value })) }, `approve #${r.request_id} → ${r.to_stage}`),
      h("button", { onclick: act("RejectTransitionRequest", () => ({ request_id: r.request_id, comment: comment.value })) }, `reject #${r.request_id}`),
    ]),
  );
  const lin = lineage
    ? h(
        "dl",
        { class: "kv", id: "lineage" },
        h("dt", {}, "source run"),
        h("dd", {}, h("a", { href: hashFor(`/run/${lineage.run.run_id}`) }, `${lineage.run.name} (${shortId(lineage.run.run_id)})`)),
        h("dt", {}, "experiment"),
        h("dd", {}, lineage.experiment_name),
        h("dt", {}, "commit"),
        h("dd", {}, (lineage.run.tags || {})["runstream.source.git.commit"] || ""),
        h("dt", {}, "datasets"),
        h("dd", {}, (lineage.inputs || []).map((i) => `${i.name} ${i.digest} (${i.source})`).join("; ")),
      )
    : null;
  return h(
    "div",
    {},
    h("h2", {}, `Version ${version}: lineage`),
    lin,
    h("h2", {}, "Review"),
    mayReview ? review : h("p", { class: "muted", id: "review-read-only" }, `Reviews need a token with the registry scope; ${me.name} has ${(me.scopes || []).join(", ") || "none"}.`),
    out,
    h("h2", {}, "History"),
    table(["when", "what", "who", "change", "comment"].map((c) => h("th", {}, c)), events, { id: "history-table" }),
  );
}
