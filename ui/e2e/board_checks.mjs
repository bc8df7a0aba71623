// The end-to-end steps for the screens people look at rather than read (issue 19, items 1, 4,
// 5 and 6): Home (the board at a glance, live), Disk (usage against quota with a week of
// history, resize), the recycle bin (a real round trip in the deployed agent's container) and
// archived agents in the chat list. Every figure on a screen is checked against what the API
// says at the same moment: a bar's aria-valuenow / aria-valuemax against the API's bytes.
// run.mjs calls them in order on its signed-in page, after the deploy, with the agent running.
import { execFileSync } from 'node:child_process';

const GIB = 1024 ** 3;

export function makeBoardChecks(ctx) {
  const { page, desktop, browser, URL_, SLUG, assert, screenshot, watch } = ctx;

  const csrf = async () => ({ 'x-csrf-token': (await desktop.cookies()).find((c) => c.name === '__Host-taos_csrf')?.value ?? '' });
  const api = async (path) => {
    const r = await page.request.get(`${URL_}${path}`);
    assert(r.ok(), `GET ${path}: ${r.status()}`);
    return r.json();
  };
  const call = async (method, path, data) => {
    const r = await page.request.fetch(`${URL_}${path}`, { method, headers: await csrf(), data });
    assert(r.ok(), `${method} ${path}: ${r.status()} ${await r.text()}`);
    return r.status() === 204 ? null : r.json();
  };
  /** Runs argv in the agent's container (incus exec, no shell on this side). */
  const inContainer = (argv, input) =>
    execFileSync('incus', ['exec', `taos-${SLUG}`, '--', ...argv], { encoding: 'utf8', input });

  const bar = (scope, testid) => scope.locator(`[data-testid=${testid}]`);
  async function barFigures(locator) {
    return {
      value: Number(await locator.getAttribute('aria-valuenow')),
      max: Number(await locator.getAttribute('aria-valuemax')),
      title: await locator.getAttribute('title'),
    };
  }

  /**
   * Home shows the overview the API gives for the same sample: the page's sample time is read
   * first, then the API; if a new sample landed in between, look again.
   */
  async function homeMatchesTheApi() {
    // On a loaded machine a sample (or an agent's state) can change while the figures are
    // read; a mismatch counts only when the page's sample stayed the same throughout.
    let lastError = null;
    for (let attempt = 0; attempt < 40; attempt++) {
      const at = await page.getByTestId('sampled-at').getAttribute('data-at');
      const view = await api('/api/host/overview');
      if (!at || view.sample?.at !== at) {
        await page.waitForTimeout(500);
        continue;
      }
      try {
        return await compare(view);
      } catch (e) {
        const after = await page.getByTestId('sampled-at').getAttribute('data-at');
        if (after === at) throw e;
        lastError = e;
      }
    }
    throw lastError ?? new Error('Home never showed the sample the API had');
  }

  async function compare(view) {
    const s = view.sample;
    const memory = await barFigures(bar(page, 'host-memory'));
    assert(memory.value === s.memory_used_bytes && memory.max === s.memory_total_bytes, `memory bar ${JSON.stringify(memory)} vs API ${s.memory_used_bytes}/${s.memory_total_bytes}`);
    const data = await barFigures(bar(page, 'host-data-disk'));
    assert(data.value === s.data_disk_used_bytes && data.max === s.data_disk_total_bytes, `data disk bar ${JSON.stringify(data)} vs API`);
    if (s.pool_total_bytes != null) {
      const pool = await barFigures(bar(page, 'host-pool'));
      assert(pool.value === s.pool_used_bytes && pool.max === s.pool_total_bytes, `pool bar ${JSON.stringify(pool)} vs API`);
    }
    if (s.cpu_percent != null) {
      const cpu = await barFigures(bar(page, 'host-cpu'));
      assert(cpu.value === s.cpu_percent, `cpu bar ${cpu.value} vs API ${s.cpu_percent}`);
    }
    const spend = Number(await page.getByTestId('spend-today').getAttribute('data-value'));
    assert(spend === view.spend_today_usd, `spend today ${spend} vs API ${view.spend_today_usd}`);
    assert((await page.getByTestId('llm-state').innerText()) === view.llm, 'LiteLLM state differs');
    const mine = view.agents.find((a) => a.slug === SLUG);
    assert(mine, `the API's overview has no ${SLUG}: ${JSON.stringify(view.agents)}`);
    const card = page.locator(`[data-testid=home-agent][data-slug="${SLUG}"]`);
    assert((await card.getByTestId('agent-status').innerText()) === mine.status, 'agent status differs');
    const agentSpend = Number(await card.getByTestId('agent-spend').getAttribute('data-value'));
    assert(agentSpend === mine.spend_today_usd, `agent spend ${agentSpend} vs API ${mine.spend_today_usd}`);
    const sum = view.agents.reduce((t, a) => t + a.spend_today_usd, 0);
    assert(Math.abs(sum - view.spend_today_usd) < 1e-9, `total ${view.spend_today_usd} is not the agents' ${sum}`);
    const mem = await card.getByTestId('agent-memory').getAttribute('data-value');
    assert(mem === String(mine.memory_used_bytes ?? ''), `agent memory ${mem} vs API ${mine.memory_used_bytes}`);
    assert(mine.memory_used_bytes > 0, `a running container has no memory figure: ${JSON.stringify(mine)}`);
    const disk = await barFigures(bar(card, 'agent-disk'));
    assert(disk.value === mine.disk_used_bytes && disk.max === mine.disk_quota_bytes, `agent disk ${JSON.stringify(disk)} vs API ${mine.disk_used_bytes}/${mine.disk_quota_bytes}`);
    return view;
  }

  return {
    async home() {
      // The quota monitor's reading, so the agent's disk bar has a figure.
      await call('POST', '/api/disk-quota/scan');
      await page.goto(`${URL_}/`);
      await page.getByRole('heading', { name: 'Home', exact: true }).waitFor();
      await page.locator(`[data-testid=home-agent][data-slug="${SLUG}"] [data-testid=agent-disk][aria-valuemax]`).waitFor({ timeout: 60_000 });
      const view = await homeMatchesTheApi();
      await screenshot(page, 'home');
      // Live: the next sample arrives as host.overview and replaces the figures, no reload.
      const before = view.sample.at;
      await page.waitForFunction(
        (at) => document.querySelector('[data-testid=sampled-at]')?.getAttribute('data-at') !== at,
        before,
        { timeout: 60_000 },
      );
      await homeMatchesTheApi();
    },

    async disk() {
      await page.goto(`${URL_}/`);
      await page.getByRole('link', { name: 'Disk per agent' }).click();
      await page.getByRole('heading', { name: 'Disk', exact: true }).waitFor();
      const card = page.locator(`[data-testid=disk-agent][data-slug="${SLUG}"]`);
      await card.waitFor();
      const status = await api(`/api/agents/${SLUG}/disk`);
      const now = await barFigures(bar(card, 'disk-now'));
      assert(now.max === status.quota_bytes, `quota bar max ${now.max} vs API ${status.quota_bytes}`);
      assert(now.value === status.used_bytes, `disk bar ${now.value} vs API ${status.used_bytes}`);
      // The week's columns are the API's buckets, the newest the highest reading in its bucket.
      const history = await api(`/api/host/samples?hours=168&points=84&agent=${SLUG}`);
      const samples = history.agents[0].samples;
      assert(samples.length > 0, 'no disk history after a scan');
      const plot = card.getByTestId('disk-history');
      await page.waitForFunction(
        ([sel, n]) => Number(document.querySelector(sel)?.getAttribute('data-points')) >= n,
        [`[data-testid=disk-agent][data-slug="${SLUG}"] [data-testid=disk-history]`, samples.length],
      );
      const shown = await plot.locator('.col').evaluateAll((cols) => cols.map((c) => c.getAttribute('data-value')).filter((v) => v));
      const want = samples.map((x) => x.disk_used_bytes).filter((v) => v != null).map(String);
      assert(shown.length >= want.length, `columns ${shown} vs API ${want}`);
      assert(want.every((v, i) => shown[i] === v || i === want.length - 1), `columns ${shown} vs API ${want}`);
      assert((await plot.locator('.col').count()) === 84, 'a week is 84 two-hour columns');
      await screenshot(page, 'disk');
      // Resize from here: one GiB more.
      const gib = Math.round(status.quota_bytes / GIB) + 1;
      await card.getByLabel('Quota (GiB)').fill(String(gib));
      await card.getByRole('button', { name: 'Resize' }).click();
      await page.getByText(`Disk quota of @${SLUG} is now`).waitFor();
      const after = await api(`/api/agents/${SLUG}/disk`);
      assert(after.quota_bytes === gib * GIB, `quota after resize ${after.quota_bytes}, want ${gib} GiB`);
      await page.waitForFunction(
        ([sel, max]) => document.querySelector(sel)?.getAttribute('aria-valuemax') === String(max),
        [`[data-testid=disk-agent][data-slug="${SLUG}"] [data-testid=disk-now]`, after.quota_bytes],
      );
    },

    async recycleRoundTrip() {
      // A file the agent deletes: its soft-delete rm moves it to the bin.
      const path = `/root/board-note-${Date.now()}.txt`;
      inContainer(['tee', path], 'keep me');
      inContainer(['rm', path]);
      await page.goto(`${URL_}/`);
      await page.getByRole('link', { name: 'Recycle bin' }).click();
      await page.getByRole('heading', { name: 'Recycle bin', exact: true }).waitFor();
      const section = page.locator(`[data-testid=recycle-agent][data-slug="${SLUG}"]`);
      const item = section.locator('[data-testid=recycle-item]', { hasText: path });
      await item.waitFor();
      const listed = (await api(`/api/agents/${SLUG}/recycle`)).items.find((i) => i.original_path === path);
      assert(listed, `the API does not list ${path}`);
      assert((await item.getAttribute('data-id')) === listed.id, 'item id differs');
      const size = Number(await item.getByTestId('recycle-size').getAttribute('data-value'));
      assert(size === listed.size_bytes, `size ${size} vs API ${listed.size_bytes}`);
      await screenshot(page, 'recycle');
      await item.getByRole('button', { name: 'Restore' }).click();
      await page.getByText(`Restored ${path}`).waitFor();
      await item.waitFor({ state: 'detached' });
      assert(inContainer(['cat', path]) === 'keep me', 'the restored file lost its content');
      // Deleted again, then purged for good (the confirmation is accepted by run.mjs's handler).
      inContainer(['rm', path]);
      await page.getByRole('button', { name: 'Refresh' }).click();
      await item.waitFor();
      let asked = '';
      page.once('dialog', (d) => (asked = d.message()));
      await item.getByRole('button', { name: 'Purge' }).click();
      await page.getByText(`Purged ${path}`).waitFor();
      assert(/for good/.test(asked), `purge did not ask first: "${asked}"`);
      await item.waitFor({ state: 'detached' });
      const left = (await api(`/api/agents/${SLUG}/recycle`)).items.filter((i) => i.original_path === path);
      assert(left.length === 0, `purged but still listed: ${JSON.stringify(left)}`);
      // An offline agent's bin says so instead of looking empty.
      await call('POST', `/api/agents/${SLUG}/stop`);
      await page.goto(`${URL_}/recycle?agent=${SLUG}`);
      await section.getByTestId('recycle-offline').waitFor({ timeout: 60_000 });
      assert((await api(`/api/agents/${SLUG}/recycle`)).status === 'container_offline', 'the API says it is online');
      await screenshot(page, 'recycle-offline');
      await call('POST', `/api/agents/${SLUG}/start`);
      // The steps after this talk to the agent: wait for its sidecar to be back.
      const deadline = Date.now() + 120_000;
      while (!(await api(`/api/agents/${SLUG}`)).connected) {
        assert(Date.now() < deadline, `@${SLUG} did not reconnect after its start`);
        await page.waitForTimeout(500);
      }
    },

    async archivedInChatList() {
      const name = 'Board Archivist';
      const slug = 'board-archivist';
      await call('POST', '/api/agents', { name });
      await call('DELETE', `/api/agents/${slug}`);
      await page.goto(`${URL_}/chat`);
      const archived = page.getByTestId('archived-chats');
      await archived.locator('summary').click();
      const row = archived.locator(`[data-testid=archived-channel][data-agent="${slug}"]`);
      await row.waitFor();
      const grey = await row.getByRole('link').evaluate((a) => getComputedStyle(a).color);
      const normal = await page.getByTestId('channel').first().evaluate((a) => getComputedStyle(a).color);
      assert(grey !== normal, `an archived agent's chat is not greyed (${grey})`);
      await screenshot(page, 'chat-archived-agent');
      await row.getByRole('button', { name: `Restore ${name}` }).click();
      await page.getByText(`${name} restored`).first().waitFor({ timeout: 60_000 });
      await screenshot(page, 'chat-archived-agent-restored');
      await row.waitFor({ state: 'detached' });
      assert((await api(`/api/agents/${slug}`)).status !== 'archived', 'still archived after Restore');
      await call('DELETE', `/api/agents/${slug}`);
      await page.goto(`${URL_}/chat`);
      await archived.locator('summary').click();
      await row.waitFor();
      await row.getByRole('button', { name: `Delete ${name} for good` }).click();
      await row.waitFor({ state: 'detached' });
      const left = (await api('/api/agents/archived')).filter((a) => a.slug === slug);
      assert(left.length === 0, `deleted but still archived: ${JSON.stringify(left)}`);
    },

    /** Home, Disk and the recycle bin at 390 px, light and dark. */
    async phoneAndThemes(password) {
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
        watch(p, `board-phone-${colorScheme}`);
        p.setDefaultTimeout(20_000);
        await p.goto(`${URL_}/login?next=%2F`);
        await p.getByLabel('Username').fill('owner');
        await p.getByLabel('Password').fill(password);
        await p.getByRole('button', { name: 'Sign in' }).click();
        for (const [path, heading] of [['/', 'Home'], ['/disk', 'Disk'], ['/recycle', 'Recycle bin']]) {
          if (path !== '/') await p.goto(`${URL_}${path}`);
          await p.getByRole('heading', { name: heading, exact: true }).waitFor();
          const w = await p.evaluate(() => document.documentElement.scrollWidth);
          assert(w <= 390, `${heading} is ${w} px wide on a phone`);
          const bg = await p.evaluate(() => getComputedStyle(document.documentElement).backgroundColor);
          const dark = bg.match(/\d+/g).slice(0, 3).every((c) => Number(c) < 80);
          assert(dark === (colorScheme === 'dark'), `${heading} in ${colorScheme}: background ${bg}`);
          await screenshot(p, `phone-${colorScheme}-${heading.toLowerCase().replace(/ /g, '-')}`);
        }
        await phone.close();
      }
    },
  };
}
