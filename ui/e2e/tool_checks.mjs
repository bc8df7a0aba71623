// The end-to-end checks for issue 16 item 7: the deploy form's framework picker (each
// framework's verification, memory and disk needs, what the host has free, and the warning
// when a framework needs more), and a chat with an agent's tool steps rendered as collapsible
// cards and its approval requests answered with Approve and Deny.
//
// The agent is played by this script over the real agent listener with its own token, exactly
// as the sidecar does (docs/api.md, "The agent bridge" and "Tool approvals"): it announces tool
// calls and results on its answer (`…/reply`) and asks `POST …/approvals`; the host stores and
// shows them, and records the decisions the clicks make. Nothing is written to the database.
import { request } from 'playwright-core';

export const TOOLER = 'Tool Helper';
export const TOOLER_SLUG = 'tool-helper';

export function makeToolChecks(ctx) {
  const { page, desktop, URL_, assert, screenshot } = ctx;

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
  const MIB = 1024 * 1024;
  /** The page's own way of writing a size (lib/capacity.ts `size`). */
  const size = (bytes) => (bytes < 1024 * MIB ? `${Math.round(bytes / MIB)} MiB` : `${(bytes / (1024 * MIB)).toFixed(1)} GiB`);

  return {
    /** The framework picker: every framework's verification and needs beside what the host
     *  has free (the host's own figures), and the warning for one that needs more. */
    async frameworkPicker() {
      const frameworks = await get('/api/frameworks');
      const capacity = await get('/api/host/capacity');
      assert(capacity.memory_available_bytes > 0 && capacity.disk_free_bytes > 0, `capacity: ${JSON.stringify(capacity)}`);
      await page.goto(`${URL_}/agents/new`);
      const facts = page.getByTestId('framework-facts');
      await facts.waitFor();
      // Free figures are read when the page loads; wait for them before reading the rows.
      await facts.locator('[data-testid=need-disk]', { hasText: 'free)' }).first().waitFor();
      for (const f of frameworks) {
        const row = facts.locator(`[data-testid=framework-fact][data-framework="${f.id}"]`);
        const text = await row.innerText();
        assert(text.includes(f.name) && text.includes(f.verification), `row of ${f.id}: ${text}`);
        const memory = await row.getByTestId('need-memory').innerText();
        const disk = await row.getByTestId('need-disk').innerText();
        assert(memory.startsWith(`${size(f.requires.ram_mb * MIB)} (`) && /\d (MiB|GiB) free\)/.test(memory), `memory of ${f.id}: ${memory}`);
        assert(disk === `${size(f.requires.disk_mb * MIB)} (${size(capacity.disk_free_bytes)} free)` || /\d (MiB|GiB) free\)/.test(disk), `disk of ${f.id}: ${disk}`);
        // Marked short exactly when the host's own figures say so.
        const short = f.requires.ram_mb * MIB > capacity.memory_available_bytes || f.requires.disk_mb * MIB > capacity.disk_free_bytes;
        assert((await row.getAttribute('data-short')) === String(short), `${f.id} marked short=${await row.getAttribute('data-short')}, the host's figures say ${short}: ${text}`);
      }
      const caption = await facts.locator('caption').innerText();
      assert(caption.includes(capacity.storage), `the caption names the storage: ${caption}`);
      await screenshot(page, 'deploy-picker');

      // A host short of memory. The real host can't be made to lack RAM here, so this one
      // answer of /api/host/capacity is the host's own with less memory available than the
      // `tools` framework needs; everything else on the page is real.
      const tools = frameworks.find((f) => f.id === 'tools');
      assert(tools, 'no tools framework');
      const p = await desktop.newPage();
      await p.route('**/api/host/capacity', async (route) => {
        const real = await route.fetch();
        const body = await real.json();
        body.memory_available_bytes = (tools.requires.ram_mb - 1) * MIB;
        await route.fulfill({ response: real, json: body });
      });
      await p.goto(`${URL_}/agents/new`);
      await p.locator('#d-framework').selectOption('tools');
      const warning = p.getByTestId('capacity-warning');
      await warning.waitFor();
      const said = await warning.innerText();
      assert(said.includes(`${tools.name} needs ${size(tools.requires.ram_mb * MIB)} of memory`) && said.includes(`${size((tools.requires.ram_mb - 1) * MIB)} memory available`), `warning: ${said}`);
      const row = p.locator('[data-testid=framework-fact][data-framework=tools]');
      assert((await row.getAttribute('data-short')) === 'true', 'the short framework is not marked');
      const option = await p.locator('#d-framework option[value=tools]').innerText();
      assert(option.includes('needs more than is free'), `option: ${option}`);
      await screenshot(p, 'deploy-picker-short');
      await p.close();
    },

    /** A chat where the agent runs tools: cards from the answer's `metadata.tools`, collapsed
     *  and expandable; two calls wait for approval: Approve on one, Deny on the other, and the
     *  host records each (the agent asking again is told). */
    async toolCardsAndApprovals() {
      const made = await send('POST', '/api/agents', { name: TOOLER });
      const slug = made.agent.slug;
      assert(slug === TOOLER_SLUG, `slug ${slug}`);
      const dm = made.agent.dm_channel_id;
      const info = await get('/api/host');
      const agentApi = await request.newContext();
      const asAgent = async (path, data) => {
        const r = await agentApi.post(`${info.agent_url}${path}`, { headers: { authorization: `Bearer ${made.agent_token}` }, data });
        return { status: r.status(), body: await r.json().catch(() => null) };
      };
      const reply = async (body) => {
        const r = await asAgent(`/api/openclaw/sessions/${slug}/reply`, body);
        assert(r.status === 202, `reply ${body.kind}: ${r.status} ${JSON.stringify(r.body)}`);
      };
      const ask = (call) => asAgent(`/api/openclaw/sessions/${slug}/approvals`, { wait_secs: 0, ...call });

      await page.goto(`${URL_}/chat/${dm}`);
      await page.getByLabel('Message', { exact: true }).fill('clean up the old logs and tell me what you freed');
      await page.keyboard.press('Enter');
      const mine = page.locator('[data-testid=message][data-author="user:owner"]:not([data-state=pending])', { hasText: 'clean up the old logs' });
      await mine.waitFor();
      const messages = await get(`/api/chat/channels/${dm}/messages?after_seq=0`);
      const turn = messages.find((m) => m.content.startsWith('clean up the old logs'));
      assert(turn, 'my message is not stored');
      const trace_id = turn.id;

      // Under `auto` (the default) the host answers the sidecar's question at once, and the
      // call runs: its card shows the command and, once opened, the output.
      const auto = await ask({ trace_id, call_id: 'c1', tool: 'shell', args: { command: 'du -sh /home/agent/logs' }, step: 0 });
      assert(auto.status === 200 && auto.body.state === 'approved' && auto.body.id === null, `auto: ${JSON.stringify(auto.body)}`);
      await reply({ kind: 'tool_call', trace_id, call_id: 'c1', tool: 'shell', args: { command: 'du -sh /home/agent/logs' } });
      await reply({
        kind: 'tool_result', trace_id, call_id: 'c1', tool: 'shell', success: true,
        result: { exit_code: 0, timed_out: false, stdout: '48K\t/home/agent/logs\n', stderr: '', truncated: false, duration_ms: 12 },
      });
      const answer = page.locator(`[data-testid=message][data-author="${slug}"]`).first();
      const first = answer.locator('[data-testid=tool-step][data-tool=shell][data-success=true]');
      await first.waitFor();
      // Collapsed by default: the command shows, the output doesn't until it is opened.
      assert(!(await first.evaluate((d) => d.open)), 'a finished tool card is open by default');
      assert((await first.locator('summary').innerText()).includes('du -sh /home/agent/logs'), 'the card does not name its command');
      assert(!(await first.locator('pre').isVisible()), 'the output shows while collapsed');
      await first.locator('summary').click();
      await first.locator('pre', { hasText: '48K' }).waitFor({ state: 'visible' });
      await screenshot(page, 'chat-tool-card');

      // On `ask`, two calls wait for a person: each is an actionable message on its card.
      const patched = await send('PATCH', `/api/agents/${slug}`, { tool_policy: 'ask' });
      assert(patched.tool_policy === 'ask', `policy: ${JSON.stringify(patched)}`);
      const calls = [
        { call_id: 'c2', step: 1, command: 'rm -r ~/logs/2024', decide: 'Approve', state: 'approved' },
        { call_id: 'c3', step: 2, command: 'rm -r ~/logs/2025', decide: 'Deny', state: 'denied' },
      ];
      for (const c of calls) {
        await reply({ kind: 'tool_call', trace_id, call_id: c.call_id, tool: 'shell', args: { command: c.command } });
        const body = { trace_id, call_id: c.call_id, tool: 'shell', args: { command: c.command }, step: c.step };
        const asked = await ask(body);
        assert(asked.status === 200 && asked.body.state === 'pending', `ask ${c.call_id}: ${asked.status} ${JSON.stringify(asked.body)}`);
        const card = answer.locator('[data-testid=tool-step][data-approval=pending]', { hasText: c.command });
        await card.waitFor();
        assert(await card.evaluate((d) => d.open), 'a card waiting for approval is collapsed');
        const question = await card.getByTestId('approval').innerText();
        assert(question.includes(`${TOOLER} wants to run shell: ${c.command}`), `the request reads: ${question}`);
        await screenshot(page, `chat-approval-${c.state}`);
        await card.getByRole('button', { name: c.decide, exact: true }).click();
        const decided = answer.locator(`[data-testid=tool-step][data-approval=${c.state}]`, { hasText: c.command });
        await decided.getByTestId('approval-state').waitFor();
        // The host recorded it: the agent asking again about the same call is told.
        const again = await ask(body);
        assert(again.status === 200 && again.body.state === c.state && again.body.id === asked.body.id, `after ${c.decide}: ${JSON.stringify(again.body)}`);
      }
      const waiting = await get('/api/approvals');
      assert(waiting.filter((a) => a.agent === slug).length === 0, `still pending: ${JSON.stringify(waiting)}`);
      const denied = answer.locator('[data-testid=tool-step][data-approval=denied]');
      assert((await denied.getByTestId('approval-state').innerText()).startsWith('denied'), 'the denial is not labelled');

      // The approved call runs; the denied one is reported not run; the answer completes, and
      // its cards stay (collapsed) on the finished message.
      await reply({ kind: 'tool_result', trace_id, call_id: 'c2', tool: 'shell', success: true, result: { exit_code: 0, timed_out: false, stdout: '', stderr: '', truncated: false, duration_ms: 30 } });
      await reply({ kind: 'final', trace_id, content: 'Moved logs/2024 (48K) to the recycle bin; left 2025 as you asked.' });
      await page.locator(`[data-testid=message][data-author="${slug}"][data-state=complete]`, { hasText: 'recycle bin' }).waitFor();
      const cards = page.locator(`[data-testid=message][data-author="${slug}"]`).first().getByTestId('tool-step');
      assert((await cards.count()) === 3, `${await cards.count()} cards on the answer`);
      await page.reload();
      const reloaded = page.locator(`[data-testid=message][data-author="${slug}"]`).first().getByTestId('tool-step');
      await reloaded.first().waitFor();
      const open = await reloaded.evaluateAll((ds) => ds.filter((d) => d.open).length);
      assert(open === 0, `${open} cards open after a reload`);
      assert((await reloaded.count()) === 3, 'cards lost on reload');
      await screenshot(page, 'chat-tools-done');
      await agentApi.dispose();
    },
  };
}
