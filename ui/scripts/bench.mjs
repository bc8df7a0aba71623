// Measures the web UI (run by scripts/bench-ui.sh, which starts a release host and writes the
// results into docs/benchmarks.md). Prints one JSON object.
//   - the initial download: every script and stylesheet index.html loads, gzipped;
//   - first screen: a fresh browser context (empty cache) to the agents list, signed in, and to
//     the login form, signed out; median and max of RUNS;
//   - a 5 000-message channel: rows in the DOM, frame times while scrolling from the newest
//     message to the first (older pages load as it goes).
// Env: TAOS_URL (required for the browser parts), RUNS (default 7), MESSAGES (default 5000).
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { chromium, request } from 'playwright-core';

const DIST = new URL('../dist/', import.meta.url).pathname;
const RUNS = Number(process.env.RUNS ?? 7);
const MESSAGES = Number(process.env.MESSAGES ?? 5000);
const URL_ = process.env.TAOS_URL;
const PASSWORD = 'correct horse battery staple';

const gz = (file) => gzipSync(readFileSync(file), { level: 9 }).length;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};
const round = (x, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

function bundle() {
  const html = readFileSync(join(DIST, 'index.html'), 'utf8');
  const initial = [...html.matchAll(/(?:src|href)="\/(assets\/[^"]+)"/g)].map((m) => m[1]);
  let js = 0;
  let css = 0;
  for (const a of initial) {
    if (a.endsWith('.js')) js += gz(join(DIST, a));
    else if (a.endsWith('.css')) css += gz(join(DIST, a));
  }
  let all = 0;
  const walk = (dir) => {
    for (const f of readdirSync(dir)) {
      const p = join(dir, f);
      if (statSync(p).isDirectory()) walk(p);
      else all += statSync(p).size;
    }
  };
  walk(DIST);
  // The charting library (uPlot) is a chunk of its own that only the chart screens import:
  // it must exist and must not be among what index.html loads.
  const assets = readdirSync(join(DIST, 'assets'));
  const chart = assets.filter((f) => f.startsWith('uplot-'));
  if (!chart.some((f) => f.endsWith('.js'))) throw new Error('no uplot-*.js chunk in dist/assets');
  if (chart.some((f) => initial.includes(`assets/${f}`))) throw new Error('index.html loads the chart chunk');
  const chartGz = chart.reduce((a, f) => a + gz(join(DIST, 'assets', f)), 0);
  return {
    initial_js_gzip_kb: round(js / 1024),
    initial_css_gzip_kb: round(css / 1024),
    chart_chunk_gzip_kb: round(chartGz / 1024),
    dist_total_kb: round(all / 1024),
  };
}

const result = { bundle: bundle() };

// Issue 19's pictures: Home with 20 agents, the spend screen's 30-day chart for 20 agents (3 models each), and a
// 1 000-span trace waterfall, rendered from a warm cache (the app and the chart chunk loaded
// once before). Their API answers are served by the page's router with data of the host's
// shape, so what is timed is the screen: navigation → chart canvas / waterfall drawn.
async function pictures(browser, state) {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, storageState: state, viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  const today = new Date();
  const day = (i) => new Date(today.getTime() - i * 86_400_000).toISOString().slice(0, 10);
  const usage = {
    from_day: day(29),
    to_day: day(0),
    agents: Array.from({ length: 20 }, (_, a) => ({
      agent_name: `bench-${a}`,
      display_name: `Bench ${a}`,
      budget: { limit_usd: 50, period: 'month' },
      period_spend_usd: 12.5,
      rows: Array.from({ length: 30 }, (_, d) => ['model-a', 'model-b', 'model-c'].map((model, m) => ({
        day: day(29 - d), model, requests: 10 + m, failures: m, tokens_in: 1000 * (m + 1), tokens_out: 500, cost_usd: 0.01 * (a + 1) * (m + 1),
      }))).flat(),
    })),
  };
  const t0 = Date.parse('2026-03-01T10:00:00Z');
  const spans = Array.from({ length: 1000 }, (_, i) => ({
    v: 1, id: `span-${i}`, trace_id: 'bench-trace', parent_id: i % 3 ? `span-${i - (i % 3)}` : null, agent_name: 'bench',
    kind: ['llm_call', 'tool_call', 'tool_result'][i % 3], created_at: new Date(t0 + i * 40 + 30).toISOString(),
    duration_ms: 30, tokens_in: 100, tokens_out: 20, cost_usd: 0.001, model: 'model-a', payload: { i },
  }));
  const GIB = 1024 ** 3;
  const overview = {
    host_name: 'bench', llm: 'ready', runtime: 'ok: incus 6.0.4', sample_secs: 60, spend_today_usd: 3.21,
    sample: { at: today.toISOString(), cpu_percent: 23.5, memory_used_bytes: 3 * GIB, memory_total_bytes: 8 * GIB, data_disk_used_bytes: 20 * GIB, data_disk_total_bytes: 64 * GIB, pool_used_bytes: 9 * GIB, pool_total_bytes: 32 * GIB },
    agents: Array.from({ length: 20 }, (_, a) => ({
      slug: `bench-${a}`, display_name: `Bench ${a}`, emoji: '🤖', status: a % 5 ? 'running' : 'stopped', connected: a % 5 !== 0,
      memory_used_bytes: (40 + a) * 1024 ** 2, disk_used_bytes: (a + 1) * 100 * 1024 ** 2, disk_quota_bytes: 5 * GIB, disk_state: 'ok', spend_today_usd: 0.05 * a,
    })),
  };
  await page.route('**/api/host/overview', (r) => r.fulfill({ json: overview }));
  await page.route('**/api/usage?**', (r) => r.fulfill({ json: usage }));
  await page.route('**/api/agents/bench/trace?**', (r) => r.fulfill({ json: { agent_name: 'bench', schema_version: 1, events: spans, next_cursor: null } }));
  const times = async (path, ready) => {
    const out = [];
    for (let i = 0; i <= RUNS; i++) {
      await page.goto(`${URL_}/agents`);
      await page.getByRole('heading', { name: 'Agents' }).waitFor();
      const start = performance.now();
      await page.evaluate((p) => { history.pushState(null, '', p); dispatchEvent(new PopStateEvent('popstate')); }, path);
      await ready();
      if (i > 0) out.push(performance.now() - start); // the first run warms the cache
    }
    return { runs: out.length, median_ms: round(median(out)), max_ms: round(Math.max(...out)) };
  };
  const home = await times('/', () => page.locator('[data-testid=home-agent]').nth(19).waitFor());
  const spend = await times('/spend', () => page.getByTestId('spend-chart').locator('canvas').waitFor());
  const waterfall = await times('/agents/bench/traces/bench-trace', () => page.getByTestId('wf-bar').first().waitFor());
  // Scroll the 1 000 rows to the end, a step per frame.
  const scroll = await page.evaluate(async () => {
    const wf = document.querySelector('[data-testid=waterfall]');
    const frames = [];
    let last = performance.now();
    while (wf.scrollTop + wf.clientHeight < wf.scrollHeight - 1) {
      wf.scrollTop += 200;
      await new Promise((r) => requestAnimationFrame(r));
      const now = performance.now();
      frames.push(now - last);
      last = now;
    }
    frames.sort((a, b) => a - b);
    return { frames: frames.length, frame_p95_ms: frames[Math.floor(frames.length * 0.95)], frame_max_ms: frames.at(-1), frames_over_50ms: frames.filter((f) => f > 50).length, rows_in_dom: document.querySelectorAll('[data-testid=wf-bar]').length };
  });
  for (const k of Object.keys(scroll)) scroll[k] = round(scroll[k]);
  await ctx.close();
  return { home_20_agents: home, spend_chart_20_agents_30_days: spend, waterfall_1000_spans: { ...waterfall, scroll } };
}

if (URL_) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  // The owner account, and its session for the signed-in runs.
  const api = await request.newContext({ ignoreHTTPSErrors: true, baseURL: URL_ });
  // First-run setup needs the code the host keeps in its data dir (bench-ui.sh passes it).
  const setupCode = process.env.TAOS_SETUP_CODE ?? '';
  let r = await api.post('/api/auth/setup', { data: { username: 'owner', password: PASSWORD, setup_code: setupCode } });
  if (r.status() === 409) r = await api.post('/api/auth/login', { data: { username: 'owner', password: PASSWORD } });
  if (!r.ok()) throw new Error(`sign in: ${r.status()} ${await r.text()}`);
  const { csrf_token: csrf } = await r.json();
  const state = await api.storageState();

  const timed = async (signedIn) => {
    const times = [];
    for (let i = 0; i < RUNS; i++) {
      const ctx = await browser.newContext({ ignoreHTTPSErrors: true, storageState: signedIn ? state : undefined });
      const page = await ctx.newPage();
      const t0 = performance.now();
      await page.goto(`${URL_}/agents`);
      if (signedIn) await page.getByRole('heading', { name: 'Agents' }).waitFor();
      else await page.getByRole('button', { name: 'Sign in' }).waitFor();
      times.push(performance.now() - t0);
      await ctx.close();
    }
    return { median_ms: round(median(times)), max_ms: round(Math.max(...times)) };
  };
  result.first_screen_signed_in = await timed(true);
  result.first_screen_login = await timed(false);

  // A channel with MESSAGES messages, posted through the API as the owner.
  const headers = { 'x-csrf-token': csrf };
  const ch = await api.post('/api/chat/channels', { headers, data: { name: `bench-${Date.now()}`, members: ['user:owner'] } });
  if (!ch.ok()) throw new Error(`channel: ${ch.status()} ${await ch.text()}`);
  const channel = await ch.json();
  const t0 = performance.now();
  let next = 1;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (next <= MESSAGES) {
        const n = next++;
        const body = n % 10 === 0 ? `message ${n}\n${'a longer one, '.repeat(12)}` : `message ${n}`;
        const p = await api.post('/api/chat/messages', { headers, data: { channel_id: channel.id, content: body, client_id: `bench-${n}` } });
        if (!p.ok()) throw new Error(`post ${n}: ${p.status()}`);
      }
    }),
  );
  result.post_messages_s = round((performance.now() - t0) / 1000);

  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, storageState: state, viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  const open0 = performance.now();
  await page.goto(`${URL_}/chat/${channel.id}`);
  await page.locator('[data-testid=message]').filter({ hasText: `message ${MESSAGES}` }).first().waitFor({ timeout: 60_000 });
  result.open_channel_ms = round(performance.now() - open0);
  // Scroll to the very first message, a step per frame, recording every frame's duration.
  result.scroll = await page.evaluate(async (total) => {
    const vp = document.querySelector('[role=log]');
    const frames = [];
    let maxRows = 0;
    let last = performance.now();
    const start = last;
    const first = () => [...document.querySelectorAll('[data-testid=message] .content')].some((e) => e.textContent === 'message 1');
    while (!first() && performance.now() - start < 120_000) {
      vp.scrollTop = Math.max(0, vp.scrollTop - 300);
      await new Promise((r) => requestAnimationFrame(r));
      const now = performance.now();
      frames.push(now - last);
      last = now;
      maxRows = Math.max(maxRows, document.querySelectorAll('[data-testid=message]').length);
    }
    frames.sort((a, b) => a - b);
    const pick = (q) => frames[Math.min(frames.length - 1, Math.floor(frames.length * q))];
    return {
      reached_first: first(),
      messages: total,
      frames: frames.length,
      seconds: (performance.now() - start) / 1000,
      frame_p50_ms: pick(0.5),
      frame_p95_ms: pick(0.95),
      frame_max_ms: frames[frames.length - 1],
      frames_over_50ms: frames.filter((f) => f > 50).length,
      max_rows_in_dom: maxRows,
    };
  }, MESSAGES);
  for (const k of Object.keys(result.scroll)) if (typeof result.scroll[k] === 'number') result.scroll[k] = round(result.scroll[k]);
  await ctx.close();
  Object.assign(result, await pictures(browser, state));
  await browser.close();
  await api.dispose();
}

console.log(JSON.stringify(result));
