// The `taos-agent` sidecar command for an external agent, as the README gives it, filled in
// with the agent's credentials and the host's real agent-listener URLs (GET /api/host).

export interface SidecarInput {
  /** The agent listener, `TAOS_BRIDGE_URL` (e.g. http://127.0.0.1:6970). */
  agentUrl: string;
  /** The LLM gateway, `OPENAI_BASE_URL` (the agent listener's /v1). */
  gatewayUrl: string;
  slug: string;
  /** The agent token; null when it was not just issued (the agent keeps its current one). */
  agentToken: string | null;
  /** The LLM key; null when it was not just issued. */
  llmKey: string | null;
  model: string | null | undefined;
  fallbacks: string[];
}

/** What stands in for a credential that wasn't shown this time (the README's placeholders). */
export const UNCHANGED_TOKEN = 'taos_ag_…';
export const UNCHANGED_KEY = 'taos_llm_…';

/** A value as a POSIX shell word: bare when it is plainly safe, else single-quoted. */
export function shellWord(value: string): string {
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(value)) return value;
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

/** The environment the sidecar needs, in the README's order. */
export function sidecarEnv(input: SidecarInput): [string, string][] {
  const env: [string, string][] = [
    ['TAOS_BRIDGE_URL', input.agentUrl],
    ['TAOS_AGENT_NAME', input.slug],
    ['TAOS_AGENT_TOKEN', input.agentToken ?? UNCHANGED_TOKEN],
    ['OPENAI_BASE_URL', input.gatewayUrl],
    ['OPENAI_API_KEY', input.llmKey ?? UNCHANGED_KEY],
  ];
  if (input.model) env.push(['TAOS_MODEL', input.model]);
  const fallbacks = input.fallbacks.filter((m) => m && m !== input.model);
  if (fallbacks.length) env.push(['TAOS_FALLBACK_MODELS', fallbacks.join(',')]);
  return env;
}

/** The command to paste into a shell on the host: `VAR=value … taos-agent`. */
export function sidecarCommand(input: SidecarInput): string {
  const words = sidecarEnv(input).map(([k, v]) => `${k}=${shellWord(v)}`);
  const lines: string[] = [];
  for (let i = 0; i < words.length; i += 3) lines.push(words.slice(i, i + 3).join(' '));
  return `${lines.join(' \\\n')} \\\n  taos-agent`;
}
