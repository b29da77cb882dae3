// Training: the learner's state, versions with roll back / pin / follow latest, and the steps.

import { api } from './api.js';
import { ago, clear, fmt, h, toast, when } from './dom.js';
import { showServing } from './live.js';

/// A button that asks for a second click before acting (no modal dialogs).
function confirmButton(label, confirmLabel, action, disabled) {
  const button = h('button', { class: 'quiet', disabled });
  button.textContent = label;
  let armed = false;
  button.addEventListener('click', async () => {
    if (!armed) {
      armed = true;
      button.textContent = confirmLabel;
      button.classList.add('armed');
      setTimeout(() => { armed = false; button.textContent = label; button.classList.remove('armed'); }, 4000);
      return;
    }
    button.disabled = true;
    await action();
  });
  return button;
}

function metric(m, key, digits) {
  const v = m?.[key];
  return typeof v === 'number' ? (digits !== undefined ? v.toFixed(digits) : fmt(v)) : '–';
}

export async function render(view, _arg, stillMine) {
  const [learner, versions, steps] = await Promise.all([api('/learner'), api('/versions'), api('/steps?limit=500')]);
  if (!stillMine()) return null;
  if (learner.enabled) showServing(learner);
  const act = (path, body, done) => async () => {
    try {
      const status = await api(`/learner/${path}`, { method: 'POST', body });
      showServing(status);
      toast(done);
    } catch (err) {
      toast(err.message, 'error');
    }
    render(view, _arg, stillMine);
  };
  const off = !learner.enabled;
  const versionRow = (v) => h('tr', { dataset: { version: v.version }, class: v.version === learner.serving_version ? 'serving' : '' },
    h('td', { class: 'num' }, h('strong', {}, `v${v.version}`)),
    h('td', { class: 'num' }, v.step ?? '–'),
    h('td', {}, h('span', { class: `status ${v.status}` }, v.status.replace('_', ' ')),
      v.version === learner.serving_version ? h('span', { class: 'tag' }, 'serving') : null,
      v.version === learner.pinned_version ? h('span', { class: 'tag pinned' }, 'pinned') : null),
    h('td', {}, v.reason ? h('span', { class: 'reason' }, v.reason) : h('span', { class: 'muted' }, '–'),
      v.guard ? h('details', {}, h('summary', {}, 'guard results'), h('pre', { class: 'json' }, JSON.stringify(v.guard, null, 2))) : null),
    h('td', { title: when(v.created_at) }, ago(v.created_at)),
    h('td', { class: 'row-actions' },
      confirmButton('Roll back', `Serve v${v.version} now?`, act('rollback', { version: v.version }, `Rolled back to v${v.version}`), off),
      confirmButton('Pin', `Pin v${v.version}?`, act('pin', { version: v.version }, `Pinned v${v.version}`), off)));
  clear(view,
    h('div', { class: 'page-head' }, h('h1', {}, 'Training')),
    h('section', { class: 'panel learner' },
      h('div', { class: 'panel-head' }, h('h2', {}, 'Learner'),
        confirmButton('Follow latest', 'Serve the latest promoted version?', act('follow-latest', {}, 'Following the latest version'), off || learner.following_latest)),
      h('dl', { class: 'facts' },
        h('dt', {}, 'Status'), h('dd', {}, learner.enabled ? `on · mode ${learner.mode}` : 'off'),
        h('dt', {}, 'Serving'), h('dd', { id: 'learner-serving' }, `v${learner.serving_version}`),
        h('dt', {}, 'Pinned'), h('dd', {}, learner.pinned_version === null || learner.pinned_version === undefined ? 'no (following latest)' : `v${learner.pinned_version}`),
        h('dt', {}, 'Judge chain'), h('dd', {}, learner.judge_chain?.length ? learner.judge_chain.join(' → ') : '–'),
        h('dt', {}, 'Samples waiting'), h('dd', {}, fmt(learner.samples_waiting))),
      learner.note ? h('p', { class: 'note' }, learner.note) : null),
    h('section', { class: 'panel' }, h('div', { class: 'panel-head' }, h('h2', {}, 'Policy versions')),
      h('div', { class: 'table-wrap' }, h('table', { class: 'data', id: 'versions-table' },
        h('thead', {}, h('tr', {}, ['Version', 'Step', 'Status', 'Why / guard', 'Published', ''].map((t) => h('th', {}, t)))),
        h('tbody', {}, versions.data.map(versionRow), h('tr', { dataset: { version: 0 }, class: learner.serving_version === 0 ? 'serving' : '' },
          h('td', { class: 'num' }, h('strong', {}, 'v0')), h('td', {}, '–'), h('td', {}, h('span', { class: 'status base' }, 'base model'),
            learner.serving_version === 0 ? h('span', { class: 'tag' }, 'serving') : null), h('td', { class: 'muted' }, 'no adapter'), h('td', {}, '–'),
          h('td', { class: 'row-actions' }, confirmButton('Roll back', 'Serve the base model now?', act('rollback', { version: 0 }, 'Rolled back to the base model'), off))))))),
    h('section', { class: 'panel' }, h('div', { class: 'panel-head' }, h('h2', {}, 'Training steps')),
      h('div', { class: 'table-wrap' }, h('table', { class: 'data', id: 'steps-table' },
        h('thead', {}, h('tr', {}, ['Step', 'Version', 'Loss', 'Clip frac.', 'KL (nats)', 'Mean reward', 'Judge score', 'RL', 'OPD', 'Both', 'Grad norm', 'Tokens', 'Time (s)', 'When'].map((t) => h('th', {}, t)))),
        h('tbody', {}, [...steps.data].reverse().map((s) => h('tr', {},
          h('td', { class: 'num' }, s.step), h('td', { class: 'num' }, `v${s.created_version ?? s.policy_version}`),
          h('td', { class: 'num' }, metric(s.metrics, 'loss', 4)), h('td', { class: 'num' }, metric(s.metrics, 'clip_fraction', 3)),
          h('td', { class: 'num' }, metric(s.metrics, 'kl', 4)), h('td', { class: 'num' }, metric(s.metrics, 'mean_reward', 3)),
          h('td', { class: 'num' }, s.judge_score === null ? '–' : s.judge_score.toFixed(3)),
          h('td', { class: 'num' }, metric(s.metrics, 'samples_rl')), h('td', { class: 'num' }, metric(s.metrics, 'samples_opd')),
          h('td', { class: 'num' }, metric(s.metrics, 'samples_both')), h('td', { class: 'num' }, metric(s.metrics, 'grad_norm', 3)),
          h('td', { class: 'num' }, metric(s.metrics, 'tokens')), h('td', { class: 'num' }, metric(s.metrics, 'step_seconds', 2)),
          h('td', { title: when(s.created_at) }, ago(s.created_at))))))),
      steps.data.length ? null : h('p', { class: 'muted empty-note' }, 'No training steps yet.')));
  let timer;
  return (kind) => {
    if (!['step', 'version', 'learner'].includes(kind)) return;
    clearTimeout(timer);
    timer = setTimeout(() => { if (stillMine()) render(view, _arg, stillMine); }, 800);
  };
}
