// DOM building without innerHTML: every string becomes a text node, so user and model text
// is always shown literally, never parsed as markup.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const number = new Intl.NumberFormat(undefined, { maximumFractionDigits: 3 });

export function fmt(value, digits) {
  if (value === null || value === undefined || Number.isNaN(value)) return '–';
  if (typeof value !== 'number') return String(value);
  if (digits !== undefined) return value.toFixed(digits);
  return number.format(value);
}

export function pct(value) {
  return value === null || value === undefined ? '–' : `${(value * 100).toFixed(0)} %`;
}

export function when(iso) {
  if (!iso) return '–';
  const date = new Date(iso);
  return date.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
}

export function ago(iso) {
  if (!iso) return '–';
  const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 5) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function score(value) {
  if (value === null || value === undefined) return h('span', { class: 'score none' }, '–');
  const kind = value > 0 ? 'pos' : value < 0 ? 'neg' : 'zero';
  return h('span', { class: `score ${kind}` }, value > 0 ? `+${fmt(value)}` : fmt(value));
}

/// A message's text, whatever shape its content has.
export function contentText(content) {
  if (content === null || content === undefined) return '';
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) return content.map((p) => p.text ?? `[${p.type}]`).join(' ');
  return JSON.stringify(content);
}

let toastTimer;
export function toast(message, kind = 'ok') {
  const el = document.getElementById('toast');
  el.textContent = message;
  el.className = kind;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 4000);
}
