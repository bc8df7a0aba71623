// End to end in real Chromium (Debian's, driven by playwright-core) against a real taos host.
// Started by host-service/tests/host/ui.rs, which runs the host, real LiteLLM and the fake
// upstream, and passes:
//   TAOS_URL          the host's public URL (self-signed TLS: this browser ignores cert errors)
//   TAOS_LOCAL_TOKEN  the host's local admin token (to raise a notification from "outside")
//   TAOS_DATA_DIR     the host's data dir: first-run setup reads its setup-code file, as the
//                     person at the host would
//   TAOS_FINGERPRINT  what `taos-host fingerprint` prints: the sign-in page must show it
//   TAOS_FAKE_URL     the fake LLM upstream's base URL; TAOS_FAKE_KEY its API key
//   TAOS_E2E_OUT      where screenshots go (default target/ui-e2e)
//   TAOS_E2E_AGENT    the name of the agent to deploy (default "UI Helper")
//   TAOS_AGENT_BIN    the workspace's `taos-agent`, run with the credentials a page shows
// Exits 0 only if every step passed; prints one line per step.
import { mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { chromium, request } from 'playwright-core';
import { makeChatChecks } from './chat_checks.mjs';
import { makeInsightChecks } from './insight_checks.mjs';
import { makeScreens } from './screens.mjs';
import { makeToolChecks } from './tool_checks.mjs';
import { makeBackupChecks } from './backup_checks.mjs';
import { makeOutboxChecks } from './outbox_checks.mjs';
import { makeBoardChecks } from './board_checks.mjs';
import { makeChannelChecks } from './channel_checks.mjs';
import { makeOfflineChecks } from './offline_checks.mjs';

const URL_ = required('TAOS_URL');
const LOCAL_TOKEN = required('TAOS_LOCAL_TOKEN');
const DATA_DIR = required('TAOS_DATA_DIR');
const FINGERPRINT = required('TAOS_FINGERPRINT');
const FAKE_URL = required('TAOS_FAKE_URL');
const FAKE_KEY = process.env.TAOS_FAKE_KEY ?? '';
const OUT = resolve(process.env.TAOS_E2E_OUT ?? 'target/ui-e2e');
const AGENT = process.env.TAOS_E2E_AGENT ?? 'UI Helper';
const SLUG = AGENT.toLowerCase().replace(/[^a-z0-9]+/g, '-');
const REPLY = 'Hello from the fake model.';
let PASSWORD = 'correct horse battery staple';
const AGENT_BIN = process.env.TAOS_AGENT_BIN ?? '';

function required(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`missing ${name}`);
    process.exit(2);
  }
  return v;
}

mkdirSync(OUT, { recursive: true });
// playwright-core gives every launch a fresh, empty profile (its own --user-data-dir).
const LAUNCH_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: LAUNCH_ARGS,
});

const problems = []; // CSP violations and page errors, from every page
let failed = false;
let shot = 0;
let insight = null; // issue 19's checks, made below; screenshot() runs its accessibility check

function watch(page, label) {
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text())) problems.push(`${label}: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`${label}: page error: ${e.message}`));
  page.on('dialog', (d) => void d.accept());
}

async function screenshot(page, name) {
  const file = join(OUT, `${String(++shot).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, fullPage: false });
  // Every screen photographed is also checked for accessibility (issue 19).
  if (insight && name !== 'FAILED') await insight.axe(page, name);
  return file;
}

async function step(name, fn) {
  const started = Date.now();
  try {
    await fn();
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    failed = true;
    console.log(`FAIL ${name}: ${e?.stack ?? e}`);
    for (const p of browser.contexts().flatMap((c) => c.pages())) {
      await screenshot(p, 'FAILED').catch(() => {});
    }
    throw e;
  }
}

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

const desktop = await browser.newContext({
  ignoreHTTPSErrors: true,
  viewport: { width: 1280, height: 800 },
  // The copy buttons are checked by reading back what they copied.
  permissions: ['clipboard-read', 'clipboard-write'],
});
const page = await desktop.newPage();
watch(page, 'desktop');
page.setDefaultTimeout(20_000);
const screens = makeScreens({ page, desktop, browser, URL_, LOCAL_TOKEN, AGENT_BIN, OUT, SLUG, REPLY, assert, screenshot, watch });
const tools = makeToolChecks({ page, desktop, URL_, assert, screenshot });
const backups = makeBackupChecks({ page, URL_, DATA_DIR, assert, screenshot });
const outbox = makeOutboxChecks({ page, URL_, SLUG, assert, screenshot });
const board = makeBoardChecks({ page, desktop, browser, URL_, SLUG, assert, screenshot, watch });
const checks = makeChatChecks({ page, desktop, URL_, LOCAL_TOKEN, AGENT_BIN, OUT, SLUG, REPLY, assert, screenshot });
insight = makeInsightChecks({ page, URL_, SLUG, assert, screenshot });
const channels = makeChannelChecks({ page, desktop, browser, URL_, SLUG, REPLY, PERSON: 'sam', assert, screenshot, watch });
const offline = makeOfflineChecks({ page, URL_, SLUG, REPLY, LAUNCH_ARGS, assert, screenshot, watch });

try {
  await step('a page loaded without a session reaches no data and lands on login', async () => {
    const ctx = await browser.newContext({ ignoreHTTPSErrors: true });
    const p = await ctx.newPage();
    watch(p, 'anonymous');
    const answered = [];
    p.on('response', (r) => {
      const u = new URL(r.url());
      if (u.pathname.startsWith('/api/')) answered.push([u.pathname, r.status()]);
    });
    await p.goto(`${URL_}/agents`);
    await p.waitForURL(/\/login\?next=%2Fagents$/);
    await p.getByRole('heading', { name: /Create the owner account|Sign in/ }).waitFor();
    // The only API answers a visitor got: the public status. Nothing else returned data.
    const data = answered.filter(([path, status]) => status < 400 && path !== '/api/auth/status');
    assert(data.length === 0, `data reached without a session: ${JSON.stringify(data)}`);
    const direct = await p.evaluate(async () => (await fetch('/api/agents')).status);
    assert(direct === 401, `GET /api/agents without a session: ${direct}`);
    await screenshot(p, 'no-session-login');
    await ctx.close();
  });

  await step('first run: a wrong setup code is refused, the one from the data dir creates the owner', async () => {
    await page.goto(`${URL_}/`);
    await page.getByRole('heading', { name: 'Create the owner account' }).waitFor();
    const shown = await page.getByTestId('host-fingerprint').innerText();
    assert(shown === FINGERPRINT, `the page shows ${shown}, taos-host fingerprint says ${FINGERPRINT}`);
    await page.getByLabel('Username').fill('owner');
    await page.getByLabel('Password', { exact: true }).fill(PASSWORD);
    await page.getByLabel('Password again').fill(PASSWORD);
    await page.getByLabel('Setup code').fill('AAAA-AAAA-AAAA');
    await page.getByRole('button', { name: 'Create account' }).click();
    const refused = await page.getByTestId('login-error').innerText();
    assert(/setup code/.test(refused), `no setup-code error: ${refused}`);
    await screenshot(page, 'first-run');
    const code = readFileSync(join(DATA_DIR, 'setup-code'), 'utf8').trim();
    await page.getByLabel('Setup code').fill(code);
    await page.getByRole('button', { name: 'Create account' }).click();
    await page.getByRole('heading', { name: 'Agents' }).waitFor();
    await page.locator('[data-testid=live]', { hasText: 'live' }).waitFor();
    await screenshot(page, 'agents-empty');
  });

  await step('the first screen says how to add a provider and an agent', () => screens.firstScreen());

  await step('sign out, a wrong password is refused, sign in', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByRole('heading', { name: 'Sign in to taos' }).waitFor();
    assert((await page.getByTestId('host-fingerprint').innerText()) === FINGERPRINT, 'sign-in page fingerprint');
    await page.getByLabel('Username').fill('owner');
    await page.getByLabel('Password').fill('not the password');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByTestId('login-error').waitFor();
    await screenshot(page, 'login-refused');
    await page.getByLabel('Password').fill(PASSWORD);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Agents' }).waitFor();
  });

  await step('add a provider pointing at the fake upstream (from the first screen); LiteLLM becomes ready', async () => {
    await page.getByTestId('getting-started').getByRole('link', { name: 'Add a provider' }).click();
    await page.getByRole('heading', { name: 'Providers' }).waitFor();
    await page.getByLabel('Name', { exact: true }).fill('fake');
    await page.getByLabel('Type', { exact: true }).selectOption('openai-compatible');
    await page.getByLabel(/^URL/).fill(FAKE_URL);
    await page.getByLabel(/^API key/).fill(FAKE_KEY);
    await checks.watchLlmStatus();
    await page.getByRole('button', { name: 'Test' }).click();
    const test = page.getByTestId('provider-test');
    await test.waitFor();
    const text = await test.innerText();
    assert(/Reachable/.test(text) && text.includes('fake-gpt'), `provider test: ${text}`);
    await page.getByRole('button', { name: 'Add', exact: true }).click();
    // Adding restarts LiteLLM with the new models; the answer waits for that.
    await page.locator('[data-testid=provider][data-name=fake]').waitFor({ timeout: 300_000 });
    await page
      .locator('[data-testid=litellm-status][data-state=ready]', { hasText: 'fake-gpt' })
      .waitFor({ timeout: 300_000 });
    // With a provider there, LiteLLM's status never said to add one.
    await checks.llmStatusNeverSaidAddAProvider();
    await screenshot(page, 'providers');
  });

  await step("deploy form: each framework's verification, memory and disk needs beside what the host has free; a warning when short", () => tools.frameworkPicker());

  await step('deploy an agent (from the first screen) and watch its steps progress', async () => {
    await page.getByRole('link', { name: 'Agents' }).click();
    await screens.guideShowsProviderDone();
    await page.getByTestId('getting-started').getByRole('link', { name: 'Deploy an agent' }).click();
    await page.getByLabel('Name').fill(AGENT);
    const preview = await page.getByTestId('slug-preview').innerText();
    assert(preview.includes(`@${SLUG}`), `slug preview: ${preview}`);
    await checks.deployFormTexts();
    // openclaw leads the picker (and is preselected); this run deploys the small built-in agent.
    await page.getByLabel('Framework').selectOption('direct');
    await page.getByLabel('Model').selectOption('fake-gpt');
    await page.locator('summary', { hasText: 'Limits' }).click();
    await page.getByLabel('Memory (MiB)').fill('256');
    await page.getByLabel('Disk (GiB)').fill('2');
    await screenshot(page, 'deploy-wizard');
    await page.getByRole('button', { name: 'Deploy' }).click();
    const progress = page.getByTestId('deploy-progress');
    await progress.waitFor();
    // Sample the steps as they change: progress must be seen live, not only the end state.
    const seen = new Set();
    const deadline = Date.now() + 240_000;
    let status = 'running';
    let shotTaken = false;
    while (Date.now() < deadline) {
      status = (await progress.getAttribute('data-status')) ?? '';
      const states = await progress.locator('li').evaluateAll((lis) => lis.map((li) => li.getAttribute('data-state')));
      seen.add(states.join(','));
      if (!shotTaken && states.includes('running')) {
        await screenshot(page, 'deploy-progress');
        shotTaken = true;
      }
      if (status !== 'running') break;
      await page.waitForTimeout(100);
    }
    assert(status === 'succeeded', `deploy ended ${status}: ${await progress.innerText()}`);
    assert(seen.size >= 3, `saw too few progress states: ${[...seen].join(' | ')}`);
    await screenshot(page, 'deploy-done');
  });

  await step('chat: the reply streams in', async () => {
    await page.getByRole('link', { name: 'Open the agent' }).click();
    await page.locator('main').getByRole('link', { name: 'Chat', exact: true }).click();
    await page.getByLabel('Message', { exact: true }).waitFor();
    // Record every state a message row takes, to see the streaming one.
    await page.evaluate(() => {
      window.__states = new Set();
      new MutationObserver(() => {
        for (const el of document.querySelectorAll('[data-testid=message]')) window.__states.add(el.getAttribute('data-state'));
      }).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-state'] });
    });
    await page.getByLabel('Message', { exact: true }).fill('hello there');
    await page.keyboard.press('Enter');
    await page.locator('[data-testid=message][data-author="user:owner"]', { hasText: 'hello there' }).waitFor();
    const reply = page.locator(`[data-testid=message][data-author="${SLUG}"]`, { hasText: REPLY });
    await reply.waitFor({ timeout: 60_000 });
    await page.locator(`[data-testid=message][data-author="${SLUG}"][data-state=complete]`).waitFor();
    const states = await page.evaluate(() => [...window.__states]);
    assert(states.includes('streaming'), `never saw the reply streaming: ${states}`);
    const mine = await page.locator('[data-testid=message][data-author="user:owner"]').count();
    assert(mine === 1, `my message shows ${mine} times`);
    await screenshot(page, 'chat');
  });

  await step('chat: edit and delete my own messages', async () => {
    const mine = page.locator('[data-testid=message][data-author="user:owner"]', { hasText: 'hello there' });
    await mine.getByRole('button', { name: 'Edit' }).click();
    await page.getByLabel('Edit message').fill('hello there (edited)');
    await page.getByRole('button', { name: 'Save' }).click();
    await page.locator('[data-testid=message][data-author="user:owner"]', { hasText: 'hello there (edited)' }).getByText('edited', { exact: true }).waitFor();
    // The agent's messages are not mine to change.
    const theirs = page.locator(`[data-testid=message][data-author="${SLUG}"]`).first();
    assert((await theirs.getByRole('button', { name: 'Edit' }).count()) === 0, 'an agent message offers Edit');
    await page.getByLabel('Message', { exact: true }).fill('a message to delete');
    await page.keyboard.press('Enter');
    const doomed = page.locator('[data-testid=message][data-author="user:owner"]', { hasText: 'a message to delete' });
    await doomed.getByRole('button', { name: 'Delete' }).click();
    await page.getByText('Message deleted').waitFor();
    await screenshot(page, 'chat-edited');
  });

  await step('traces: from the navigation, the llm_call with its prompt and reply, and the whole turn', async () => {
    await screens.tracesContentAndNav();
    const call = page.getByTestId('llm-call').first();
    await call.waitFor();
    const text = await call.innerText();
    assert(text.includes('fake-gpt') && /tokens \d+ in/.test(text), `llm_call: ${text}`);
    await page.getByTestId('trace-totals').waitFor();
    await page.locator('[data-testid=trace-event][data-kind=message_in]', { hasText: 'hello there' }).getByRole('button', { name: 'Show turn' }).click();
    const turn = page.getByTestId('turn');
    await turn.waitFor();
    const kinds = await turn.locator('.chip').allInnerTexts();
    assert(kinds.includes('message_in') && kinds.includes('llm_call') && kinds.includes('message_out'), `turn: ${kinds}`);
    await screenshot(page, 'traces');
  });

  await step('trace timeline: "Show trace" on an answer opens its waterfall with the API\'s tokens, cost and durations; the list\'s histogram', () => insight.traceTimeline());
  await step('traces: more than a page of events, paged; per-day totals from the host', () => screens.tracesPagesAndTotals());

  await step('archive: the chat turns read-only', async () => {
    await page.getByRole('link', { name: 'Agents' }).click();
    const card = page.locator(`[data-testid=agent-card][data-slug="${SLUG}"]`);
    await card.getByRole('button', { name: 'Archive' }).click();
    await card.waitFor({ state: 'detached', timeout: 120_000 });
    const archived = page.locator(`[data-testid=archived-card][data-slug="${SLUG}"]`);
    await archived.waitFor();
    await screenshot(page, 'archived');
    await page.getByRole('link', { name: 'Chat' }).click();
    await page.getByTestId('archived-chats').locator('summary').click();
    await page.getByTestId('archived-chats').getByRole('link').first().click();
    await page.getByText('This chat is archived').waitFor();
    assert((await page.getByLabel('Message', { exact: true }).count()) === 0, 'an archived chat has a composer');
    await page.locator('[data-testid=message]', { hasText: REPLY }).first().waitFor();
    await screenshot(page, 'chat-archived');
  });

  await step('restore: the agent and its chat come back', async () => {
    await page.getByRole('link', { name: 'Agents' }).click();
    const archived = page.locator(`[data-testid=archived-card][data-slug="${SLUG}"]`);
    await archived.getByRole('button', { name: 'Restore' }).click();
    const card = page.locator(`[data-testid=agent-card][data-slug="${SLUG}"]`);
    await card.waitFor({ timeout: 180_000 });
    await card.getByRole('link', { name: 'Chat' }).click();
    await page.locator('[data-testid=message]', { hasText: 'hello there (edited)' }).waitFor();
    await page.locator('[data-testid=message]', { hasText: REPLY }).first().waitFor();
    assert((await page.getByLabel('Message', { exact: true }).count()) === 1, 'a restored chat has no composer');
    await screenshot(page, 'chat-restored');
  });

  await step('devices: a pairing QR code with a countdown', async () => {
    await page.getByRole('link', { name: 'Devices' }).click();
    await page.getByRole('button', { name: 'Show a pairing code' }).click();
    const qr = page.getByTestId('pairing-qr');
    await qr.waitFor();
    const width = await qr.evaluate(async (img) => {
      await img.decode();
      return img.naturalWidth;
    });
    assert(width > 0, 'the QR image did not render');
    const first = await page.getByTestId('countdown').innerText();
    // The countdown moves on by itself: wait for it to change rather than for a fixed time.
    await page.waitForFunction(
      (before) => document.querySelector('[data-testid="countdown"]')?.textContent?.trim() !== before,
      first.trim(),
    );
    const later = await page.getByTestId('countdown').innerText();
    assert(first !== later && /^[0-4]:\d\d$/.test(later), `countdown ${first} → ${later}`);
    await screenshot(page, 'devices-pairing');
  });

  await step('devices: a device paired with the copied token is listed and can be revoked', async () => {
    const token = await screens.devicesCopyToken();
    const app = await request.newContext({ ignoreHTTPSErrors: true });
    const r = await app.post(`${URL_}/api/devices/pair`, { data: { token, device_name: 'e2e phone', platform: 'android' } });
    assert(r.status() === 201, `pair with the page's token: ${r.status()}`);
    await app.dispose();
    await page.getByRole('link', { name: 'Agents' }).click();
    await page.getByRole('link', { name: 'Devices' }).click();
    const device = page.locator('[data-testid=device]', { hasText: 'e2e phone' });
    await device.waitFor();
    await screenshot(page, 'devices-paired');
    await device.getByRole('button', { name: 'Revoke' }).click();
    await device.waitFor({ state: 'detached' });
  });

  await step('a notification appears live, with an unread badge, and can be marked read', async () => {
    const before = Number((await page.getByTestId('unread-badge').count()) ? await page.getByTestId('unread-badge').innerText() : 0);
    const api = await request.newContext({ ignoreHTTPSErrors: true });
    const r = await api.post(`${URL_}/api/notifications`, {
      headers: { authorization: `Bearer ${LOCAL_TOKEN}` },
      data: { level: 'warning', title: 'Disk nearly full', message: 'e2e: raised from outside', source: 'e2e' },
    });
    assert(r.status() === 201, `POST /api/notifications: ${r.status()}`);
    await api.dispose();
    // No reload: it must arrive over /api/events.
    await page.getByTestId('unread-badge').filter({ hasText: String(before + 1) }).waitFor();
    await screenshot(page, 'notification-badge');
    await page.getByRole('link', { name: /Alerts/ }).click();
    const n = page.locator('[data-testid=notification]', { hasText: 'Disk nearly full' });
    await n.waitFor();
    await screenshot(page, 'notifications');
    await n.getByRole('button', { name: 'Mark read' }).click();
    await n.getByRole('button', { name: 'Mark read' }).waitFor({ state: 'detached' });
  });

  await step('a disk alert offers its actions: expand the quota, audit with the agent', async () => {
    // The alert is raised through the API (filling a disk takes minutes); its actions are real.
    const api = await request.newContext({ ignoreHTTPSErrors: true });
    const auth = { authorization: `Bearer ${LOCAL_TOKEN}` };
    const before = await (await api.get(`${URL_}/api/agents/${SLUG}/disk`, { headers: auth })).json();
    const r = await api.post(`${URL_}/api/notifications`, {
      headers: auth,
      data: {
        level: 'warning',
        title: `${SLUG} disk 85% full`,
        source: 'disk_quota',
        data: { agent: SLUG, quota_bytes: before.quota_bytes, actions: ['resize', 'admin-prompt:disk-audit'] },
      },
    });
    assert(r.status() === 201, `POST /api/notifications: ${r.status()}`);
    const n = page.locator('[data-testid=notification][data-source=disk_quota]');
    await n.waitFor();
    await n.getByRole('button', { name: 'Expand quota' }).click();
    await page.getByText(`Disk quota of @${SLUG} is now`).waitFor();
    const after = await (await api.get(`${URL_}/api/agents/${SLUG}/disk`, { headers: auth })).json();
    assert(after.quota_bytes === before.quota_bytes + 10 * 1024 ** 3, `quota ${before.quota_bytes} → ${after.quota_bytes}`);
    await api.dispose();
    await screenshot(page, 'alert-expanded');
    await n.getByRole('button', { name: 'Audit with agent' }).click();
    await page.waitForURL(/\/chat\//);
    await page.locator('[data-testid=message][data-author="user:owner"]', { hasText: 'Please audit your own disk usage' }).waitFor();
    await screenshot(page, 'alert-audit');
  });

  await step("the agent page's Audit with agent prefills the chat instead of sending", async () => {
    const sent = () => page.locator('[data-testid=message][data-author="user:owner"]', { hasText: 'Please audit your own disk usage' }).count();
    const before = await sent();
    await page.goto(`${URL_}/agents/${SLUG}`);
    await page.getByRole('button', { name: 'Audit with agent' }).click();
    await page.waitForURL(/\/chat\/[^?]+$/);
    await page.waitForFunction(() => document.querySelector('#composer')?.value.startsWith('Please audit your own disk usage'));
    // The alert's audit (the step before) is in the history; once it shows, no second one is.
    await page.locator('[data-testid=message][data-author="user:owner"]', { hasText: 'Please audit your own disk usage' }).first().waitFor();
    assert((await sent()) === before, 'the prompt was sent without the owner');
    await screenshot(page, 'audit-prefilled');
    // Not sent: the fake model's script is for the steps that follow.
    await page.locator('#composer').fill('');
  });

  await step('a long channel stays a short DOM (virtualised list)', async () => {
    const csrf = (await desktop.cookies()).find((c) => c.name === '__Host-taos_csrf')?.value ?? '';
    const headers = { 'x-csrf-token': csrf };
    const ch = await page.request.post(`${URL_}/api/chat/channels`, { headers, data: { name: 'long', members: ['user:owner'] } });
    assert(ch.ok(), `create channel: ${ch.status()}`);
    const channel = await ch.json();
    let next = 1;
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next <= 400) {
          const n = next++;
          const r = await page.request.post(`${URL_}/api/chat/messages`, { headers, data: { channel_id: channel.id, content: `line ${n}`, client_id: `long-${n}` } });
          assert(r.ok(), `post ${n}: ${r.status()}`);
        }
      }),
    );
    await page.goto(`${URL_}/chat/${channel.id}`);
    await page.locator('[data-testid=message] .content', { hasText: /^line 400$/ }).waitFor();
    const rows = await page.locator('[data-testid=message]').count();
    assert(rows > 5 && rows < 80, `${rows} rows in the DOM for 400 messages`);
    await page.locator('[role=log]').evaluate(async (vp) => {
      while (vp.scrollTop > 0) {
        vp.scrollTop -= 400;
        await new Promise((r) => requestAnimationFrame(r));
      }
    });
    await page.locator('[data-testid=message] .content', { hasText: /^line 1$/ }).waitFor();
    await screenshot(page, 'chat-long');
  });

  await step('unread counts: a reply in another chat counts while this one is open', async () => {
    const agent = await (await page.request.get(`${URL_}/api/agents/${SLUG}`)).json();
    const csrf = (await desktop.cookies()).find((c) => c.name === '__Host-taos_csrf')?.value ?? '';
    const dm = page.locator(`[data-testid=channel][href="/chat/${agent.dm_channel_id}"]`);
    await dm.waitFor();
    assert((await dm.getByTestId('channel-unread').count()) === 0, 'unread before anything arrived');
    // Asked from outside this page (another device): only the agent's reply is unread here.
    const r = await page.request.post(`${URL_}/api/chat/messages`, {
      headers: { 'x-csrf-token': csrf },
      data: { channel_id: agent.dm_channel_id, content: 'are you there?' },
    });
    assert(r.ok(), `post: ${r.status()}`);
    await dm.getByTestId('channel-unread').filter({ hasText: /^1$/ }).waitFor({ timeout: 60_000 });
    await screenshot(page, 'chat-unread');
    await dm.click();
    await page.locator('[data-testid=message]', { hasText: 'are you there?' }).waitFor();
    assert((await dm.getByTestId('channel-unread').count()) === 0, 'still unread after opening');
  });

  await step('chat reconnects after a drop and resumes with after_seq: nothing is missed', async () => {
    const agent = await (await page.request.get(`${URL_}/api/agents/${SLUG}`)).json();
    const csrf = (await desktop.cookies()).find((c) => c.name === '__Host-taos_csrf')?.value ?? '';
    const p = await desktop.newPage();
    watch(p, 'reconnect');
    const subscribes = [];
    let open = null;
    let blocked = false;
    // Between the page and the host: forwards frames, records subscribes, can cut the line.
    await p.routeWebSocket(/\/api\/chat\/ws$/, (ws) => {
      if (blocked) return void ws.close({ code: 1006, reason: 'cut' });
      const server = ws.connectToServer();
      open = { ws, server };
      ws.onMessage((m) => {
        const frame = JSON.parse(String(m));
        if (frame.type === 'subscribe') subscribes.push(frame);
        server.send(m);
      });
      server.onMessage((m) => ws.send(m));
    });
    await p.goto(`${URL_}/chat/${agent.dm_channel_id}`);
    await p.locator('[data-testid=message]', { hasText: 'are you there?' }).waitFor();
    await p.waitForFunction(() => !document.body.innerText.includes('reconnecting'));
    blocked = true;
    open.server.close();
    open.ws.close({ code: 1006, reason: 'cut' });
    await p.getByText('reconnecting…').waitFor();
    const r = await p.request.post(`${URL_}/api/chat/messages`, {
      headers: { 'x-csrf-token': csrf },
      data: { channel_id: agent.dm_channel_id, content: 'sent while you were away' },
    });
    assert(r.ok(), `post: ${r.status()}`);
    await screenshot(p, 'chat-reconnecting');
    const before = subscribes.length;
    blocked = false;
    await p.locator('[data-testid=message]', { hasText: 'sent while you were away' }).waitFor({ timeout: 30_000 });
    const resub = subscribes.slice(before).find((f) => f.channel_id === agent.dm_channel_id);
    assert(resub && resub.after_seq > 0, `resubscribe: ${JSON.stringify(subscribes)}`);
    await p.waitForFunction(() => !document.body.innerText.includes('reconnecting'));
    await p.close();
  });

  await step('pause and resume an agent', async () => {
    await page.getByRole('link', { name: 'Agents' }).click();
    const card = page.locator(`[data-testid=agent-card][data-slug="${SLUG}"]`);
    await card.getByRole('button', { name: 'Pause' }).click();
    await card.locator('.chip.warn', { hasText: /^paused$/ }).waitFor({ timeout: 60_000 });
    await screenshot(page, 'agent-paused');
    await card.getByRole('button', { name: 'Resume' }).click();
    await card.getByRole('button', { name: 'Pause' }).waitFor({ timeout: 60_000 });
    assert((await card.locator('.chip.warn', { hasText: /^paused$/ }).count()) === 0, 'still paused');
  });

  await step('connect an agent from the UI: the real taos-agent, run with the shown command, answers', () => screens.connectAgent());
  await step('edit an agent: name, emoji, color, model and fallbacks persist', () => screens.editAgent());
  await step('rotate the agent token, then the LLM key: the shown credentials work', () => screens.rotateCredentials());
  await step('a budget on an unpriced model warns; prices set in Providers make spend count', () => screens.budgetAndPrices());
  await step('spend: the chart, tables and budget meter show /api/usage\'s figures; light and dark', () => insight.spendScreen());
  await step('archive and restore an external agent: the new credentials are shown and work', () => screens.archiveRestoreExternal());
  await step('settings: loopback warning, a family account, a password change', async () => {
    PASSWORD = await screens.settings(PASSWORD);
  });

  // Issue 19's screens (board_checks.mjs): Home, Disk, the recycle bin, archived agents in the chat list.
  await step('home: the board at a glance shows the API figures for the same sample, and follows live', () => board.home());
  await step('disk: usage against quota with the week of samples, and a resize from there', () => board.disk());
  await step('recycle bin: a file deleted in the container is listed, restored, deleted again and purged; offline is said', () =>
    board.recycleRoundTrip(),
  );
  await step("chat list: an archived agent's chat is greyed, with Restore and Delete there", () => board.archivedInChatList());
  await step('home, disk and recycle bin at 390 px in light and dark', () => board.phoneAndThemes(PASSWORD));

  await step('phone, 390×844: every screen fits and works', async () => {
    const phone = await browser.newContext({
      ignoreHTTPSErrors: true,
      viewport: { width: 390, height: 844 },
      isMobile: true,
      hasTouch: true,
      deviceScaleFactor: 2,
    });
    const p = await phone.newPage();
    watch(p, 'phone');
    p.setDefaultTimeout(20_000);
    await p.goto(`${URL_}/chat`);
    await p.waitForURL(/\/login/);
    await p.getByLabel('Username').fill('owner');
    await p.getByLabel('Password').fill(PASSWORD);
    await p.getByRole('button', { name: 'Sign in' }).click();
    await p.waitForURL(/\/chat$/);
    const fits = async (name) => {
      const w = await p.evaluate(() => document.documentElement.scrollWidth);
      assert(w <= 390, `${name} is ${w} px wide`);
      await screenshot(p, `phone-${name}`);
    };
    await p.getByTestId('channel').first().waitFor();
    await fits('chat-list');
    await p.getByTestId('channel').first().click();
    await p.locator('[data-testid=message]', { hasText: REPLY }).first().waitFor();
    const composer = p.getByLabel('Message', { exact: true });
    await composer.fill('from the phone @');
    await p.getByRole('option').first().waitFor();
    await fits('chat');
    await composer.press('Enter'); // picks the mention
    assert((await composer.inputValue()).includes(`@${SLUG} `), 'mention not completed');
    await composer.press('Enter');
    await p.locator('[data-testid=message]', { hasText: `from the phone @${SLUG}` }).waitFor();
    for (const [link, name] of [['Agents', 'agents'], ['Providers', 'providers'], ['Devices', 'devices'], ['Alerts', 'alerts'], ['Settings', 'settings']]) {
      await p.getByRole('link', { name: link, exact: true }).click();
      await p.getByRole('heading', { name: link, exact: true }).waitFor();
      await fits(name);
    }
    await p.getByRole('link', { name: 'Traces', exact: true }).click();
    await p.getByRole('heading', { name: /^Traces/ }).waitFor();
    await p.getByTestId('trace-event').first().waitFor();
    await fits('traces');
    await insight.phone(p, fits);
    await phone.close();
  });

  await step('chat: a failed turn (budget used up) says why in words and what to do', () => checks.failedTurnExplained());
  await step('chat: Markdown renders as code, lists and safe links; raw HTML stays text', () => checks.markdownRendered());
  await step('chat: a message over the length limit is warned about and not sent', () => checks.lengthWarning());
  await step("live: an agent's connected state follows its sidecar without a reload; archiving it names no container", () => checks.liveConnected());
  await step('live: a device paired while Devices is open appears without a reload', () => checks.liveDevices());
  await step('live: a new alert pops a toast, not only the badge', () => checks.alertToast());
  await step('group chat with a person and an agent, made in the UI; the named agent answers', () => checks.groupChat());
  await step('channel settings from the chat screen: rename, add and remove a person and an agent, archive and unarchive; a refused add says why', () => channels.settings());
  await step('threads: replies under their root with a count, posted in the side panel; a named agent answers in the thread', () => channels.threads());
  await step('channel settings and a thread at 390 px, light and dark: each takes the screen', () => channels.phone(PASSWORD));
  await step('chat: tool calls as collapsed cards from metadata.tools; Approve and Deny on approval requests, recorded by the host', () => tools.toolCardsAndApprovals());
  await step('backups: a folder set from Settings, the passphrase on a recovery sheet once, a backup run from the page with the host\'s figures', () => backups.backupFromTheScreen());
  await step('chat: a message whose send could not reach the host survives a reload and is sent once when it can', () => outbox.unsentSurvivesReload());
  await step("offline reading: a browser that doesn't trust the host's certificate is told it is off, why, and how to turn it on", () => offline.untrustedSaysWhy());
  await step("offline reading: with the host's certificate trusted (NSS), the worker keeps the chat; host away, a reload shows it with a banner; sign-out forgets it", () => offline.readsOffline(PASSWORD));

  // Last: it locks this address out of signing in for a minute.
  await step('repeated wrong passwords get the rate-limit message', async () => {
    const ctx = await browser.newContext({ ignoreHTTPSErrors: true });
    const p = await ctx.newPage();
    watch(p, 'rate-limit');
    await p.goto(`${URL_}/login`);
    let text = '';
    for (let i = 0; i < 8 && !/Too many attempts/.test(text); i++) {
      await p.getByLabel('Username').fill('owner');
      await p.getByLabel('Password').fill(`wrong ${i}`);
      await p.getByRole('button', { name: 'Sign in' }).click();
      await p.getByTestId('login-error').waitFor();
      await p.waitForFunction(() => !document.querySelector('button[type=submit]')?.hasAttribute('disabled'));
      text = await p.getByTestId('login-error').innerText();
    }
    assert(/Too many attempts\. Try again in \d+ s\./.test(text), `no rate-limit message: ${text}`);
    await screenshot(p, 'login-rate-limited');
    await ctx.close();
  });

  await step('accessibility: axe-core finds no serious or critical violation on any screen', async () => {
    const screens = insight.assertAccessible();
    console.log(`     axe checked ${screens} screens`);
  });

  await step('no CSP violations or page errors anywhere', async () => {
    assert(problems.length === 0, problems.join('\n'));
  });
} catch {
  // already reported by step()
} finally {
  await screens.stopSidecars();
  await checks.stopSidecar();
  await browser.close();
}
console.log(`screenshots: ${OUT}`);
console.log(failed ? 'ui e2e: FAILED' : 'ui e2e: all steps passed');
process.exit(failed ? 1 : 0);
