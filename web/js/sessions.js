// Sessions: a filtered, paged list across every key, and one session as a timeline with
// thumbs and a correction box on every turn.

import { api, query } from './api.js';
import { ago, clear, contentText, fmt, h, score, toast, when } from './dom.js';

const PAGE = 25;
const filters = { q: '', key: '', from: '', to: '', rewarded: '', corrected: '', offset: 0 };

export async function render(view, arg, stillMine) {
  return arg ? renderTimeline(view, arg, stillMine) : renderList(view, stillMine);
}

function filterForm(view, stillMine) {
  const input = (name, label, type = 'search', placeholder = '') =>
    h('label', {}, label, h('input', { name, type, value: filters[name], placeholder }));
  const select = (name, label, options) =>
    h('label', {}, label, h('select', { name }, options.map(([value, text]) => h('option', { value, selected: filters[name] === value }, text))));
  const form = h('form', { class: 'filters', role: 'search' },
    input('q', 'Search', 'search', 'text in requests, responses, ids'),
    input('key', 'Key id', 'search', 'exact key id'),
    input('from', 'Active from', 'date'),
    input('to', 'Created until', 'date'),
    select('rewarded', 'Rewarded', [['', 'any or none'], ['any', 'has a reward'], ['positive', 'positive reward'], ['negative', 'negative reward'], ['none', 'no reward']]),
    select('corrected', 'Corrected', [['', 'either'], ['yes', 'has a correction'], ['no', 'no correction']]),
    h('button', { type: 'submit', class: 'primary' }, 'Apply'),
    h('button', { type: 'reset', class: 'quiet' }, 'Clear'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    for (const [k, v] of new FormData(form)) filters[k] = String(v).trim();
    filters.offset = 0;
    renderList(view, stillMine);
  });
  form.addEventListener('reset', (e) => {
    e.preventDefault();
    Object.assign(filters, { q: '', key: '', from: '', to: '', rewarded: '', corrected: '', offset: 0 });
    renderList(view, stillMine);
  });
  return form;
}

async function renderList(view, stillMine) {
  const { offset, ...rest } = filters;
  const page = await api(`/sessions${query({ ...rest, offset, limit: PAGE })}`);
  if (!stillMine()) return null;
  const rows = page.data.map((s) => h('tr', { dataset: { pk: s.pk } },
    h('td', {}, h('a', { href: `#/sessions/${s.pk}` }, s.session_id), s.explicit ? h('span', { class: 'tag' }, 'explicit') : null),
    h('td', { class: 'mono' }, s.key_id || '(no key)'),
    h('td', { class: 'num' }, fmt(s.turn_count)),
    h('td', { class: 'num' }, `✓ ${s.feedback_up} · ✗ ${s.feedback_down}`),
    h('td', { class: 'num' }, fmt(s.corrections)),
    h('td', { class: 'num' }, fmt(s.judged)),
    h('td', { class: 'num' }, score(s.mean_reward === null ? null : Number(s.mean_reward.toFixed(2)))),
    h('td', { class: 'num' }, s.last_version === null ? '–' : `v${s.last_version}`),
    h('td', { title: when(s.updated_at) }, ago(s.updated_at))));
  const last = Math.min(page.offset + page.data.length, page.total);
  const pager = h('div', { class: 'pager' },
    h('button', { class: 'quiet', disabled: page.offset === 0, onclick: () => { filters.offset = Math.max(0, page.offset - PAGE); renderList(view, stillMine); } }, '← Newer'),
    h('span', { class: 'muted' }, page.total ? `${page.offset + 1}–${last} of ${page.total}` : 'no sessions match'),
    h('button', { class: 'quiet', disabled: last >= page.total, onclick: () => { filters.offset = page.offset + PAGE; renderList(view, stillMine); } }, 'Older →'));
  clear(view,
    h('div', { class: 'page-head' }, h('h1', {}, 'Sessions'), h('p', { class: 'muted' }, 'Every key\'s conversations, newest activity first.')),
    filterForm(view, stillMine),
    h('div', { class: 'table-wrap' }, h('table', { class: 'data', id: 'sessions-table' },
      h('thead', {}, h('tr', {}, ['Session', 'Key', 'Turns', 'Feedback', 'Corrections', 'Judged', 'Mean reward', 'Version', 'Updated'].map((t) => h('th', {}, t)))),
      h('tbody', {}, rows))),
    pager);
  let timer;
  return (kind) => {
    if (kind !== 'turn' && kind !== 'feedback' && kind !== 'judgement') return;
    clearTimeout(timer);
    timer = setTimeout(() => { if (stillMine()) renderList(view, stillMine); }, 800);
  };
}

function block(label, ...content) {
  return h('div', { class: 'block' }, h('div', { class: 'block-label' }, label), h('div', { class: 'block-body' }, ...content));
}

function text(value) {
  return h('div', { class: 'text' }, value);
}

function lastUser(messages) {
  const user = [...(messages || [])].reverse().find((m) => m.role === 'user');
  return user ? contentText(user.content) : '';
}

function feedbackBox(turn, reload) {
  const correction = h('textarea', { rows: 2, placeholder: 'Correction: what the reply should have been (optional)', 'aria-label': 'Correction' });
  const send = async (rating) => {
    try {
      const body = { response_id: turn.response_id, rating };
      if (rating === 'down' && correction.value.trim()) body.correction = correction.value.trim();
      await api('/feedback', { method: 'POST', body });
      toast(rating === 'up' ? 'Thumbs up recorded' : 'Thumbs down recorded');
      reload();
    } catch (err) {
      toast(err.message, 'error');
    }
  };
  return h('div', { class: 'actions' },
    h('button', { class: 'thumb up', title: 'Good reply', onclick: () => send('up') }, '✓ Good'),
    h('button', { class: 'thumb down', title: 'Bad reply (with the correction, if any)', onclick: () => send('down') }, '✗ Bad'),
    correction);
}

function turnCard(turn, reload) {
  const messages = turn.messages || [];
  const judgements = turn.judgements || [];
  return h('article', { class: 'turn', id: `turn-${turn.response_id}`, dataset: { responseId: turn.response_id } },
    h('header', {},
      h('strong', {}, `Turn ${turn.seq}`),
      h('span', { class: 'tag' }, `v${turn.policy_version}`),
      turn.turn_type !== 'main' ? h('span', { class: 'tag', title: 'logged, never trained on' }, turn.side_reason ? `${turn.turn_type}: ${turn.side_reason.replace('_', ' ')}` : turn.turn_type) : null,
      turn.link_method ? h('span', { class: 'tag link-method', title: 'how this turn joined the session' }, `linked: ${turn.link_method.replaceAll('_', ' ')}`) : null,
      h('span', { class: 'muted mono' }, turn.response_id),
      h('span', { class: 'muted' }, `${turn.model} · ${fmt(turn.latency_ms)} ms · ${fmt(turn.usage?.completion_tokens)} tokens`),
      h('time', { class: 'muted', datetime: turn.created_at, title: when(turn.created_at) }, ago(turn.created_at))),
    block('Request', text(lastUser(messages)),
      h('details', {}, h('summary', {}, `Full request (${messages.length} messages)`),
        messages.map((m) => h('div', { class: 'msg' }, h('span', { class: 'role' }, m.role), text(contentText(m.content)))))),
    block('Response', text(turn.response?.content || ''),
      turn.response?.tool_calls ? h('pre', { class: 'json' }, JSON.stringify(turn.response.tool_calls, null, 2)) : null,
      h('div', { class: 'muted small' }, `finish: ${turn.response?.finish_reason}`)),
    block('Next state', turn.next_state
      ? turn.next_state.map((n) => h('div', { class: 'msg' }, h('span', { class: 'role' }, n.role), text(n.content)))
      : h('span', { class: 'muted' }, 'not arrived yet')),
    block('Judgement', judgements.length
      ? judgements.map((j) => h('div', { class: 'judgement' },
        h('span', { class: 'tag' }, j.source || j.judge), ' score ', score(j.score),
        h('span', { class: 'muted mono' }, ` votes ${JSON.stringify(j.votes)}`),
        j.hint ? h('div', {}, h('span', { class: 'muted' }, 'hint: '), h('span', { class: 'hint' }, j.hint)) : null,
        j.hint_votes ? h('details', {}, h('summary', {}, 'all hint votes'), h('pre', { class: 'json' }, JSON.stringify(j.hint_votes, null, 2))) : null))
      : h('span', { class: 'muted' }, 'not judged yet')),
    (turn.samples || []).length ? block('Samples', turn.samples.map((s) => h('div', {},
      h('span', { class: 'tag' }, s.kind || 'sample'), ' reward ', score(s.reward),
      h('span', { class: 'muted' }, s.used_in_step !== null ? ` · used in step ${s.used_in_step}` : ' · waiting')))) : null,
    block('Feedback', turn.feedback?.length
      ? turn.feedback.map((f) => h('div', { class: `feedback ${f.rating}` },
        f.rating === 'up' ? '✓ up' : '✗ down', ` · ${f.source} · ${ago(f.created_at)}`,
        f.correction ? h('div', { class: 'text correction' }, f.correction) : null))
      : h('span', { class: 'muted' }, 'none'),
    feedbackBox(turn, reload)));
}

async function renderTimeline(view, pk, stillMine) {
  const load = async () => {
    const t = await api(`/sessions/${encodeURIComponent(pk)}`);
    if (!stillMine()) return;
    const s = t.session;
    clear(view,
      h('div', { class: 'page-head' },
        h('a', { href: '#/sessions', class: 'back' }, '← Sessions'),
        h('h1', {}, s.session_id),
        h('p', { class: 'muted' }, `key ${s.key_id || '(no key)'} · ${s.turn_count} turns · started ${when(s.created_at)} · last ${ago(s.updated_at)}`)),
      h('div', { class: 'timeline' }, t.turns.map((turn) => turnCard(turn, load))));
  };
  await load();
  let timer;
  return (kind, data) => {
    if (String(data.session_pk) !== String(pk)) return;
    // Never wipe a correction the admin is typing.
    if ([...view.querySelectorAll('textarea')].some((t) => t.value.trim())) return;
    clearTimeout(timer);
    timer = setTimeout(load, 500);
  };
}
