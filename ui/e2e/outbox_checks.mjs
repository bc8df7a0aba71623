// The end-to-end check for issue 19 item 7 (first half): a message written while its POST can't
// reach the host survives a reload of the page (the browser's outbox in IndexedDB) and is sent,
// once, when the host is reachable again.

export function makeOutboxChecks(ctx) {
  const { page, URL_, SLUG, assert, screenshot } = ctx;

  const get = async (path) => {
    const r = await page.request.get(`${URL_}${path}`);
    assert(r.ok(), `GET ${path}: ${r.status()}`);
    return r.json();
  };

  return {
    async unsentSurvivesReload() {
      const agent = await get(`/api/agents/${SLUG}`);
      const dm = agent.dm_channel_id;
      await page.goto(`${URL_}/chat/${dm}`);
      const composer = page.getByLabel('Message', { exact: true });
      await composer.waitFor();
      const text = `written while the host was away ${Date.now()}`;
      const storedCount = async () =>
        (await get(`/api/chat/channels/${dm}/messages?limit=500`)).filter((m) => m.content === text).length;

      // Sends can't reach the host (the page stays loaded; reading still works).
      let blocked = 0;
      const cut = (route) => {
        if (route.request().method() !== 'POST') return route.fallback();
        blocked++;
        return route.abort('internetdisconnected');
      };
      await page.route('**/api/chat/messages', cut);
      try {
        await composer.fill(text);
        await composer.press('Enter');
        const mine = page.locator('[data-testid=message][data-author="user:owner"]', { hasText: text });
        await mine.waitFor();
        // It shows at once; the POST follows once the outbox has it.
        for (let i = 0; i < 200 && blocked === 0; i++) await page.waitForTimeout(50);
        assert(blocked >= 1, 'the send was never tried');
        await page.reload();
        await mine.waitFor();
        assert(['pending', 'error'].includes(await mine.getAttribute('data-state')), `after the reload it is ${await mine.getAttribute('data-state')}`);
        assert((await storedCount()) === 0, 'the host has it although no send reached it');
        await screenshot(page, 'chat-outbox-after-reload');
      } finally {
        await page.unroute('**/api/chat/messages', cut);
      }
      // Reachable again: it goes by itself (the next retry), once.
      await page
        .locator('[data-testid=message][data-author="user:owner"]:not([data-state=pending]):not([data-state=error])', { hasText: text })
        .waitFor({ timeout: 60_000 });
      assert((await storedCount()) === 1, `stored ${await storedCount()} times`);
      const left = await page.evaluate(
        () =>
          new Promise((resolve, reject) => {
            const req = indexedDB.open('taos', 1);
            req.onsuccess = () => {
              const all = req.result.transaction('outbox', 'readonly').objectStore('outbox').getAll();
              all.onsuccess = () => resolve(all.result.length);
              all.onerror = () => reject(all.error);
            };
            req.onerror = () => reject(req.error);
          }),
      );
      assert(left === 0, `${left} message(s) left in the outbox`);
    },
  };
}
