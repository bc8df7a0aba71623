// The end-to-end checks for issue 18 item 9: the Backups screen. The owner sets a folder as the
// destination from Settings, gets the passphrase the host made on a recovery sheet (once), runs a
// backup from the page and sees it finish with the host's own figures; a destination the host
// refuses shows the host's reason and changes nothing. A restore drill's result shows in words,
// one line per check, the archive target is saved from the form, and the passphrase changes
// from the page onto a new recovery sheet. The backup is real: restic writes an
// encrypted repository into the folder, which is checked on disk.
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';

export function makeBackupChecks(ctx) {
  const { page, URL_, DATA_DIR, assert, screenshot } = ctx;

  const get = async (path) => {
    const r = await page.request.get(`${URL_}${path}`);
    assert(r.ok(), `GET ${path}: ${r.status()}`);
    return r.json();
  };
  // A folder outside the data dir whose parent exists, as a USB disk's mount point would.
  const folder = `${DATA_DIR.replace(/\/+$/, '')}-backups`;

  return {
    async backupFromTheScreen() {
      rmSync(folder, { recursive: true, force: true });
      mkdirSync(folder);
      await page.goto(`${URL_}/settings`);
      await page.getByRole('link', { name: 'Set up and check backups' }).click();
      await page.waitForURL(/\/settings\/backups$/);
      const status = page.getByTestId('backup-status');
      await status.getByText('Backups are not set up').waitFor();

      // A relative path: the host says why, and nothing is saved.
      const form = page.getByTestId('backup-settings');
      await form.getByLabel('A folder or USB disk').check();
      await page.locator('#b-path').fill('relative/folder');
      await form.getByRole('button', { name: 'Save' }).click();
      const refused = await page.getByTestId('backup-save-error').innerText();
      assert(/absolute/i.test(refused), `a relative folder is refused with the reason: ${refused}`);
      assert((await get('/api/backups/settings')).configured === false, 'the refused folder was not saved');

      await page.locator('#b-path').fill(folder);
      await form.getByLabel('Every day').check();
      await page.locator('#b-at').fill('03:30');
      await form.getByRole('button', { name: 'Save' }).click();
      const sheet = page.getByTestId('recovery-sheet');
      await sheet.waitFor();
      const passphrase = await sheet.getByTestId('recovery-passphrase').innerText();
      assert(passphrase.length >= 16, `the host made a strong passphrase: ${passphrase.length} characters`);
      assert((await sheet.innerText()).includes(folder), 'the sheet says where the backups are');
      await screenshot(page, 'backups-recovery-sheet');
      const saved = await get('/api/backups/settings');
      assert(saved.configured && saved.destination.path === folder, `saved: ${JSON.stringify(saved)}`);
      assert(saved.schedule.kind === 'daily' && saved.schedule.hour === 3 && saved.schedule.minute === 30, `schedule: ${JSON.stringify(saved.schedule)}`);
      assert(!JSON.stringify(saved).includes(passphrase), 'the settings never carry the passphrase');
      await sheet.getByTestId('recovery-done').click();
      await sheet.waitFor({ state: 'detached' });
      assert((await status.innerText()).includes('every day at 03:30 UTC'), `status: ${await status.innerText()}`);

      // Before any backup the drill button says why it waits.
      const drillCard = page.getByTestId('backup-drill');
      assert(await drillCard.getByTestId('drill-now').isDisabled(), 'a drill before any backup is offered');
      assert(/back up first/.test(await drillCard.getByTestId('drill-blocked').innerText()), 'the drill button says why it waits');

      await page.getByTestId('backup-now').click();
      const run = page.locator('[data-testid=backup-run]').first();
      await run.and(page.locator('[data-state=succeeded]')).waitFor({ timeout: 180_000 });
      const runs = await get('/api/backups');
      assert(runs[0].state === 'succeeded' && runs[0].snapshot_id, `the host's run: ${JSON.stringify(runs[0])}`);
      // The page shows the host's figure for the snapshot's size.
      const size = page.getByTestId('backup-size');
      await size.waitFor();
      assert((await size.getAttribute('title')) === String(runs[0].total_bytes), `size shown ${await size.getAttribute('title')}, the host says ${runs[0].total_bytes}`);
      assert((await run.innerText()).includes(runs[0].snapshot_id.slice(0, 8)), 'the run names its snapshot');
      // A real restic repository is in the folder.
      assert(existsSync(`${folder}/config`) && readdirSync(`${folder}/snapshots`).length === 1, `no restic repository in ${folder}`);
      await screenshot(page, 'backups');

      // The restore drill: none yet; started from the page's button, its progress shows the
      // check it is on (from /api/events; every state the card goes through is recorded, as a
      // short drill may pass a step faster than a poll), then its result in words, per check.
      await drillCard.getByText('No restore drill yet').waitFor();
      await page.evaluate(() => {
        window.__drillSeen = [];
        const card = document.querySelector('[data-testid=backup-drill]');
        const note = () => {
          const label = card.querySelector('[data-testid=drill-progress] label');
          const button = card.querySelector('[data-testid=drill-now]');
          if (label) window.__drillSeen.push({ label: label.textContent, disabled: button.disabled });
        };
        new MutationObserver(note).observe(card, { subtree: true, childList: true, characterData: true, attributes: true });
      });
      await drillCard.getByTestId('drill-now').click();
      const outcome = drillCard.getByTestId('drill-outcome');
      await outcome.and(page.locator(':text-matches("^(Passed|Failed)")')).waitFor({ timeout: 300_000 });
      const drills = await get('/api/backups/drills');
      const drill = drills[0];
      assert(drills.length === 1 && drill.reason === 'manual', `the button started one drill: ${JSON.stringify(drills)}`);
      assert(drill.state === 'passed', `the drill passed: ${JSON.stringify(drill)}`);
      const seen = await page.evaluate(() => window.__drillSeen);
      const steps = seen.filter((s) => s.label.startsWith('Checking: '));
      assert(steps.length > 0 && steps.every((s) => s.disabled), `the running drill's steps shown, the button disabled meanwhile: ${JSON.stringify(seen)}`);
      assert(steps.some((s) => s.label === 'Checking: Repository is readable…'), `the repository step shown: ${JSON.stringify(seen)}`);
      assert(!(await drillCard.getByTestId('drill-progress').isVisible()), 'the progress is gone once the drill ended');
      assert(await drillCard.getByTestId('drill-now').isEnabled(), 'a new drill can be started after one ended');
      await page.reload();
      await outcome.waitFor();
      assert((await outcome.innerText()).startsWith('Passed'), `drill outcome shown: ${await outcome.innerText()}`);
      const checks = drillCard.getByTestId('drill-check');
      assert((await checks.count()) === drill.checks.length, `one line per check: ${await checks.count()} of ${drill.checks.length}`);
      assert((await drillCard.innerText()).includes(drill.snapshot_id.slice(0, 8)), 'the drill names its snapshot');

      // The archive target is saved from the form, and back.
      for (const [label, target] of [['Move their containers into the backup', 'backup'], ['Keep their containers on this board', 'pool']]) {
        await form.getByLabel(label).check();
        await form.getByRole('button', { name: 'Save' }).click();
        let s;
        for (let i = 0; i < 100; i++) {
          s = await get('/api/backups/settings');
          if (s.archive_target === target) break;
          await page.waitForTimeout(100);
        }
        assert(s.archive_target === target, `archive target saved as ${s.archive_target}, wanted ${target}`);
      }

      // The passphrase changes from the page: a short one is refused with the host's reason and
      // changes nothing; an empty one gets a new passphrase the host made, on a new recovery sheet.
      const change = page.getByTestId('passphrase-change');
      const keyedAt = (await get('/api/backups/settings')).updated_at;
      await change.locator('#b-newpass').fill('short');
      await change.getByRole('button', { name: 'Change passphrase' }).click();
      const why = await change.getByTestId('passphrase-change-error').innerText();
      assert(/8 characters/.test(why), `a short passphrase is refused with the reason: ${why}`);
      assert((await get('/api/backups/settings')).updated_at === keyedAt, 'the refused passphrase changed nothing');
      await change.locator('#b-newpass').fill('');
      await change.getByRole('button', { name: 'Change passphrase' }).click();
      await sheet.waitFor();
      const changed = await sheet.getByTestId('recovery-passphrase').innerText();
      assert(changed.length >= 16 && changed !== passphrase, 'a new passphrase on a new recovery sheet');
      await sheet.getByTestId('recovery-done').click();
      await sheet.waitFor({ state: 'detached' });

      // At phone size the screen fits its width.
      const before = page.viewportSize();
      await page.setViewportSize({ width: 390, height: 844 });
      try {
        await page.getByTestId('backup-now').waitFor();
        const overflow = await page.evaluate(() => [...document.querySelectorAll('main *')].filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1).map((e) => e.tagName + '.' + e.className).slice(0, 5));
        assert(overflow.length === 0, `wider than a phone: ${overflow.join(', ')}`);
        await screenshot(page, 'backups-phone');
      } finally {
        await page.setViewportSize(before);
      }
    },
  };
}
