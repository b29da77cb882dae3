// The live feed: one EventSource on /admin/api/live (it carries the sign-in cookie); events go
// to the side panel and to whichever page is open.

import { h, ago, fmt, score } from './dom.js';

const KINDS = ['turn', 'next_state', 'feedback', 'judgement', 'step', 'version', 'learner'];
const MAX_ITEMS = 60;
const listeners = new Set();

export function onLive(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function setStatus(text, on) {
  const el = document.getElementById('live-status');
  el.textContent = text;
  el.className = `live ${on ? 'on' : 'off'}`;
}

function link(data, ...children) {
  return data.session_pk ? h('a', { href: `#/sessions/${data.session_pk}` }, ...children) : children;
}

function item(kind, data) {
  const time = h('time', { datetime: data.created_at || '' }, ago(data.created_at || new Date().toISOString()));
  switch (kind) {
    case 'turn':
      return [link(data, `Turn ${data.seq} · ${data.session_id}`), ` · v${data.policy_version}`,
        h('p', { class: 'req' }, data.request), h('p', { class: 'resp' }, data.response), time];
    case 'next_state':
      return [link(data, `Next state (${data.role})`), h('p', { class: 'req' }, data.content), time];
    case 'feedback':
      return [link(data, data.rating === 'up' ? '✓ Thumbs up' : '✗ Thumbs down'), ` · ${data.source}`,
        data.correction ? h('p', { class: 'req' }, data.correction) : null, time];
    case 'judgement':
      return [link(data, `Judged by ${data.source || data.judge}`), ' ', score(data.score),
        data.hint ? h('p', { class: 'req' }, `hint: ${data.hint}`) : null, time];
    case 'step':
      return [h('a', { href: '#/training' }, `Training step ${data.step}`),
        ` · loss ${fmt(data.metrics?.loss)}`, time];
    case 'version':
      return [h('a', { href: '#/training' }, `Version ${data.version}`), ` · ${data.status}`,
        data.reason ? h('p', { class: 'req' }, data.reason) : null, time];
    case 'learner':
      return [`Serving v${data.serving_version}`, data.pinned_version !== null ? ` (pinned)` : ' (following latest)', time];
    default:
      return [kind];
  }
}

export function startLive() {
  const feed = document.getElementById('feed');
  const source = new EventSource('/admin/api/live');
  source.addEventListener('hello', () => setStatus('live', true));
  source.addEventListener('store', (e) => {
    const data = JSON.parse(e.data);
    setStatus(data.ok ? 'live' : 'store unavailable', data.ok);
  });
  source.onerror = () => setStatus('reconnecting…', false);
  for (const kind of KINDS) {
    source.addEventListener(kind, (e) => {
      let data;
      try { data = JSON.parse(e.data); } catch { return; }
      const li = h('li', { class: `ev ${kind}`, dataset: { kind, responseId: data.response_id || '' } }, item(kind, data));
      feed.prepend(li);
      while (feed.children.length > MAX_ITEMS) feed.lastElementChild.remove();
      for (const fn of listeners) fn(kind, data);
    });
  }
  return source;
}

export function showServing(status) {
  if (!status) return;
  const el = document.getElementById('serving');
  const pinned = status.pinned_version !== null && status.pinned_version !== undefined;
  el.textContent = `serving v${status.serving_version}${pinned ? ' · pinned' : ''}`;
  el.className = `badge ${pinned ? 'pinned' : ''}`;
}
