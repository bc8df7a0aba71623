// The end-to-end checks for issue 13's chat and status points: a failed turn explained in the
// chat, Markdown rendered safely, the length warning, live status (an agent's "connected", a
// newly paired device, an alert's toast, all without a reload), group chats made in the UI,
// and texts that misled (the deploy form's disk default, "add a provider" with one there,
// archiving an external agent). run.mjs calls them where the state they need exists; they
// share its signed-in page.
import { spawn } from 'node:child_process';
import { createWriteStream, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'playwright-core';

export const LIVE = 'Live Helper';
export const LIVE_SLUG = 'live-helper';
export const PERSON = 'sam';

export function makeChatChecks(ctx) {
  const { page, desktop, URL_, LOCAL_TOKEN, AGENT_BIN, OUT, SLUG, REPLY, assert, screenshot } = ctx;

  // Everything the page says in a dialog (confirm, alert), from the start: the archive confirm
  // is read from here, and a message's markup must never raise one.
  const dialogs = [];
  page.on('dialog', (d) => dialogs.push(d.message()));
  // Every message the page posts, from the start: "nothing was sent" is read from here.
  const posted = [];
  page.on('request', (r) => {
    if (r.method() !== 'POST' || new URL(r.url()).pathname !== '/api/chat/messages') return;
    try {
      posted.push(JSON.parse(r.postData() ?? '{}'));
    } catch {
      posted.push({});
    }
  });

  const csrf = async () => ({ 'x-csrf-token': (await desktop.cookies()).find((c) => c.name === '__Host-taos_csrf')?.value ?? '' });
  const get = async (path) => {
    const r = await page.request.get(`${URL_}${path}`);
    assert(r.ok(), `GET ${path}: ${r.status()}`);
    return r.json();
  };
  const send = async (method, path, data) => {
    const r = await page.request.fetch(`${URL_}${path}`, { method, headers: await csrf(), data });
    assert(r.ok(), `${method} ${path}: ${r.status()} ${await r.text()}`);
    return r.status() === 204 ? null : r.json();
  };
  /** Messages of a channel after `seq` (all of them for 0). */
  const messagesAfter = async (channel, seq) => get(`/api/chat/channels/${channel}/messages?after_seq=${seq}`);
  const lastSeq = async (channel) => (await get(`/api/chat/channels/${channel}`)).last_seq;

  /** Marks the document; `sameDocument()` is true while no reload or navigation replaced it. */
  const mark = () => page.evaluate(() => (window.__e2eMark = Math.random().toString(36).slice(2)));
  const sameDocument = (m) => page.evaluate((want) => window.__e2eMark === want, m);

  let sidecar = null;
  function startSidecar(env) {
    if (!AGENT_BIN) throw new Error('TAOS_AGENT_BIN is not set (host-service/tests/host/ui.rs passes it)');
    const log = createWriteStream(join(OUT, 'sidecar-live.log'));
    const child = spawn(AGENT_BIN, [], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', RUST_LOG: 'info', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout.pipe(log);
    child.stderr.pipe(log);
    sidecar = child;
    child.on('exit', () => {
      if (sidecar === child) sidecar = null;
    });
    return child;
  }
  async function stopSidecar() {
    const child = sidecar;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    await new Promise((done) => {
      child.once('exit', done);
      child.kill('SIGTERM');
    });
  }

  /** Writes `text` in the open chat's composer and sends it with Enter. */
  async function write(text) {
    const composer = page.getByLabel('Message', { exact: true });
    await composer.fill(text);
    await composer.press('Enter');
  }

  return {
    stopSidecar,

    /** Before "Add" on the Providers screen: records every text LiteLLM's status card shows. */
    async watchLlmStatus() {
      await page.getByTestId('litellm-status').waitFor();
      await page.evaluate(() => {
        window.__llmStatus = [];
        const record = () => {
          const el = document.querySelector('[data-testid=litellm-status]');
          if (el) window.__llmStatus.push({ state: el.getAttribute('data-state'), text: el.textContent ?? '' });
        };
        new MutationObserver(record).observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
      });
    },

    /** After the provider was added and LiteLLM is ready: the status never said to add one
     *  once it was doing something about the one added (a poll answered before the add went
     *  in may still rightly say "unavailable: add a provider"). */
    async llmStatusNeverSaidAddAProvider() {
      const seen = await page.evaluate(() => window.__llmStatus);
      assert(seen.length > 0, 'recorded no LiteLLM status at all');
      const wrong = seen.filter((s) => s.state !== 'unavailable' && /add a provider/i.test(s.text));
      assert(wrong.length === 0, `LiteLLM's status said to add a provider while one was there: ${JSON.stringify(wrong[0])}`);
      const now = await page.getByTestId('litellm-status').innerText();
      assert(!/add a provider/i.test(now), `with a provider, the status says: ${now}`);
    },

    /** On the deploy form, with a provider: no "add a provider", and the disk field shows the
     *  API's default (40 GiB), not 10. */
    async deployFormTexts() {
      await page.getByLabel('Model').locator('option', { hasText: 'fake-gpt' }).waitFor({ state: 'attached' });
      assert((await page.getByTestId('no-models').count()) === 0, `the deploy form says: ${await page.getByTestId('no-models').allInnerTexts()}`);
      assert(!/add a provider/i.test(await page.locator('main').innerText()), 'the deploy form says to add a provider');
      // Read as it is (the Limits section may be folded).
      const disk = page.getByLabel('Disk (GiB)');
      const value = await disk.inputValue();
      const placeholder = (await disk.getAttribute('placeholder')) ?? '';
      const api = JSON.parse(readFileSync(new URL('../../docs/openapi.json', import.meta.url), 'utf8'));
      const apiDefault = api.components.schemas.DeployRequest.properties.disk_quota_gib.default;
      assert(apiDefault === 40, `the API's disk default: ${apiDefault}`);
      // Empty, so the host's default applies, and labelled with it.
      assert(value === '' && placeholder.includes(String(apiDefault)), `disk field: value "${value}", placeholder "${placeholder}", want the API's ${apiDefault}`);
      assert(!placeholder.includes('10') && value !== '10', `disk field still suggests 10: "${value}" / "${placeholder}"`);
    },

    /** A turn that fails (the budget used up) shows in the chat with its reason and what to do. */
    async failedTurnExplained() {
      const agent = await get(`/api/agents/${SLUG}`);
      const before = (await get(`/api/agents/${SLUG}/usage`)).budget;
      await send('PUT', `/api/agents/${SLUG}/budget`, { limit_usd: 0, period: 'day' });
      try {
        await page.goto(`${URL_}/chat/${agent.dm_channel_id}`);
        await page.getByLabel('Message', { exact: true }).waitFor();
        const failures = page.locator(`[data-testid=message][data-author="${SLUG}"][data-state=error] [data-testid=failure]`);
        const n = await failures.count();
        await write('this one will fail: no budget left');
        await page.locator('[data-testid=message][data-author="user:owner"]', { hasText: 'this one will fail' }).waitFor();
        await page.waitForFunction(
          ([sel, k]) => document.querySelectorAll(sel).length > k,
          [`[data-testid=message][data-author="${SLUG}"][data-state=error] [data-testid=failure]`, n],
          { timeout: 90_000 },
        );
        const failure = failures.last();
        const code = await failure.getAttribute('data-code');
        const text = await failure.innerText();
        assert(code === 'budget_exceeded', `failure code ${code}: ${text}`);
        // The reason in words (whose budget, which period, how much), then what to do.
        const name = agent.display_name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
        const said = new RegExp(`${name}'s budget for today is used up \\(\\$[\\d.]+ of \\$0\\.00\\)\\. Raise it in the agent's settings, or wait until tomorrow\\.`);
        assert(said.test(text), `reason and hint: ${text}`);
        const link = failure.getByRole('link', { name: 'Open the agent' });
        assert((await link.getAttribute('href')) === `/agents/${SLUG}`, 'no way to the agent from the failure');
        await screenshot(page, 'chat-failed-turn');
        // Stored with the message: still explained after a reload.
        await page.reload();
        await failures.last().filter({ hasText: 'used up' }).waitFor();
      } finally {
        // Back to a budget that lets the later steps' turns through.
        await send('PUT', `/api/agents/${SLUG}/budget`, before ?? { limit_usd: 1_000_000, period: 'month' });
      }
    },

    /** Markdown renders as elements; raw HTML shows as text; links open safely. */
    async markdownRendered() {
      const channel = await send('POST', '/api/chat/channels', { name: 'markdown', members: ['user:owner'] });
      await page.goto(`${URL_}/chat/${channel.id}`);
      await page.getByLabel('Message', { exact: true }).waitFor();
      const dialogsBefore = dialogs.length;
      const text = [
        'Here is **bold** and a list:',
        '',
        '- first item',
        '- second item',
        '',
        '```js',
        'let x = 1 < 2;',
        '```',
        '',
        'See [the docs](https://example.com/docs) or javascript:alert(1) or [this](javascript:alert(2)).',
        '',
        'Raw: <img src=x onerror=alert(3)> and <b>not bold</b> and <script>alert(4)</script>',
      ].join('\n');
      await write(text);
      const msg = page.locator('[data-testid=message][data-author="user:owner"]', { hasText: 'first item' });
      await msg.waitFor();
      await page.locator('[data-testid=message][data-author="user:owner"]:not([data-state=pending])', { hasText: 'first item' }).waitFor();
      const content = msg.locator('.content');
      assert((await content.locator('pre > code').innerText()).includes('let x = 1 < 2;'), 'no code block');
      const items = await content.locator('li').allInnerTexts();
      assert(items.length === 2 && items[0] === 'first item' && items[1] === 'second item', `list items: ${items}`);
      assert((await content.locator('strong', { hasText: 'bold' }).count()) === 1, 'no bold');
      const links = await content.locator('a').evaluateAll((as) => as.map((a) => ({ href: a.getAttribute('href'), target: a.target, rel: a.rel, text: a.textContent })));
      assert(links.length === 1, `links: ${JSON.stringify(links)}`);
      const [a] = links;
      assert(a.href === 'https://example.com/docs' && a.text === 'the docs', `link: ${JSON.stringify(a)}`);
      assert(a.target === '_blank' && /\bnoopener\b/.test(a.rel) && /\bnoreferrer\b/.test(a.rel), `link opens unsafely: ${JSON.stringify(a)}`);
      // Raw HTML is text: no element came from it, and its words are on screen as written.
      for (const tag of ['img', 'b', 'script']) {
        assert((await content.locator(tag).count()) === 0, `a <${tag}> element came from the message`);
      }
      const shown = await content.innerText();
      for (const raw of ['<img src=x onerror=alert(3)>', '<b>not bold</b>', '<script>alert(4)</script>', 'javascript:alert(1)']) {
        assert(shown.includes(raw), `"${raw}" is not shown as text: ${shown}`);
      }
      assert(dialogs.length === dialogsBefore, `the message raised a dialog: ${dialogs.slice(dialogsBefore)}`);
      await screenshot(page, 'chat-markdown');
    },

    /** Over the length limit: the composer warns, and nothing is sent. */
    async lengthWarning() {
      const agent = await get(`/api/agents/${SLUG}`);
      const dm = agent.dm_channel_id;
      await page.goto(`${URL_}/chat/${dm}`);
      const composer = page.getByLabel('Message', { exact: true });
      await composer.waitFor();
      const seq = await lastSeq(dm);
      const postedBefore = posted.length;
      const long = `too long ${'x'.repeat(32_010)}`;
      await composer.fill(long);
      const counter = page.getByTestId('length-counter');
      await counter.waitFor();
      const problem = await page.getByTestId('length-problem').innerText();
      assert(/Too long to send: [\d,]+ characters over the 32,000 limit/.test(problem), `warning: ${problem}`);
      assert((await counter.innerText()).includes('/ 32,000'), `counter: ${await counter.innerText()}`);
      const sendButton = page.getByRole('button', { name: 'Send', exact: true });
      assert(await sendButton.isDisabled(), 'Send is enabled for a message over the limit');
      await screenshot(page, 'chat-too-long');
      await composer.press('Enter');
      // Still in the composer, not in the conversation.
      assert((await composer.inputValue()) === long, 'the draft left the composer');
      // Then a short message: once it is stored, anything sent before it would be too.
      await composer.fill('a short one after the long one');
      assert((await page.getByTestId('length-counter').count()) === 0, 'the counter stayed for a short draft');
      await composer.press('Enter');
      // Stored (no longer pending): anything sent before it is stored too.
      await page.locator('[data-testid=message][data-author="user:owner"]:not([data-state=pending])', { hasText: 'a short one after the long one' }).waitFor();
      const stored = (await messagesAfter(dm, seq)).filter((m) => m.author_id === 'user:owner');
      assert(stored.length === 1 && stored[0].content === 'a short one after the long one', `stored since: ${JSON.stringify(stored.map((m) => m.content.slice(0, 40)))}`);
      const sent = posted.slice(postedBefore).filter((b) => typeof b.content !== 'string' || b.content.startsWith('too long'));
      assert(sent.length === 0, `the long message was posted ${sent.length} time(s)`);
      assert((await page.locator('[data-testid=message]', { hasText: 'too long xxx' }).count()) === 0, 'the long message is in the conversation');
    },

    /** "connected" follows the sidecar without a reload, on the agent page and the list; the
     *  archive confirm of an external agent talks about its sidecar, not a container. */
    async liveConnected() {
      const made = await send('POST', '/api/agents', { name: LIVE, model: 'fake-gpt' });
      const info = await get('/api/host');
      await page.goto(`${URL_}/agents/${LIVE_SLUG}`);
      const chip = page.getByTestId('agent-connected');
      await chip.filter({ hasText: /^not connected$/ }).waitFor();
      const m = await mark();
      startSidecar({
        TAOS_BRIDGE_URL: info.agent_url,
        TAOS_AGENT_NAME: LIVE_SLUG,
        TAOS_AGENT_TOKEN: made.agent_token,
        OPENAI_BASE_URL: info.gateway_url,
        OPENAI_API_KEY: made.llm_key,
        TAOS_MODEL: 'fake-gpt',
      });
      await chip.filter({ hasText: /^connected$/ }).waitFor({ timeout: 60_000 });
      assert(await sameDocument(m), 'the agent page was reloaded');
      await screenshot(page, 'live-connected');
      // The list, reached in the app: the sidecar stops and the card says so.
      await page.getByRole('link', { name: 'Agents', exact: true }).click();
      const card = page.locator(`[data-testid=agent-card][data-slug="${LIVE_SLUG}"]`);
      await card.locator('.chip', { hasText: /^connected$/ }).waitFor();
      await stopSidecar();
      await card.locator('.chip', { hasText: /^not connected$/ }).waitFor({ timeout: 60_000 });
      assert(await sameDocument(m), 'the agents list was reloaded');
      // And back on its page, a new sidecar shows, then its end.
      await card.getByRole('link', { name: LIVE }).first().click();
      await chip.filter({ hasText: /^not connected$/ }).waitFor();
      startSidecar({
        TAOS_BRIDGE_URL: info.agent_url,
        TAOS_AGENT_NAME: LIVE_SLUG,
        TAOS_AGENT_TOKEN: made.agent_token,
        OPENAI_BASE_URL: info.gateway_url,
        OPENAI_API_KEY: made.llm_key,
        TAOS_MODEL: 'fake-gpt',
      });
      await chip.filter({ hasText: /^connected$/ }).waitFor({ timeout: 60_000 });
      await stopSidecar();
      await chip.filter({ hasText: /^not connected$/ }).waitFor({ timeout: 60_000 });
      assert(await sameDocument(m), 'the agent page was reloaded');

      // Archive it from the list: the confirm speaks of its sidecar and credentials.
      await page.getByRole('link', { name: 'Agents', exact: true }).click();
      const asked = dialogs.length;
      await card.getByRole('button', { name: 'Archive' }).click();
      await card.waitFor({ state: 'detached', timeout: 60_000 });
      const confirm = dialogs.slice(asked).find((d) => d.startsWith(`Archive ${LIVE}?`)) ?? '';
      assert(confirm !== '', `no archive confirm: ${dialogs.slice(asked)}`);
      assert(!/container/i.test(confirm), `archiving an external agent talks about a container: ${confirm}`);
      assert(/sidecar/.test(confirm) && /restore/.test(confirm), `the archive confirm: ${confirm}`);
      const archived = page.locator(`[data-testid=archived-card][data-slug="${LIVE_SLUG}"]`);
      const purgeAsked = dialogs.length;
      await archived.getByRole('button', { name: 'Delete for good' }).click();
      await archived.waitFor({ state: 'detached' });
      const purge = dialogs.slice(purgeAsked).find((d) => d.startsWith(`Delete ${LIVE} for good?`)) ?? '';
      assert(purge !== '' && !/container/i.test(purge), `the delete confirm: ${purge}`);
    },

    /** A device paired while the Devices screen is open shows there without a reload. */
    async liveDevices() {
      await page.getByRole('link', { name: 'Devices', exact: true }).click();
      await page.getByRole('heading', { name: 'Devices', exact: true }).waitFor();
      const m = await mark();
      const { token } = await send('POST', '/api/devices/pairing-tokens');
      const app = await request.newContext({ ignoreHTTPSErrors: true });
      const r = await app.post(`${URL_}/api/devices/pair`, { data: { token, device_name: 'live tablet', platform: 'android' } });
      assert(r.status() === 201, `pair: ${r.status()}`);
      await app.dispose();
      const device = page.locator('[data-testid=device]', { hasText: 'live tablet' });
      await device.waitFor();
      assert(await sameDocument(m), 'the Devices screen was reloaded');
      await screenshot(page, 'live-device');
      await device.getByRole('button', { name: 'Revoke' }).click();
      await device.waitFor({ state: 'detached' });
    },

    /** A new alert pops a toast (linking to Alerts), not only the badge. */
    async alertToast() {
      const title = 'Backup finished late';
      const api = await request.newContext({ ignoreHTTPSErrors: true });
      const r = await api.post(`${URL_}/api/notifications`, {
        headers: { authorization: `Bearer ${LOCAL_TOKEN}` },
        data: { level: 'warning', title, message: 'e2e: a toast, not only a badge', source: 'e2e' },
      });
      assert(r.status() === 201, `POST /api/notifications: ${r.status()}`);
      await api.dispose();
      const toast = page.getByTestId('toast').filter({ hasText: title });
      await toast.waitFor();
      assert((await toast.innerText()).includes('a toast, not only a badge'), 'the toast lacks the message');
      assert((await toast.getAttribute('href')) === '/notifications', 'the toast does not lead to Alerts');
      await screenshot(page, 'alert-toast');
    },

    /** A group chat with a person and an agent, made in the UI; a message naming the agent
     *  reaches it (a quiet group: agents answer when named). */
    async groupChat() {
      // A family account to add (the settings step deleted its own).
      const users = await get('/api/users');
      if (!users.some((u) => u.username === PERSON)) await send('POST', '/api/users', { username: PERSON, password: 'sam password 123' });
      await page.getByRole('link', { name: 'Chat', exact: true }).click();
      const form = page.getByTestId('new-group');
      await form.locator('summary').click();
      await form.getByLabel('Name', { exact: true }).fill('Family planning');
      await form.getByRole('checkbox', { name: process.env.TAOS_E2E_AGENT ?? 'UI Helper' }).check();
      await form.getByLabel(/^People/).fill(PERSON);
      await screenshot(page, 'group-new');
      await form.getByRole('button', { name: 'Create' }).click();
      await page.waitForURL(/\/chat\/[^/]+$/);
      const id = new URL(page.url()).pathname.split('/').pop();
      await page.locator(`[data-testid=channel][href="/chat/${id}"]`, { hasText: 'Family planning' }).waitFor();
      const channel = await get(`/api/chat/channels/${id}`);
      const members = [...channel.members].sort();
      assert(JSON.stringify(members) === JSON.stringify([SLUG, 'user:owner', `user:${PERSON}`].sort()), `members: ${members}`);
      assert(channel.type === 'group' && channel.settings?.response_mode === 'quiet', `channel: ${JSON.stringify(channel)}`);
      await page.getByText('3 members').waitFor();
      await write(`@${SLUG} what should we cook tonight?`);
      await page.locator('[data-testid=message][data-author="user:owner"]', { hasText: 'what should we cook' }).waitFor();
      await page.locator(`[data-testid=message][data-author="${SLUG}"][data-state=complete]`, { hasText: REPLY }).waitFor({ timeout: 90_000 });
      await screenshot(page, 'group-answered');
    },
  };
}
