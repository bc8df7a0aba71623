// Issue 19's pictures (spend and trace timeline) and the accessibility check, for run.mjs.
// Everything drawn is compared with what the host's API says for the same data, which came
// from real flows: gateway calls through LiteLLM and the fake upstream, a real chat turn.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

import { EXTERNAL_SLUG } from './screens.mjs';

const AXE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
// What counts as a failure: axe's two worst impact levels.
const BLOCKING = new Set(['serious', 'critical']);

export function makeInsightChecks({ page, URL_, SLUG, assert, screenshot }) {
  const api = async (p, path) => {
    const r = await p.request.get(`${URL_}${path}`);
    assert(r.ok(), `GET ${path}: ${r.status()}`);
    return r.json();
  };
  const violations = []; // `screen: rule (impact) × n: target`, from every check
  const checked = new Set();

  /**
   * Runs axe-core on what the page shows now. axe is evaluated through the DevTools protocol,
   * which the page's CSP doesn't apply to, so the host's strict policy stays on. Serious and
   * critical violations are collected; `assertAccessible` fails the run on any.
   */
  async function axe(p, name) {
    if (!(await p.evaluate(() => typeof window.axe === 'object'))) await p.evaluate(AXE);
    const result = await p.evaluate(async () => {
      // eslint-disable-next-line no-undef
      const r = await window.axe.run(document, { resultTypes: ['violations'] });
      return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, targets: v.nodes.slice(0, 3).map((n) => n.target.join(' ')), count: v.nodes.length }));
    });
    checked.add(name);
    for (const v of result) {
      if (!BLOCKING.has(v.impact)) continue;
      const line = `${name}: ${v.id} (${v.impact}) × ${v.count}: ${v.help} — ${v.targets.join(' | ')}`;
      violations.push(line);
      // Said at once too, so a run that stops early still shows what it found.
      console.log(`     a11y ${line}`);
    }
  }

  function assertAccessible() {
    assert(checked.size > 0, 'no screen was checked for accessibility');
    assert(violations.length === 0, `serious or critical accessibility violations:\n${violations.join('\n')}`);
    return checked.size;
  }

  /** Both themes of one screen: a screenshot (and so the accessibility check) in each. */
  async function bothThemes(p, name) {
    for (const scheme of ['light', 'dark']) {
      await p.emulateMedia({ colorScheme: scheme });
      await screenshot(p, `${name}-${scheme}`);
    }
    await p.emulateMedia({ colorScheme: 'light' });
  }

  // uPlot's legend shows the values at the cursor: hover a day's bar and read them.
  async function legendAt(p, chart, fraction) {
    const over = chart.locator('.u-over');
    const box = await over.boundingBox();
    await p.mouse.move(box.x + box.width * fraction, box.y + box.height - 3);
    return chart.locator('.u-legend').innerText();
  }

  return {
    axe,
    assertAccessible,

    /**
     * Spend screen: the totals, the day's cost and the agent's cost equal /api/usage's figures;
     * the chart's legend at today's bar says the same; the budget meter shows the period spend.
     */
    async spendScreen() {
      await page.getByRole('link', { name: 'Spend', exact: true }).click();
      await page.getByRole('heading', { name: 'Spend and usage' }).waitFor();
      const chart = page.getByTestId('spend-chart');
      await chart.locator('canvas').waitFor();
      const o = await api(page, '/api/usage?days=30');
      const usd = (v) => (v < 0.01 && v > 0 ? `$${v.toFixed(4)}` : `$${v.toFixed(2)}`);
      const rows = o.agents.flatMap((a) => a.rows);
      const total = rows.reduce((s, r) => s + r.cost_usd, 0);
      assert(total > 0, `no spend recorded: ${JSON.stringify(o)}`);
      assert((await page.getByTestId('range-cost').innerText()) === usd(total), `range cost ${await page.getByTestId('range-cost').innerText()} vs ${usd(total)}`);
      // Today's row: its title is the exact figure the API gives.
      const today = o.to_day;
      const todayCost = rows.filter((r) => r.day === today).reduce((s, r) => s + r.cost_usd, 0);
      const todayRequests = rows.filter((r) => r.day === today).reduce((s, r) => s + r.requests, 0);
      const dayRow = page.locator(`[data-testid=spend-days] tr[data-day="${today}"]`);
      assert(Number(await dayRow.getByTestId('day-cost').getAttribute('title')) === todayCost, `today's cost cell vs ${todayCost}`);
      assert(Number(await dayRow.getByTestId('day-requests').innerText()) === todayRequests, `today's requests vs ${todayRequests}`);
      for (const a of o.agents) {
        const cost = a.rows.reduce((s, r) => s + r.cost_usd, 0);
        const cell = page.locator(`[data-testid=spend-agents] tr[data-agent="${a.agent_name}"] [data-testid=agent-cost]`);
        assert(Number(await cell.getAttribute('title')) === cost, `${a.agent_name}'s cost cell vs ${cost}`);
      }
      // The picture: today's bar is the last one; the legend there names each model's cost.
      const legend = await legendAt(page, chart, 0.995);
      for (const model of new Set(rows.filter((r) => r.day === today).map((r) => r.model))) {
        const v = rows.filter((r) => r.day === today && r.model === model).reduce((s, r) => s + r.cost_usd, 0);
        assert(legend.replace(/\s+/g, '').includes(`${model}${usd(v)}`), `legend at today: ${legend} (wanted ${model} ${usd(v)})`);
      }
      // Requests and failures per day: the legend at today's bar.
      const todayFailures = rows.filter((r) => r.day === today).reduce((s, r) => s + r.failures, 0);
      const reqLegend = (await legendAt(page, page.getByTestId('requests-chart'), 0.995)).replace(/\s+/g, '');
      assert(reqLegend.includes(`requests${todayRequests}failed${todayFailures}`), `requests legend: ${reqLegend} (wanted ${todayRequests} and ${todayFailures})`);
      await bothThemes(page, 'spend');

      // One agent with a budget: the meter says its period spend, with the 50/80/100 % marks.
      const budgeted = o.agents.find((a) => a.agent_name === EXTERNAL_SLUG);
      assert(budgeted?.budget, `no budget on ${EXTERNAL_SLUG}: ${JSON.stringify(budgeted)}`);
      await page.getByTestId('spend-agent').selectOption(EXTERNAL_SLUG);
      await page.getByTestId('budget-meter').waitFor();
      assert((await page.getByTestId('period-spend').innerText()) === usd(budgeted.period_spend_usd), 'period spend shown');
      assert((await page.getByTestId('budget-meter').locator('.mark').count()) === 3, 'three budget marks');
      await chart.locator('canvas').waitFor();
      await page.getByLabel('Tokens').check();
      const tokenLegend = await legendAt(page, chart, 0.995);
      for (const r of budgeted.rows.filter((x) => x.day === today)) {
        const want = `${r.model}${(r.tokens_in + r.tokens_out).toLocaleString()} tokens`;
        assert(tokenLegend.replace(/\s+/g, '').includes(want.replace(/\s+/g, '')), `token legend: ${tokenLegend} (wanted ${want})`);
      }
      await page.getByTestId('spend-period').selectOption('7');
      await page.getByTestId('spend-summary').filter({ hasText: o.to_day }).waitFor();
      await bothThemes(page, 'spend-agent');
      // Prices are edited on Providers; the screen links there.
      await page.getByTestId('edit-prices').click();
      await page.getByTestId('model-prices').waitFor();
    },

    /**
     * Chat → "Show trace" on the agent's answer → its waterfall: message_in, the llm_call and
     * message_out; the llm_call bar carries the API's tokens and cost; its payload opens.
     */
    async traceTimeline() {
      const agent = await api(page, `/api/agents/${SLUG}`);
      await page.goto(`${URL_}/chat/${agent.dm_channel_id}`);
      const answer = page.locator(`[data-testid=message][data-author="${SLUG}"][data-state=complete]`).first();
      await answer.getByTestId('show-trace').click();
      await page.getByRole('heading', { name: /^Trace/ }).waitFor();
      const traceId = decodeURIComponent(new URL(page.url()).pathname.split('/').pop());
      const events = (await api(page, `/api/agents/${SLUG}/trace?trace_id=${encodeURIComponent(traceId)}&limit=1000`)).events;
      const wf = page.getByTestId('waterfall');
      await wf.waitFor();
      const bars = wf.getByTestId('wf-bar');
      assert((await bars.count()) === events.length, `${await bars.count()} bars for ${events.length} events`);
      const kinds = await bars.evaluateAll((bs) => bs.map((b) => b.getAttribute('data-kind')));
      assert(kinds[0] === 'message_in' && kinds.includes('llm_call') && kinds.at(-1) === 'message_out', `waterfall order: ${kinds}`);
      const call = events.find((e) => e.kind === 'llm_call');
      const bar = wf.locator(`[data-testid=wf-bar][data-id="${call.id}"]`);
      assert(Number(await bar.getAttribute('data-tokens-in')) === call.tokens_in, 'tokens in on the bar');
      assert(Number(await bar.getAttribute('data-tokens-out')) === call.tokens_out, 'tokens out on the bar');
      assert(Number(await bar.getAttribute('data-cost')) === (call.cost_usd ?? 0) || (await bar.getAttribute('data-cost')) === '', 'cost on the bar');
      assert(Number(await bar.getAttribute('data-duration')) === (call.duration_ms ?? 0), 'duration on the bar');
      const title = await bar.getAttribute('title');
      assert(title.includes(`${call.tokens_in} in / ${call.tokens_out} out tokens`) && title.includes(`${call.duration_ms} ms`), `bar title: ${title}`);
      const total = events.reduce((s, e) => s + (e.cost_usd ?? 0), 0);
      const usd = (v) => (v < 0.01 && v > 0 ? `$${v.toFixed(4)}` : `$${v.toFixed(2)}`);
      assert((await page.getByTestId('trace-cost').innerText()) === usd(total), 'trace cost');
      await bar.click();
      const payload = page.getByTestId('wf-payload');
      await payload.waitFor();
      assert((await payload.locator('pre').innerText()).includes('response'), 'the llm_call payload opens');
      await bothThemes(page, 'trace-timeline');

      // The trace list: its histogram counts what the host's histogram says.
      await page.getByRole('link', { name: `All of @${SLUG}'s traces` }).click();
      await page.getByTestId('trace-histogram').locator('canvas').waitFor();
      const h = await api(page, `/api/agents/${SLUG}/trace/histogram`);
      const events24h = h.hours.reduce((s, x) => s + x.events, 0);
      const shown = await page.getByTestId('histogram-total').innerText();
      assert(shown.startsWith(`${events24h} events`), `histogram says ${shown}, the host ${events24h}`);
      await bothThemes(page, 'traces-histogram');
      // Each event opens its timeline.
      await page.locator('[data-testid=trace-event][data-kind=message_out]').first().getByTestId('open-timeline').click();
      await page.getByTestId('waterfall').waitFor();
    },

    /** The new screens at 390 px: they fit, and pass the accessibility check. */
    async phone(p, fits) {
      await p.getByRole('link', { name: 'Spend', exact: true }).click();
      await p.getByTestId('spend-chart').locator('canvas').waitFor();
      await fits('spend');
      const agent = await api(p, `/api/agents/${SLUG}`);
      await p.goto(`${URL_}/chat/${agent.dm_channel_id}`);
      await p.locator(`[data-testid=message][data-author="${SLUG}"][data-state=complete]`).first().getByTestId('show-trace').click();
      await p.getByTestId('waterfall').waitFor();
      await fits('trace-timeline');
    },
  };
}
