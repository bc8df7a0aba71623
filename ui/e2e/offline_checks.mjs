// The end-to-end checks for issue 19 item 7 (second half): offline reading as an installable PWA.
// - A browser that was only clicked past the certificate warning (every other context of this
//   run: ignoreHTTPSErrors) gets no service worker; the UI says offline reading is off, why, and
//   how to turn it on.
// - A browser that trusts the host's certificate for real (the certificate downloaded from the
//   host, put in an NSS database under that browser's own HOME with `certutil -t "P,,"`, as
//   the Settings page tells people) registers the worker, keeps the app and the channel it read,
//   and shows that channel again with an offline banner when the host is taken away (a TCP relay
//   in front of the host, closed), then live again when it is back. Signing out deletes the kept
//   chats.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

/** A TCP relay to the host on its own port; close() takes the host away, open() brings it back. */
async function relay(target) {
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(target.port, target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => s.destroy());
    }
    client.pipe(upstream).pipe(client);
  });
  const listen = (port) => new Promise((ok, fail) => server.once('error', fail).listen(port, '127.0.0.1', () => ok(server.address().port)));
  const port = await listen(0);
  return {
    port,
    async close() {
      await new Promise((ok) => {
        server.close(() => ok());
        for (const s of sockets) s.destroy();
      });
    },
    open: () => listen(port),
  };
}

export function makeOfflineChecks(ctx) {
  const { page, URL_, SLUG, REPLY, LAUNCH_ARGS, assert, screenshot, watch } = ctx;

  const get = async (path) => {
    const r = await page.request.get(`${URL_}${path}`);
    assert(r.ok(), `GET ${path}: ${r.status()}`);
    return r.json();
  };

  return {
    /** The usual browser here trusts nothing: offline reading is off, and the UI says why and how. */
    async untrustedSaysWhy() {
      await page.goto(`${URL_}/settings`);
      const section = page.locator('[data-testid=offline-reading-settings][data-status=unavailable]');
      await section.waitFor();
      const why = await section.getByTestId('offline-off').innerText();
      assert(/does not trust the host's certificate/.test(why), `reason shown: ${why}`);
      const link = section.getByTestId('certificate-download');
      assert((await link.getAttribute('href')) === '/api/auth/certificate', 'the certificate link');
      await screenshot(page, 'offline-reading-off');
      await page.getByRole('link', { name: 'Chat', exact: true }).click();
      await page.getByTestId('offline-unavailable').getByRole('link', { name: 'Why, and how to turn it on' }).click();
      await page.waitForURL(/\/settings\?show=offline-reading$/);
      const box = await page.locator('[data-testid=offline-reading-settings] h2').boundingBox();
      assert(box && box.y >= 0 && box.y < 800, `the chat list's link does not bring the section into view: ${JSON.stringify(box)}`);
    },

    /** A browser that trusts the host's certificate reads the last channel with the host away. */
    async readsOffline(password) {
      const cert = await page.request.get(`${URL_}/api/auth/certificate`);
      assert(cert.ok(), `certificate download: ${cert.status()}`);
      const home = mkdtempSync(join(tmpdir(), 'taos-e2e-trust-'));
      const nss = join(home, '.pki', 'nssdb');
      mkdirSync(nss, { recursive: true });
      const file = join(home, 'taos-host.crt');
      writeFileSync(file, await cert.text());
      // The Settings page's Linux instructions, word for word.
      execFileSync('certutil', ['-N', '-d', `sql:${nss}`, '--empty-password']);
      execFileSync('certutil', ['-d', `sql:${nss}`, '-A', '-t', 'P,,', '-n', 'taos-host', '-i', file]);

      const away = await relay(new URL(URL_));
      const base = `https://127.0.0.1:${away.port}`;
      const browser = await chromium.launch({
        executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
        args: LAUNCH_ARGS,
        env: { ...process.env, HOME: home },
      });
      try {
        // No ignoreHTTPSErrors: the page loads only because the certificate is trusted.
        const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
        const p = await context.newPage();
        watch(p, 'trusted');
        p.setDefaultTimeout(20_000);
        await p.goto(`${base}/login?next=%2Fsettings`);
        await p.getByLabel('Username').fill('owner');
        await p.getByLabel('Password').fill(password);
        await p.getByRole('button', { name: 'Sign in' }).click();
        await p.locator('[data-testid=offline-reading-settings][data-status=ready]').getByTestId('offline-on').waitFor();
        await p.waitForFunction(() => !!navigator.serviceWorker.controller);
        const manifest = await p.evaluate(async () => (await fetch('/manifest.webmanifest')).json());
        assert(manifest.start_url && manifest.icons?.some((i) => i.sizes === '512x512'), `manifest: ${JSON.stringify(manifest)}`);
        await screenshot(p, 'offline-reading-on');

        // Read the agent's chat while the host is there: the worker keeps it.
        const dm = (await get(`/api/agents/${SLUG}`)).dm_channel_id;
        await p.goto(`${base}/chat/${dm}`);
        const answer = p.locator(`[data-testid=message][data-author="${SLUG}"]`, { hasText: REPLY }).first();
        await answer.waitFor();
        const kept = await p.evaluate(async () => {
          const c = await caches.open('taos-api-v1');
          return (await c.keys()).map((r) => new URL(r.url).pathname + new URL(r.url).search);
        });
        assert(kept.includes(`/api/chat/channels/${dm}/messages?limit=500`), `kept: ${JSON.stringify(kept)}`);

        // The host goes away; a reload still shows the channel, with the offline banner.
        await away.close();
        await p.reload();
        await p.getByTestId('offline-reading').waitFor();
        await answer.waitFor();
        await screenshot(p, 'offline-reading-desktop');
        await p.setViewportSize({ width: 390, height: 844 });
        await p.emulateMedia({ colorScheme: 'dark' });
        await p.getByTestId('offline-reading').waitFor();
        await answer.waitFor();
        const w = await p.evaluate(() => document.documentElement.scrollWidth);
        assert(w <= 390, `offline chat is ${w} px wide on a phone`);
        await screenshot(p, 'offline-reading-phone-dark');
        await p.setViewportSize({ width: 1280, height: 800 });
        await p.emulateMedia({ colorScheme: 'light' });

        // Back: live again, no banner.
        await away.open();
        await p.reload();
        await answer.waitFor();
        await p.locator('[data-testid=live]', { hasText: 'live' }).waitFor();
        assert((await p.getByTestId('offline-reading').count()) === 0, 'the offline banner stayed with the host back');

        // Signing out deletes the kept chats.
        await p.getByRole('button', { name: 'Sign out' }).click();
        await p.getByRole('heading', { name: 'Sign in to taos' }).waitFor();
        const left = await p.evaluate(async () => {
          const c = await caches.open('taos-api-v1');
          return (await c.keys()).map((r) => new URL(r.url).pathname).filter((path) => !path.startsWith('/api/auth/'));
        });
        assert(left.length === 0, `kept after signing out: ${JSON.stringify(left)}`);
        await context.close();
      } finally {
        await browser.close();
        await away.close().catch(() => {});
        rmSync(home, { recursive: true, force: true });
      }
    },
  };
}
