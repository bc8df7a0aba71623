// The end-to-end checks for issue 19 item 6 (the rest): a channel's settings from the chat screen
// (rename, add and remove people and agents, archive and unarchive; a refused change says why and
// changes nothing) and threads shown as threads (replies under their root with a count, opened in
// a side panel where replies are posted; an agent named in a thread answers in it), at desktop
// and at 390 px in light and dark. run.mjs calls them once the agent answers and `sam` exists.

export function makeChannelChecks(ctx) {
  const { page, desktop, browser, URL_, SLUG, REPLY, PERSON, assert, screenshot, watch } = ctx;

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
  const sorted = (a) => JSON.stringify([...a].sort());
  let channelId = null;
  let rootId = null;

  /** Waits until the host's record of the channel satisfies `ok`. */
  async function until(ok, what) {
    let last = null;
    for (let i = 0; i < 100; i++) {
      last = await get(`/api/chat/channels/${channelId}`);
      if (ok(last)) return last;
      await page.waitForTimeout(100);
    }
    throw new Error(`${what}: the host has ${JSON.stringify(last)}`);
  }

  return {
    async settings() {
      const users = await get('/api/users');
      if (!users.some((u) => u.username === PERSON)) await send('POST', '/api/users', { username: PERSON, password: 'sam password 123' });
      const made = await send('POST', '/api/chat/channels', { name: 'Weekend', type: 'group', members: [] });
      channelId = made.id;
      await page.goto(`${URL_}/chat/${channelId}`);
      await page.getByLabel('Message', { exact: true }).waitFor();
      await page.getByTestId('open-settings').click();
      const panel = page.getByTestId('channel-settings');
      await panel.waitFor();

      // Rename.
      await panel.getByLabel('Name', { exact: true }).fill('Weekend plans');
      await panel.getByRole('button', { name: 'Rename' }).click();
      await until((c) => c.name === 'Weekend plans', 'renamed');
      await page.locator('.conversation .head strong', { hasText: 'Weekend plans' }).waitFor();
      await page.locator(`[data-testid=channel][href="/chat/${channelId}"]`, { hasText: 'Weekend plans' }).waitFor();

      // A person the host does not know: refused with its reason, nothing changed.
      await panel.getByLabel(/^Add a person/).fill('nobody-by-this-name');
      await panel.getByTestId('add-person').getByRole('button', { name: 'Add' }).click();
      const refused = await panel.getByTestId('settings-error').innerText();
      assert(/nobody-by-this-name|unknown|no such/i.test(refused), `refusal: ${refused}`);
      assert(sorted((await get(`/api/chat/channels/${channelId}`)).members) === sorted(['user:owner']), 'a refused add changed the members');

      // Add a person and an agent.
      await panel.getByLabel(/^Add a person/).fill(PERSON);
      await panel.getByTestId('add-person').getByRole('button', { name: 'Add' }).click();
      await until((c) => c.members.includes(`user:${PERSON}`), 'person added');
      await panel.getByLabel('Add an agent').selectOption(SLUG);
      await panel.getByTestId('add-agent').getByRole('button', { name: 'Add' }).click();
      const three = await until((c) => c.members.includes(SLUG), 'agent added');
      assert(sorted(three.members) === sorted(['user:owner', `user:${PERSON}`, SLUG]), `members: ${three.members}`);
      await panel.locator(`[data-member="${SLUG}"]`).waitFor();
      await page.getByText('3 members').waitFor();
      await screenshot(page, 'channel-settings');

      // Remove the person.
      await panel.getByRole('button', { name: `Remove ${PERSON}` }).click();
      await until((c) => !c.members.includes(`user:${PERSON}`), 'person removed');
      await panel.locator(`[data-member="user:${PERSON}"]`).waitFor({ state: 'detached' });

      // Archive: read-only, listed under Archived; unarchive: the composer is back.
      await panel.getByTestId('archive').click();
      await until((c) => c.archived, 'archived');
      await page.getByText('This chat is archived: unarchive it in its settings to talk again.').waitFor();
      assert((await page.getByLabel('Message', { exact: true }).count()) === 0, 'an archived chat still has a composer');
      await panel.getByTestId('unarchive').click();
      await until((c) => !c.archived, 'unarchived');
      await page.getByLabel('Message', { exact: true }).waitFor();
      await panel.getByRole('button', { name: 'Close chat settings' }).click();
      await panel.waitFor({ state: 'detached' });
    },

    async threads() {
      assert(channelId, 'settings() makes the channel first');
      const composer = page.getByLabel('Message', { exact: true });
      await composer.fill('Where shall we go on Saturday?');
      await composer.press('Enter');
      const root = page.locator('[data-testid=message][data-author="user:owner"]', { hasText: 'Where shall we go on Saturday?' });
      await root.waitFor();
      await root.locator('[data-testid=thread-start]').waitFor();
      rootId = (await get(`/api/chat/channels/${channelId}/messages?limit=500`)).find((m) => m.content === 'Where shall we go on Saturday?')?.id;
      assert(rootId, 'the root message is stored');
      await root.getByTestId('thread-start').click();
      const thread = page.getByTestId('thread');
      await thread.waitFor();
      const reply = thread.getByLabel('Reply in thread');
      await reply.fill('The lake, if it is sunny.');
      await thread.getByRole('button', { name: 'Reply', exact: true }).click();
      await thread.locator('[data-testid=thread-message]', { hasText: 'The lake, if it is sunny.' }).waitFor();
      // An agent named in the thread answers in it.
      await reply.fill(`@${SLUG} any ideas for Saturday?`);
      await reply.press('Enter');
      await thread.locator(`[data-testid=thread-message][data-author="${SLUG}"][data-state=complete]`, { hasText: REPLY }).waitFor({ timeout: 90_000 });

      const stored = await get(`/api/chat/channels/${channelId}/messages?limit=500`);
      const inThread = stored.filter((m) => m.thread_id === rootId);
      assert(inThread.length === 3, `thread replies stored: ${JSON.stringify(stored.map((m) => [m.author_id, m.content, m.thread_id]))}`);
      assert(inThread.some((m) => m.author_id === SLUG), 'the agent answered outside the thread');
      // The main line shows the root with its count, and none of the replies.
      await root.getByTestId('thread-open').filter({ hasText: '3 replies' }).waitFor();
      const main = await page.locator('.conversation [data-testid=message]').allInnerTexts();
      assert(!main.some((t) => t.includes('The lake, if it is sunny.')), 'a reply shows in the main line');
      assert(!main.some((t) => t.includes('any ideas for Saturday?')), 'a reply shows in the main line');
      await screenshot(page, 'thread-panel');
      await thread.getByRole('button', { name: 'Close thread' }).click();
      await thread.waitFor({ state: 'detached' });
    },

    /** The settings and a thread at 390 px, light and dark: each takes the whole screen. */
    async phone(password) {
      assert(channelId && rootId, 'settings() and threads() first');
      for (const colorScheme of ['light', 'dark']) {
        const phone = await browser.newContext({
          ignoreHTTPSErrors: true,
          viewport: { width: 390, height: 844 },
          isMobile: true,
          hasTouch: true,
          deviceScaleFactor: 2,
          colorScheme,
        });
        const p = await phone.newPage();
        watch(p, `channel-phone-${colorScheme}`);
        p.setDefaultTimeout(20_000);
        await p.goto(`${URL_}/login?next=${encodeURIComponent(`/chat/${channelId}`)}`);
        await p.getByLabel('Username').fill('owner');
        await p.getByLabel('Password').fill(password);
        await p.getByRole('button', { name: 'Sign in' }).click();
        const root = p.locator('[data-testid=message][data-author="user:owner"]', { hasText: 'Where shall we go on Saturday?' });
        await root.getByTestId('thread-open').click();
        const thread = p.getByTestId('thread');
        await thread.locator('[data-testid=thread-message]', { hasText: 'The lake, if it is sunny.' }).waitFor();
        const fits = async (what) => {
          const w = await p.evaluate(() => document.documentElement.scrollWidth);
          assert(w <= 390, `${what} is ${w} px wide on a phone`);
          const box = await p.locator('aside.panel').boundingBox();
          assert(box && box.width >= 380, `${what} does not take the screen: ${JSON.stringify(box)}`);
          assert(!(await p.locator('.conversation').isVisible()), `${what}: the conversation still shows beside it`);
        };
        await fits('the thread');
        await screenshot(p, `phone-${colorScheme}-thread`);
        await thread.getByRole('button', { name: 'Close thread' }).click();
        await p.getByTestId('open-settings').click();
        await p.getByTestId('channel-settings').waitFor();
        await fits('the settings');
        await screenshot(p, `phone-${colorScheme}-channel-settings`);
        await phone.close();
      }
    },
  };
}
