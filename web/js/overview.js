// Overview: counters, the serving version, judge agreement and the learning curves.

import { api, query } from './api.js';
import { barChart, lineChart } from './charts.js';
import { clear, fmt, h, pct } from './dom.js';
import { showServing } from './live.js';

let range = '24h';
const RANGES = { '1h': 'last hour', '6h': 'last 6 hours', '24h': 'last 24 hours', '7d': 'last 7 days', '30d': 'last 30 days' };

function card(label, value, detail, id) {
  return h('div', { class: 'card', dataset: { counter: id } },
    h('div', { class: 'card-label' }, label),
    h('div', { class: 'card-value' }, value),
    detail ? h('div', { class: 'card-detail' }, detail) : null);
}

function timeFormat(seconds) {
  return (ms) => {
    const d = new Date(ms);
    return seconds >= 86400 || range === '7d'
      ? d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' })
      : d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
  };
}

function bucketName(seconds) {
  if (seconds % 86400 === 0) return `${seconds / 86400} d`;
  if (seconds % 3600 === 0) return `${seconds / 3600} h`;
  return `${seconds / 60} min`;
}

function stepCharts(steps) {
  const m = (key) => steps.map((s) => [s.step, s.metrics?.[key] ?? null]);
  const stepsLabel = 'training step';
  return [
    lineChart({ title: 'Mean reward and judge score', unit: 'per step, −1 to +1', xLabel: stepsLabel, yLabel: 'score',
      yRange: { min: -1, max: 1 },
      series: [
        { name: 'mean reward (step metrics)', points: m('mean_reward') },
        { name: 'mean judge score of the step\'s samples', points: steps.map((s) => [s.step, s.judge_score]) },
      ] }),
    lineChart({ title: 'Training loss', unit: 'per step (PPO surrogate)', xLabel: stepsLabel, yLabel: 'loss', series: [{ name: 'loss', points: m('loss') }] }),
    lineChart({ title: 'Clip fraction', unit: 'share of tokens clipped, 0 to 1', xLabel: stepsLabel, yLabel: 'fraction',
      series: [{ name: 'clip fraction', points: m('clip_fraction') }] }),
    lineChart({ title: 'KL to the behaviour policy', unit: 'nats per token (approx.)', xLabel: stepsLabel, yLabel: 'KL (nats)',
      series: [{ name: 'KL', points: m('kl') }] }),
    barChart({ title: 'Samples by kind', unit: 'samples per step', xLabel: stepsLabel, yLabel: 'samples',
      categories: steps.map((s) => String(s.step)),
      series: ['rl', 'opd', 'both'].map((k) => ({ name: k, values: steps.map((s) => s.metrics?.[`samples_${k}`] ?? 0) })) }),
  ];
}

export async function render(view, _arg, stillMine) {
  const [overview, learner, steps, series] = await Promise.all([
    api('/overview'), api('/learner'), api('/steps?limit=200'), api(`/series${query({ range })}`),
  ]);
  if (!stillMine()) return null;
  const c = overview.counters;
  const serving = overview.serving;
  showServing(learner.enabled ? learner : serving);
  const agreement = overview.agreement;
  const ts = series.series;
  const starts = ts.starts.map((t) => new Date(t).getTime());
  const pointsOf = (name) => ts.series[name].map((n, i) => [starts[i], n]);
  const rangeSelect = h('select', { id: 'range', 'aria-label': 'Time range', onchange: (e) => { range = e.target.value; render(view, _arg, stillMine); } },
    Object.entries(RANGES).map(([value, label]) => h('option', { value, selected: value === range }, label)));
  const pinned = serving?.pinned_version;
  clear(view,
    h('div', { class: 'page-head' }, h('h1', {}, 'Overview'),
      h('p', { class: 'muted' }, learner.enabled ? `Learning mode: ${learner.mode}` : 'Learning is off on this server: turns are logged, nothing is trained.')),
    h('section', { class: 'cards' },
      card('Requests', fmt(c.turns), `${fmt(c.main_turns)} main turns · ${fmt(c.sessions)} sessions`, 'turns'),
      card('Next states', fmt(c.turns_with_next_state), 'turns whose follow-up arrived', 'next_states'),
      card('Feedback', fmt(c.feedback), `✓ ${fmt(c.feedback_up)} up · ✗ ${fmt(c.feedback_down)} down · ${fmt(c.corrections)} corrections`, 'feedback'),
      card('Judged turns', fmt(c.judged_turns), `${fmt(c.samples)} samples · ${fmt(c.samples_waiting)} waiting`, 'judged'),
      card('Serving version', serving ? `v${serving.serving_version}` : '–',
        pinned !== null && pinned !== undefined ? `pinned to v${pinned}` : `following latest (v${fmt(c.latest_promoted ?? 0)} promoted)`, 'serving'),
      card('Training', `${fmt(c.steps)} steps`, `${fmt(c.versions)} versions · ${fmt(c.rejected_versions)} rejected`, 'steps'),
      card('Judge agreement', pct(agreement.rate),
        agreement.pairs ? `${agreement.agree} agree · ${agreement.disagree} disagree · ${agreement.abstained} abstained, of ${agreement.pairs} turns with explicit feedback`
          : 'no turn has both explicit feedback and a judge verdict yet', 'agreement')),
    h('section', { class: 'note' },
      h('strong', {}, 'Judge chain: '),
      learner.judge_chain?.length ? learner.judge_chain.join(' → ') : 'none',
      learner.note ? h('span', { class: 'muted' }, ` — ${learner.note}`) : null),
    h('section', { class: 'panel' },
      h('div', { class: 'panel-head' }, h('h2', {}, 'Activity'), rangeSelect),
      lineChart({ title: 'Turns, next states, feedback and judgements', unit: `count per ${bucketName(ts.bucket_seconds)}`,
        xLabel: `time (${RANGES[range]})`, yLabel: `per ${bucketName(ts.bucket_seconds)}`, xFormat: timeFormat(ts.bucket_seconds),
        series: [
          { name: 'turns', points: pointsOf('turns') },
          { name: 'next states', points: pointsOf('next_states') },
          { name: 'feedback', points: pointsOf('feedback') },
          { name: 'judgements', points: pointsOf('judgements') },
        ] })),
    h('section', { class: 'panel' }, h('div', { class: 'panel-head' }, h('h2', {}, 'Learning')),
      h('div', { class: 'charts' }, stepCharts(steps.data))));
  let timer;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(() => { if (stillMine()) render(view, _arg, stillMine); }, 1500);
  };
}
