// The end-to-end steps for the screens a new user needs beyond the first reply: connecting an
// external agent (running the real `taos-agent` with the credentials the page shows), editing
// agents, rotating their credentials, prices and budgets, long traces, and Settings. run.mjs
// calls them in order; they share its signed-in page.
import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { request } from 'playwright-core';

export const EXTERNAL = 'Outside Helper';
export const EXTERNAL_SLUG = 'outside-helper';

/** What a POSIX shell would set from the `VAR=word …` words of the shown command. */
export function parseCommand(text) {
  const env = {};
  const re = /([A-Z_]+)=('(?:[^']|'\\'')*'|[^\s\\]+)/g;
  for (const [, k, v] of text.matchAll(re)) {
    env[k] = v.startsWith("'") ? v.slice(1, -1).replace(/'\\''/g, "'") : v;
  }
  return env;
}

export function makeScreens(ctx) {
  const { page, desktop, browser, URL_, LOCAL_TOKEN, AGENT_BIN, OUT, SLUG, REPLY, assert, screenshot, watch } = ctx;
  const sidecars = new Set();
  // What the external agent holds now, as the test copied it from the page.
  const held = { token: '', key: '', dm: '' };

  const csrf = async () => ({ 'x-csrf-token': (await desktop.cookies()).find((c) => c.name === '__Host-taos_csrf')?.value ?? '' });
  const api = async (path) => {
    const r = await page.request.get(`${URL_}${path}`);
    assert(r.ok(), `GET ${path}: ${r.status()}`);
    return r.json();
  };
  const clipboard = () => page.evaluate(() => navigator.clipboard.readText());

  async function copied(buttonName) {
    await page.getByRole('button', { name: buttonName }).click();
    await page.locator(`button[aria-label="${buttonName}"][data-copied=true]`).waitFor();
    return clipboard();
  }

  let logs = 0;
  function startSidecar(env) {
    if (!AGENT_BIN) throw new Error('TAOS_AGENT_BIN is not set (host-service/tests/host/ui.rs passes it)');
    const log = createWriteStream(join(OUT, `sidecar-${++logs}.log`));
    const child = spawn(AGENT_BIN, [], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', RUST_LOG: 'info', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout.pipe(log);
    child.stderr.pipe(log);
    sidecars.add(child);
    child.on('exit', () => sidecars.delete(child));
    return child;
  }

  async function stopSidecars() {
    await Promise.all(
      [...sidecars].map(
        (child) =>
          new Promise((done) => {
            if (child.exitCode !== null || child.signalCode !== null) return done();
            child.once('exit', done);
            child.kill('SIGTERM');
          }),
      ),
    );
  }

  /** The agent page says connected (or not): reloaded until it does, as a person would. */
  async function seeConnected(slug, want = true) {
    const deadline = Date.now() + 60_000;
    let text = '';
    while (Date.now() < deadline) {
      await page.goto(`${URL_}/agents/${slug}`);
      text = await page.getByTestId('agent-connected').innerText();
      if ((text === 'connected') === want) return;
      await page.waitForTimeout(500);
    }
    throw new Error(`@${slug} shows "${text}", want ${want ? 'connected' : 'not connected'}`);
  }

  /** Writes in the agent's DM and waits for a new complete reply from it. */
  async function answers(slug, dm, text) {
    await page.goto(`${URL_}/chat/${dm}`);
    const composer = page.getByLabel('Message', { exact: true });
    await composer.waitFor();
    const replies = page.locator(`[data-testid=message][data-author="${slug}"][data-state=complete]`, { hasText: REPLY });
    const before = await replies.count();
    await composer.fill(text);
    await composer.press('Enter');
    await page.locator('[data-testid=message][data-author="user:owner"]', { hasText: text }).waitFor();
    await page.waitForFunction(
      ([sel, n]) => document.querySelectorAll(sel).length > n,
      [`[data-testid=message][data-author="${slug}"][data-state=complete]`, before],
      { timeout: 60_000 },
    );
  }

  /** Runs the shown command, with the credential it leaves as "…" from what the agent holds. */
  function runCommand(command) {
    const env = parseCommand(command);
    assert(command.trim().endsWith('taos-agent'), `not a taos-agent command: ${command}`);
    if (env.TAOS_AGENT_TOKEN === 'taos_ag_…') env.TAOS_AGENT_TOKEN = held.token;
    if (env.OPENAI_API_KEY === 'taos_llm_…') env.OPENAI_API_KEY = held.key;
    held.token = env.TAOS_AGENT_TOKEN;
    held.key = env.OPENAI_API_KEY;
    return { env, child: startSidecar(env) };
  }

  return {
    stopSidecars,

    async firstScreen() {
      const guide = page.getByTestId('getting-started');
      await guide.waitFor();
      assert((await guide.getByTestId('step-provider').getAttribute('data-done')) === 'false', 'the provider step is done before any provider');
      for (const link of ['Add a provider', 'Deploy an agent', 'Connect an agent']) {
        await guide.getByRole('link', { name: link }).waitFor();
      }
      const text = await guide.innerText();
      assert(/provider/i.test(text) && /model/i.test(text) && /chat/i.test(text), `the guide says: ${text}`);
      await screenshot(page, 'first-screen');
    },

    async guideShowsProviderDone() {
      const guide = page.getByTestId('getting-started');
      await guide.locator('[data-testid=step-provider][data-done=true]').waitFor();
      assert((await guide.innerText()).includes('fake'), 'the guide does not name the provider');
    },

    async tracesContentAndNav() {
      await page.getByRole('link', { name: 'Traces', exact: true }).click();
      await page.waitForURL(new RegExp(`/agents/${SLUG}/traces$`));
      const call = page.locator('[data-testid=trace-event][data-kind=llm_call]').first();
      await call.waitFor();
      if (!(await call.getByTestId('llm-content').count())) {
        const events = await api(`/api/agents/${SLUG}/trace?kind=llm_call`);
        throw new Error(`no prompt shown: ${await call.innerHTML()} / ${JSON.stringify(events.events[0])}`);
      }
      await call.getByTestId('llm-content').locator('summary').click();
      const prompt = await call.getByTestId('llm-prompt').innerText();
      const reply = await call.getByTestId('llm-reply').innerText();
      assert(prompt.includes('hello there'), `the prompt shown: ${prompt}`);
      assert(reply.includes(REPLY), `the reply shown: ${reply}`);
      await screenshot(page, 'traces-llm-content');
    },

    async tracesPagesAndTotals() {
      // 700 events from outside (the agent's own reports), more than one page of 500.
      const admin = await request.newContext({ ignoreHTTPSErrors: true });
      const now = Date.now();
      const events = Array.from({ length: 700 }, (_, i) => ({
        id: `e2e-bulk-${i}`,
        agent_name: SLUG,
        kind: 'tool_call',
        created_at: new Date(now - 60_000 + i).toISOString(),
        payload: { text: `bulk ${i}` },
      }));
      const r = await admin.post(`${URL_}/api/trace/batch`, { headers: { authorization: `Bearer ${LOCAL_TOKEN}` }, data: { events } });
      assert(r.ok(), `POST /api/trace/batch: ${r.status()}`);
      await admin.dispose();
      const today = new Date().toISOString().slice(0, 10);
      const totals = await api(`/api/agents/${SLUG}/trace/totals`);
      const day = totals.days.find((d) => d.day === today);
      assert(day && day.events >= 700, `host totals: ${JSON.stringify(totals)}`);
      const all = totals.days.reduce((n, d) => n + d.events, 0);

      await page.goto(`${URL_}/agents/${SLUG}/traces`);
      const rows = page.getByTestId('trace-event');
      await page.waitForFunction(() => document.querySelectorAll('[data-testid=trace-event]').length === 500);
      // The totals cover every event, not the 500 loaded.
      const shownDay = Number(await page.locator(`[data-testid=trace-totals] tr[data-day="${today}"] [data-testid=day-events]`).innerText());
      assert(shownDay === day.events, `the page says ${shownDay} events today, the host counts ${day.events}`);
      await screenshot(page, 'traces-paged');
      await page.getByRole('button', { name: 'Show 500 older' }).click();
      await page.getByTestId('trace-end').waitFor();
      const loaded = await rows.count();
      assert(loaded === all, `${loaded} events loaded, the host counts ${all}`);
      const ids = await rows.evaluateAll((els) => els.map((e) => e.getAttribute('data-id')));
      assert(new Set(ids).size === ids.length, 'an event shows twice');
      assert(ids.includes('e2e-bulk-0') && ids.includes('e2e-bulk-699'), 'the oldest or newest bulk event is missing');
    },

    async devicesCopyToken() {
      const shown = await page.getByLabel('Token', { exact: true }).inputValue();
      const token = await copied('Copy the pairing token');
      assert(token === shown, 'the copied pairing token differs from the shown one');
      // The test host listens on 127.0.0.1 only: the page says a phone can't reach that.
      await page.getByTestId('pairing-loopback-warning').waitFor();
      return token;
    },

    async connectAgent() {
      await page.getByRole('link', { name: 'Agents', exact: true }).click();
      await page.getByRole('link', { name: 'Connect an agent' }).click();
      await page.getByRole('heading', { name: 'Connect an agent' }).waitFor();
      await page.getByLabel('Name', { exact: true }).fill(EXTERNAL);
      assert((await page.getByTestId('slug-preview').innerText()).includes(`@${EXTERNAL_SLUG}`), 'slug preview');
      await page.getByRole('button', { name: 'Choose' }).click();
      await page.getByRole('button', { name: '🦉' }).click();
      await page.getByLabel('Model').selectOption('fake-gpt');
      await page.getByRole('button', { name: 'Connect', exact: true }).click();
      const panel = page.getByTestId('credentials');
      await panel.waitFor();
      const token = await panel.getByTestId('agent-token').innerText();
      const key = await panel.getByTestId('llm-key').innerText();
      assert(token.startsWith('taos_ag_') && key.startsWith('taos_llm_'), 'credentials not shown');
      assert((await copied('Copy the agent token')) === token, 'the copied agent token differs');
      assert((await copied('Copy the LLM key')) === key, 'the copied LLM key differs');
      const command = await copied('Copy the command');
      const info = await api('/api/host');
      const env = parseCommand(command);
      assert(env.TAOS_BRIDGE_URL === info.agent_url && env.OPENAI_BASE_URL === info.gateway_url, `URLs in the command: ${command}`);
      assert(env.TAOS_AGENT_NAME === EXTERNAL_SLUG && env.TAOS_AGENT_TOKEN === token && env.OPENAI_API_KEY === key, `command: ${command}`);
      assert(env.TAOS_MODEL === 'fake-gpt', `model in the command: ${command}`);
      assert((await panel.innerText()).includes('only accepts connections from this machine'), 'the panel does not say where to run it');
      await screenshot(page, 'connect-credentials');
      await page.getByRole('button', { name: 'I have saved them' }).click();
      await panel.waitFor({ state: 'detached' });

      runCommand(command);
      await seeConnected(EXTERNAL_SLUG);
      const agent = await api(`/api/agents/${EXTERNAL_SLUG}`);
      assert(agent.emoji === '🦉' && agent.kind === 'external', `agent: ${JSON.stringify(agent)}`);
      held.dm = agent.dm_channel_id;
      await answers(EXTERNAL_SLUG, held.dm, 'hello from outside');
      // Shown once: nowhere on the agent's page any more.
      await page.goto(`${URL_}/agents/${EXTERNAL_SLUG}`);
      assert(!(await page.locator('body').innerText()).includes(token), 'the token is still on the page');
      await screenshot(page, 'connect-answered');
    },

    async editAgent() {
      await page.goto(`${URL_}/agents/${EXTERNAL_SLUG}`);
      await page.getByRole('button', { name: 'Edit', exact: true }).click();
      const form = page.getByTestId('agent-edit');
      await form.getByLabel('Name', { exact: true }).fill('Outside Helper Two');
      await form.getByRole('button', { name: 'Choose' }).click();
      await form.getByRole('button', { name: '🐙' }).click();
      await form.getByLabel('Color').fill('#aa3366');
      await form.getByLabel('Model').selectOption('fake-other');
      await form.getByLabel('fake-gpt').check();
      await screenshot(page, 'agent-edit');
      await form.getByRole('button', { name: 'Save' }).click();
      await form.waitFor({ state: 'detached' });
      await page.reload();
      const name = await page.getByTestId('agent-name').innerText();
      assert(name.includes('Outside Helper Two') && name.includes(`@${EXTERNAL_SLUG}`), `after reload: ${name}`);
      await page.locator('.chip', { hasText: /^fake-other$/ }).waitFor();
      await page.locator('.chip', { hasText: /^fallback fake-gpt$/ }).waitFor();
      assert((await page.locator('.emoji').first().innerText()).includes('🐙'), 'emoji after reload');
      const agent = await api(`/api/agents/${EXTERNAL_SLUG}`);
      const want = { display_name: 'Outside Helper Two', emoji: '🐙', color: '#aa3366', model: 'fake-other', fallback_models: ['fake-gpt'] };
      for (const [k, v] of Object.entries(want)) {
        assert(JSON.stringify(agent[k]) === JSON.stringify(v), `${k}: ${JSON.stringify(agent[k])}, want ${JSON.stringify(v)}`);
      }
      // It still answers (fake-gpt, its model in the sidecar, is now a fallback).
      await answers(EXTERNAL_SLUG, held.dm, 'still there after the edit?');
    },

    async rotateCredentials() {
      const oldToken = held.token;
      const oldKey = held.key;
      await page.goto(`${URL_}/agents/${EXTERNAL_SLUG}`);
      await page.getByRole('button', { name: 'Rotate agent token' }).click();
      let panel = page.getByTestId('credentials');
      await panel.waitFor();
      assert((await panel.getByTestId('llm-key').count()) === 0, 'a token rotation shows an LLM key');
      const token = await panel.getByTestId('agent-token').innerText();
      assert(token.startsWith('taos_ag_') && token !== oldToken, 'no new token shown');
      let command = await copied('Copy the command');
      assert(command.includes(token) && command.includes('taos_llm_…'), `command after a token rotation: ${command}`);
      await screenshot(page, 'rotated-token');
      await page.getByRole('button', { name: 'I have saved them' }).click();
      // The old sidecar lost its stream; the shown command brings it back.
      await stopSidecars();
      runCommand(command);
      await seeConnected(EXTERNAL_SLUG);
      await answers(EXTERNAL_SLUG, held.dm, 'after the new token');

      await page.goto(`${URL_}/agents/${EXTERNAL_SLUG}`);
      await page.getByRole('button', { name: 'Rotate LLM key' }).click();
      panel = page.getByTestId('credentials');
      await panel.waitFor();
      assert((await panel.getByTestId('agent-token').count()) === 0, 'a key rotation shows a token');
      const key = await panel.getByTestId('llm-key').innerText();
      assert(key.startsWith('taos_llm_') && key !== oldKey, 'no new key shown');
      command = await copied('Copy the command');
      assert(command.includes(key) && command.includes('taos_ag_…'), `command after a key rotation: ${command}`);
      await page.getByRole('button', { name: 'I have saved them' }).click();
      // The old key is refused at the gateway; the new one answers.
      const info = await api('/api/host');
      const old = await fetch(`${info.gateway_url}/models`, { headers: { authorization: `Bearer ${oldKey}` } });
      assert(old.status === 401, `the old LLM key: ${old.status}`);
      await stopSidecars();
      runCommand(command);
      await seeConnected(EXTERNAL_SLUG);
      await answers(EXTERNAL_SLUG, held.dm, 'after the new key');
    },

    async budgetAndPrices() {
      await page.goto(`${URL_}/agents/${EXTERNAL_SLUG}`);
      const spentBefore = (await api(`/api/agents/${EXTERNAL_SLUG}/usage`)).period_spend_usd;
      assert(spentBefore === 0, `calls to an unpriced model cost ${spentBefore}`);
      // Room for a whole call at the prices set below: the gateway reserves a call's worst case
      // (its max tokens at $2000 per million, about $9) and refuses it if that doesn't fit.
      await page.getByLabel('Budget (USD)').fill('50');
      await page.getByRole('button', { name: 'Save budget' }).click();
      const warning = page.getByTestId('no-price-warning');
      await warning.waitFor();
      const text = await warning.innerText();
      assert(text.includes('fake-other') && text.includes('fake-gpt') && /\$0/.test(text), `warning: ${text}`);
      await screenshot(page, 'no-price-warning');
      // The budget is kept: after a reload and in the API.
      await page.reload();
      assert((await page.getByLabel('Budget (USD)').inputValue()) === '50', 'the budget after a reload');
      const budget = (await api(`/api/agents/${EXTERNAL_SLUG}/usage`)).budget;
      assert(budget?.limit_usd === 50 && budget.period === 'month', `budget: ${JSON.stringify(budget)}`);
      await page.getByRole('link', { name: 'Agents', exact: true }).click();
      await page.locator(`[data-testid=agent-card][data-slug="${EXTERNAL_SLUG}"] [data-testid=no-price-chip]`).waitFor();

      await page.getByRole('link', { name: 'Providers', exact: true }).click();
      const prices = page.locator('[data-testid=model-prices] form[data-provider=fake]');
      for (const model of ['fake-gpt', 'fake-other']) {
        await prices.getByLabel(`${model} input price`).fill('1000');
        await prices.getByLabel(`${model} output price`).fill('2000');
      }
      await prices.getByRole('button', { name: 'Save prices' }).click();
      await page.getByText('Prices of fake saved').waitFor();
      await page.reload();
      assert((await page.getByLabel('fake-gpt output price').inputValue()) === '2000', 'price not kept');
      const models = await api('/api/providers/models');
      const gpt = models.find((m) => m.name === 'fake-gpt');
      assert(gpt.input_usd_per_mtok === 1000 && gpt.output_usd_per_mtok === 2000, `models: ${JSON.stringify(models)}`);
      await screenshot(page, 'model-prices');

      await page.goto(`${URL_}/agents/${EXTERNAL_SLUG}`);
      await page.getByText(/Spent \$/).waitFor();
      assert((await page.getByTestId('no-price-warning').count()) === 0, 'the warning stayed after pricing');
      await answers(EXTERNAL_SLUG, held.dm, 'what does this cost?');
      let spent = 0;
      for (let i = 0; i < 100 && spent === 0; i++) {
        spent = (await api(`/api/agents/${EXTERNAL_SLUG}/usage`)).period_spend_usd;
        if (spent === 0) await page.waitForTimeout(200);
      }
      assert(spent > 0, 'a priced call still cost $0');
      await page.goto(`${URL_}/agents/${EXTERNAL_SLUG}`);
      const line = await page.getByText(/Spent \$/).innerText();
      assert(!line.includes('Spent $0.00 '), `the page says: ${line}`);
    },

    async archiveRestoreExternal() {
      await stopSidecars();
      await page.goto(`${URL_}/agents`);
      const card = page.locator(`[data-testid=agent-card][data-slug="${EXTERNAL_SLUG}"]`);
      await card.getByRole('button', { name: 'Archive' }).click();
      await card.waitFor({ state: 'detached', timeout: 60_000 });
      const archived = page.locator(`[data-testid=archived-card][data-slug="${EXTERNAL_SLUG}"]`);
      await archived.getByRole('button', { name: 'Restore' }).click();
      const panel = page.getByTestId('credentials');
      await panel.waitFor({ timeout: 60_000 });
      const token = await panel.getByTestId('agent-token').innerText();
      const key = await panel.getByTestId('llm-key').innerText();
      assert(token !== held.token && key !== held.key, 'the restore showed the old credentials');
      const command = await copied('Copy the command');
      assert(command.includes(token) && command.includes(key), `command after restore: ${command}`);
      await screenshot(page, 'restored-credentials');
      await page.getByRole('button', { name: 'I have saved them' }).click();
      runCommand(command);
      await seeConnected(EXTERNAL_SLUG);
      const agent = await api(`/api/agents/${EXTERNAL_SLUG}`);
      held.dm = agent.dm_channel_id;
      await answers(EXTERNAL_SLUG, held.dm, 'back from the archive');
      await page.locator('[data-testid=message]', { hasText: 'hello from outside' }).waitFor();
      // Gone for good, so the steps after this see the host as before.
      await stopSidecars();
      await page.goto(`${URL_}/agents`);
      await card.getByRole('button', { name: 'Archive' }).click();
      await card.waitFor({ state: 'detached', timeout: 60_000 });
      await archived.getByRole('button', { name: 'Delete for good' }).click();
      await archived.waitFor({ state: 'detached' });
    },

    /** Returns the owner's new password. */
    async settings(password) {
      await page.getByRole('link', { name: 'Settings', exact: true }).click();
      await page.getByRole('heading', { name: 'Settings', exact: true }).waitFor();
      // The test host listens on loopback only: pairing codes would not reach a phone.
      const addresses = page.getByTestId('host-addresses');
      await addresses.getByTestId('loopback-warning').waitFor();
      assert((await addresses.innerText()).includes(new URL(URL_).host), 'the pairing address is not listed');
      await screenshot(page, 'settings');

      // A family account: made here, signed in elsewhere, deleted here: that browser is out.
      await page.getByLabel('Username').fill('kim');
      await page.getByLabel(/^Password \(at least/).fill('kim password 123');
      await page.getByRole('button', { name: 'Add', exact: true }).click();
      const row = page.locator('[data-testid=user][data-username=kim]');
      await row.waitFor();
      const kimCtx = await browser.newContext({ ignoreHTTPSErrors: true });
      const kim = await kimCtx.newPage();
      watch(kim, 'kim');
      await kim.goto(`${URL_}/login`);
      await kim.getByLabel('Username').fill('kim');
      await kim.getByLabel('Password').fill('kim password 123');
      await kim.getByRole('button', { name: 'Sign in' }).click();
      await kim.locator('[data-testid=live]', { hasText: 'live' }).waitFor();
      assert((await kim.getByRole('navigation').getByRole('link', { name: 'Providers' }).count()) === 0, 'kim sees Providers');
      await row.getByRole('button', { name: 'Delete' }).click();
      await row.waitFor({ state: 'detached' });
      await kim.waitForURL(/\/login/, { timeout: 30_000 });
      await kimCtx.close();

      // The password: a wrong current one is refused; the right one signs out the owner's
      // other browser, and this one stays.
      const otherCtx = await browser.newContext({ ignoreHTTPSErrors: true });
      const other = await otherCtx.newPage();
      watch(other, 'other owner browser');
      await other.goto(`${URL_}/login`);
      await other.getByLabel('Username').fill('owner');
      await other.getByLabel('Password').fill(password);
      await other.getByRole('button', { name: 'Sign in' }).click();
      await other.locator('[data-testid=live]', { hasText: 'live' }).waitFor();
      const next = `${password} changed`;
      await page.getByLabel('Current password').fill('not my password');
      await page.getByLabel(/^New password \(/).fill(next);
      await page.getByLabel('New password again').fill(next);
      await page.getByRole('button', { name: 'Change password' }).click();
      const refused = await page.getByTestId('password-error').innerText();
      assert(/current password is wrong/.test(refused), `wrong current password: ${refused}`);
      await page.getByLabel('Current password').fill(password);
      await page.getByRole('button', { name: 'Change password' }).click();
      await page.getByText('Password changed').waitFor();
      await other.waitForURL(/\/login/, { timeout: 30_000 });
      await otherCtx.close();
      // Still signed in here.
      await page.getByRole('link', { name: 'Agents', exact: true }).click();
      await page.getByRole('heading', { name: 'Agents' }).waitFor();
      const h = await csrf();
      assert((await page.request.get(`${URL_}/api/agents`, { headers: h })).ok(), 'this session ended too');
      return next;
    },
  };
}
