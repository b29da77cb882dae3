// Small SVG charts with axes, tick labels and units: lines (with points) and stacked bars.

import { h } from './dom.js';

const NS = 'http://www.w3.org/2000/svg';
const W = 640;
const H = 250;
const M = { left: 58, right: 14, top: 12, bottom: 40 };
export const COLORS = ['#3b5bdb', '#e8590c', '#2b8a3e', '#ae3ec9', '#c92a2a', '#1098ad'];

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/// Round tick values covering [min, max].
export function ticks(min, max, count = 5) {
  if (!Number.isFinite(min) || !Number.isFinite(max)) return { lo: 0, hi: 1, values: [0, 1] };
  if (min === max) { min -= Math.abs(min) * 0.5 || 1; max += Math.abs(max) * 0.5 || 1; }
  const raw = (max - min) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  const step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  const lo = Math.floor(min / step) * step;
  const hi = Math.ceil(max / step) * step;
  const values = [];
  for (let v = lo; v <= hi + step / 2; v += step) values.push(Number(v.toPrecision(12)));
  return { lo, hi, values };
}

function tickLabel(v) {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e6) return `${(v / 1e6).toPrecision(3)}M`;
  if (a >= 1e4) return `${(v / 1e3).toPrecision(3)}k`;
  if (a < 1e-3) return v.toExponential(0);
  return String(Number(v.toPrecision(3)));
}

function frame(svg, x, y, xLabel, yLabel) {
  const g = s('g', { class: 'axes' });
  for (const v of y.values) {
    const py = y.scale(v);
    g.append(s('line', { x1: M.left, x2: W - M.right, y1: py, y2: py, class: 'grid' }));
    g.append(s('text', { x: M.left - 6, y: py + 4, 'text-anchor': 'end' }, tickLabel(v)));
  }
  for (const t of x.ticks) {
    const px = x.scale(t.value);
    g.append(s('line', { x1: px, x2: px, y1: H - M.bottom, y2: H - M.bottom + 4, class: 'tick' }));
    g.append(s('text', { x: px, y: H - M.bottom + 16, 'text-anchor': 'middle' }, t.label));
  }
  g.append(s('line', { x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom, class: 'axis' }));
  g.append(s('line', { x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom, class: 'axis' }));
  g.append(s('text', { x: (M.left + W - M.right) / 2, y: H - 4, 'text-anchor': 'middle', class: 'label' }, xLabel));
  g.append(s('text', { x: 14, y: (M.top + H - M.bottom) / 2, 'text-anchor': 'middle', class: 'label',
    transform: `rotate(-90 14 ${(M.top + H - M.bottom) / 2})` }, yLabel));
  svg.append(g);
}

function yAxis(values, fixed) {
  const finite = values.filter(Number.isFinite);
  const min = fixed?.min ?? Math.min(0, ...finite);
  let max = fixed?.max ?? Math.max(...finite);
  // An all-zero series still gets a readable 0–1 axis.
  if (!(max - min > 1e-9)) max = min + 1;
  const t = ticks(min, finite.length ? max : 1);
  return { ...t, scale: (v) => H - M.bottom - ((v - t.lo) / (t.hi - t.lo)) * (H - M.top - M.bottom) };
}

function xTicks(lo, hi, format, count = 6) {
  if (format) {
    const out = [];
    const n = Math.min(count, Math.max(1, Math.round(hi - lo) || 1));
    for (let i = 0; i <= n; i++) {
      const value = lo + ((hi - lo) * i) / n;
      out.push({ value, label: format(value) });
    }
    return out;
  }
  return ticks(lo, hi, count).values.filter((v) => v >= lo && v <= hi && Number.isInteger(v))
    .map((value) => ({ value, label: tickLabel(value) }));
}

function legend(series) {
  return h('ul', { class: 'legend' }, series.map((sr, i) =>
    h('li', {}, h('span', { class: `swatch c${i}` }), sr.name)));
}

function figure(title, unitNote, svg, series) {
  return h('figure', { class: 'chart' },
    h('figcaption', {}, h('strong', {}, title), unitNote ? h('span', { class: 'muted' }, ` · ${unitNote}`) : null),
    svg, series.length > 1 ? legend(series) : null);
}

function empty(svg, text) {
  svg.append(s('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'empty' }, text));
}

/// series: [{name, points: [[x, y], ...]}]; x numeric (a step or a time in ms).
export function lineChart({ title, unit, xLabel, yLabel, series, xFormat, yRange }) {
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title });
  const all = series.flatMap((sr) => sr.points).filter(([, y]) => Number.isFinite(y));
  if (!all.length) {
    frame(svg, { ticks: [], scale: () => 0 }, yAxis([0, 1], yRange), xLabel, yLabel);
    empty(svg, 'No data yet');
    return figure(title, unit, svg, series);
  }
  const xs = all.map(([x]) => x);
  let lo = Math.min(...xs);
  let hi = Math.max(...xs);
  if (lo === hi) { lo -= 1; hi += 1; }
  const xScale = (v) => M.left + ((v - lo) / (hi - lo)) * (W - M.left - M.right);
  const y = yAxis(all.map(([, v]) => v), yRange);
  frame(svg, { ticks: xTicks(lo, hi, xFormat), scale: xScale }, y, xLabel, yLabel);
  series.forEach((sr, i) => {
    const pts = sr.points.filter(([, v]) => Number.isFinite(v));
    if (!pts.length) return;
    svg.append(s('polyline', { class: `line c${i}`, points: pts.map(([px, py]) => `${xScale(px)},${y.scale(py)}`).join(' ') }));
    if (pts.length <= 80) {
      for (const [px, py] of pts) {
        const dot = s('circle', { class: `dot c${i}`, cx: xScale(px), cy: y.scale(py), r: 3 });
        dot.append(s('title', {}, `${sr.name}: ${tickLabel(py)} at ${xFormat ? xFormat(px) : px}`));
        svg.append(dot);
      }
    }
  });
  return figure(title, unit, svg, series);
}

/// Stacked bars: categories [x labels], series [{name, values: [...]}] aligned with them.
export function barChart({ title, unit, xLabel, yLabel, categories, series }) {
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title });
  const totals = categories.map((_, i) => series.reduce((sum, sr) => sum + (sr.values[i] || 0), 0));
  const y = yAxis([0, ...totals]);
  const n = categories.length;
  const slot = (W - M.left - M.right) / Math.max(n, 1);
  const every = Math.max(1, Math.ceil(n / 8));
  const xt = categories.map((label, i) => ({ value: i, label })).filter((_, i) => i % every === 0);
  frame(svg, { ticks: xt, scale: (i) => M.left + slot * (i + 0.5) }, y, xLabel, yLabel);
  if (!n || totals.every((t) => t === 0)) empty(svg, 'No data yet');
  categories.forEach((label, i) => {
    let base = 0;
    series.forEach((sr, k) => {
      const v = sr.values[i] || 0;
      if (!v) return;
      const top = y.scale(base + v);
      const rect = s('rect', { class: `bar c${k}`, x: M.left + slot * i + slot * 0.15, width: Math.max(1, slot * 0.7), y: top, height: Math.max(0, y.scale(base) - top) });
      rect.append(s('title', {}, `${sr.name}: ${v} (${label})`));
      svg.append(rect);
      base += v;
    });
  });
  return figure(title, unit, svg, series);
}
