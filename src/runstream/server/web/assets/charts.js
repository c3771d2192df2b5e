// Metric charts on uPlot. A chart draws lines, each {label, x, y, lo, hi}: lo and hi are the
// min and max of each downsampled bucket, drawn as a band, so a one-step spike among a million
// points stays visible. Lines with different x values are aligned with uPlot.join.

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];

export function color(i) {
  return COLORS[i % COLORS.length];
}

// Exponential moving average (as TensorBoard and W&B smooth), skipping gaps.
export function smooth(values, weight) {
  if (!weight) return values;
  const out = new Array(values.length);
  let last = null;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v == null || Number.isNaN(v)) { out[i] = v; continue; }
    last = last == null ? v : last * weight + (1 - weight) * v;
    out[i] = last;
  }
  return out;
}

// The aligned table uPlot draws, and the series options that go with it.
export function layout(lines, smoothing) {
  const tables = [];
  const series = [{ label: "step" }];
  const bands = [];
  lines.forEach((line, i) => {
    const stroke = line.faded ? "#9ca3af" : color(i);
    tables.push(line.lo ? [line.x, smooth(line.y, smoothing), line.lo, line.hi] : [line.x, smooth(line.y, smoothing)]);
    // A faded line: points a rewind superseded, drawn grey and dashed behind the run's own.
    series.push({ label: line.label, stroke, width: line.faded ? 1 : 1.5, dash: line.faded ? [4, 4] : undefined, spanGaps: true, points: { show: false } });
    if (line.lo) {
      const lo = series.length;
      series.push({ label: `${line.label} min`, band: true, stroke: stroke + "55", width: 0.5, spanGaps: true, points: { show: false } });
      series.push({ label: `${line.label} max`, band: true, stroke: stroke + "55", width: 0.5, spanGaps: true, points: { show: false } });
      bands.push({ series: [lo + 1, lo], fill: stroke + "22" });
    }
  });
  const data = tables.length === 0 ? [[]] : tables.length === 1 ? tables[0] : uPlot.join(tables);
  return { data, series, bands };
}

// A chart in `el`; dragging across it calls onZoom(lo, hi) with the x range (steps, or
// seconds on a time axis), a double click onReset().
export function makeChart(el, { width, height, lines, logY, smoothing, xLabel, xTime, onZoom, onReset }) {
  const { data, series, bands } = layout(lines, smoothing);
  series[0].label = xLabel || "step";
  const opts = {
    width,
    height,
    series,
    bands,
    scales: { x: { time: !!xTime }, y: logY ? { distr: 3 } : {} },
    axes: [{ label: xLabel || "step" }, {}],
    legend: { live: true },
    cursor: { drag: { x: true, y: false, setScale: false } },
    hooks: {
      setSelect: [
        (u) => {
          if (u.select.width < 3 || !onZoom) return;
          const lo = u.posToVal(u.select.left, "x");
          const hi = u.posToVal(u.select.left + u.select.width, "x");
          u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
          onZoom(lo, hi);
        },
      ],
    },
  };
  const chart = new uPlot(opts, data, el);
  // The band edges are in the legend's table too: hide their rows, the band says enough.
  const rows = chart.root.querySelectorAll(".u-legend .u-series");
  series.forEach((s, i) => { if (s.band && rows[i]) rows[i].style.display = "none"; });
  if (onReset) chart.over.addEventListener("dblclick", onReset);
  return chart;
}
