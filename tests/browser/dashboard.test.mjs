// The dashboard in a real browser (Debian's chromium, headless, driven by playwright-core)
// against a running `hindsight serve`. Environment: HINDSIGHT_BASE (http://host:port),
// HINDSIGHT_ADMIN_TOKEN, HINDSIGHT_ARTIFACTS (screenshots), CHROMIUM (default /usr/bin/chromium).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BASE = process.env.HINDSIGHT_BASE || 'http://127.0.0.1:8080';
const TOKEN = process.env.HINDSIGHT_ADMIN_TOKEN;
const ARTIFACTS = process.env.HINDSIGHT_ARTIFACTS || 'target/browser-artifacts';
const MARKER = `xss-${Date.now()}`;
const PAYLOAD = `${MARKER} <script>alert("xss")</script><img src=x onerror="alert(1);window.__xss=1"><b>bold</b>`;
const CORRECTION = 'Answer in one short sentence. <i>not italic</i>';

let browser;
let page;
const dialogs = [];
const pageErrors = [];

async function admin(path, init = {}) {
  const response = await fetch(`${BASE}/admin/api${path}`, {
    ...init,
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json', ...(init.headers || {}) },
  });
  const body = await response.json();
  assert.ok(response.ok, `${path}: ${response.status} ${JSON.stringify(body)}`);
  return body;
}

async function shot(name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

async function noInjectedCode() {
  const state = await page.evaluate(() => ({
    xss: window.__xss,
    imgs: document.querySelectorAll('#view img, #feed img').length,
    bolds: [...document.querySelectorAll('#view b, #feed b')].length,
    scripts: [...document.querySelectorAll('script')].filter((s) => !s.src).length,
  }));
  assert.deepEqual(state, { xss: undefined, imgs: 0, bolds: 0, scripts: 0 }, 'injected markup must stay text');
  assert.deepEqual(dialogs, [], 'no dialog may open');
}

before(async () => {
  assert.ok(TOKEN, 'HINDSIGHT_ADMIN_TOKEN must be set');
  mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu'],
  });
  page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  page.on('dialog', async (dialog) => { dialogs.push(dialog.message()); await dialog.dismiss(); });
  page.on('pageerror', (err) => pageErrors.push(err.message));
});

after(async () => {
  await browser?.close();
});

test('sign in with the admin token', async () => {
  const response = await page.goto(`${BASE}/dashboard`);
  assert.equal(response.status(), 401);
  await page.waitForSelector('form[action="/admin/login"]');
  await shot('0-sign-in');
  await page.fill('#token', 'wrong-token');
  await page.click('button[type=submit]');
  await page.waitForSelector('.login-card .error');
  await page.fill('#token', TOKEN);
  await page.click('button[type=submit]');
  await page.waitForSelector('#live-status.on', { timeout: 15000 });
  await page.waitForSelector('.cards .card');
  const cookies = await page.context().cookies();
  const session = cookies.find((c) => c.name === 'hindsight_admin');
  assert.ok(session?.httpOnly, 'the sign-in cookie is HttpOnly');
  assert.notEqual(session.value, TOKEN, 'the cookie is not the token');
  assert.equal(await page.evaluate(() => document.cookie.includes('hindsight_admin')), false);
  const html = await page.content();
  assert.ok(!html.includes(TOKEN), 'no secret in the page');
  await shot('1-overview');
});

let responseId;
let sessionPk;

test('a chat request appears live, with injected markup shown as text', async () => {
  const models = await (await fetch(`${BASE}/v1/models`)).json();
  const chat = await fetch(`${BASE}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: models.data[0].id, max_tokens: 16, temperature: 0, messages: [{ role: 'user', content: PAYLOAD }] }),
  });
  assert.equal(chat.status, 200);
  responseId = (await chat.json()).id;
  const item = page.locator(`#feed li[data-kind="turn"][data-response-id="${responseId}"]`);
  await item.waitFor({ timeout: 20000 });
  const text = await item.innerText();
  assert.ok(text.includes('<script>alert("xss")</script>'), `the payload is visible literally: ${text}`);
  await noInjectedCode();
  await shot('2-live-turn');
});

test('sessions list, search and the timeline render the payload inert', async () => {
  await page.click('nav a[data-page="sessions"]');
  await page.waitForSelector('#sessions-table');
  await page.fill('input[name="q"]', MARKER);
  await page.click('.filters button[type=submit]');
  await page.waitForFunction(() => document.querySelectorAll('#sessions-table tbody tr').length === 1);
  await shot('3-sessions');
  await page.click('#sessions-table tbody tr a');
  const card = page.locator(`article.turn[data-response-id="${responseId}"]`);
  await card.waitFor();
  const text = await card.innerText();
  assert.ok(text.includes(PAYLOAD.slice(MARKER.length + 1)), `the request is shown literally: ${text}`);
  // How the turn joined its session (a first message starts a new one).
  assert.ok(text.includes('linked: new'), `the link method is shown: ${text}`);
  sessionPk = Number(new URL(page.url()).hash.split('/')[2]);
  assert.ok(sessionPk > 0);
  await noInjectedCode();
  await shot('4-timeline');
});

test('a thumbs-down with a correction is recorded', async () => {
  const card = page.locator(`article.turn[data-response-id="${responseId}"]`);
  await card.locator('textarea').fill(CORRECTION);
  await card.locator('button.thumb.down').click();
  await page.waitForSelector('#toast:not([hidden])');
  // The timeline reloads and shows the correction as text.
  await page.locator(`article.turn[data-response-id="${responseId}"] .feedback.down`).waitFor();
  const timeline = await admin(`/sessions/${sessionPk}`);
  const turn = timeline.turns.find((t) => t.response_id === responseId);
  assert.deepEqual(turn.feedback.map((f) => [f.rating, f.source, f.correction]), [['down', 'dashboard', CORRECTION]]);
  await page.locator(`#feed li[data-kind="feedback"][data-response-id="${responseId}"]`).waitFor({ timeout: 10000 });
  await noInjectedCode();
  await shot('5-feedback');
});

test('training page; roll back a version when a learner serves one', async (t) => {
  await page.click('nav a[data-page="training"]');
  await page.waitForSelector('#versions-table');
  await shot('6-training');
  const learner = await admin('/learner');
  // The thumbs-down above is the learner's one sample: wait for the step it triggers.
  let versions = [];
  for (let i = 0; learner.enabled && versions.length === 0 && i < 240; i++) {
    versions = (await admin('/versions')).data.filter((v) => v.status !== 'rejected');
    if (versions.length === 0) await new Promise((r) => setTimeout(r, 1000));
  }
  if (!learner.enabled || versions.length === 0) {
    t.skip(`needs a learner with a published version (learner enabled: ${learner.enabled}, versions: ${versions.length})`);
    return;
  }
  // Roll back to the oldest promoted version (or the base model when only one exists).
  const target = versions.length > 1 ? versions[versions.length - 1].version : 0;
  const row = page.locator(`#versions-table tr[data-version="${target}"]`);
  await row.locator('button', { hasText: 'Roll back' }).click();
  await row.locator('button.armed').click();
  await page.waitForFunction((v) => document.getElementById('learner-serving')?.textContent === `v${v}`, target, { timeout: 30000 });
  const status = await admin('/learner');
  assert.equal(status.serving_version, target);
  assert.equal(status.pinned_version, target);
  await shot('7-rolled-back');
  await admin('/learner/follow-latest', { method: 'POST', body: '{}' });
});

test('no page errors', () => {
  assert.deepEqual(pageErrors, []);
});
