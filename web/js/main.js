// The dashboard's router: #/overview, #/sessions, #/sessions/<id>, #/training.

import { api } from './api.js';
import { clear, h } from './dom.js';
import { onLive, showServing, startLive } from './live.js';
import * as overview from './overview.js';
import * as sessions from './sessions.js';
import * as training from './training.js';

const view = document.getElementById('view');
let generation = 0;
let unsubscribe = () => {};

async function route() {
  const [, page = 'overview', arg] = (window.location.hash || '#/overview').split('/');
  for (const a of document.querySelectorAll('nav a')) {
    a.classList.toggle('active', a.dataset.page === page);
  }
  const mine = ++generation;
  unsubscribe();
  const module = { overview, sessions, training }[page] || overview;
  const stillMine = () => mine === generation;
  try {
    const onEvent = await module.render(view, arg, stillMine);
    if (stillMine() && onEvent) unsubscribe = onLive(onEvent);
  } catch (err) {
    if (stillMine()) clear(view, h('div', { class: 'error-box' }, `Could not load this page: ${err.message}`));
  }
}

async function start() {
  try {
    const me = await api('/me');
    document.getElementById('signout').hidden = me.auth !== 'token';
  } catch { /* the page still works; sign-out stays hidden */ }
  onLive((kind, data) => { if (kind === 'learner') showServing(data); });
  startLive();
  window.addEventListener('hashchange', route);
  route();
}

start();
