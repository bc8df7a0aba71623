import { describe, expect, it } from 'vitest';
import { shellWord, sidecarCommand, sidecarEnv } from '../src/lib/sidecar';
import { unpricedModels } from '../src/lib/prices';
import type { ModelInfo, Provider } from '../src/lib/api/types';

const input = {
  agentUrl: 'http://127.0.0.1:6970',
  gatewayUrl: 'http://127.0.0.1:6970/v1',
  slug: 'helper',
  agentToken: 'taos_ag_abc-_1',
  llmKey: 'taos_llm_xyz',
  model: 'gpt-4o-mini',
  fallbacks: ['gpt-4o-mini', 'llama3:8b'],
};

// What a shell would set from `VAR=word …`: enough of POSIX quoting for the words made here.
function parse(command: string): Record<string, string> {
  const env: Record<string, string> = {};
  const re = /([A-Z_]+)=('(?:[^']|'\\'')*'|\S+)/g;
  for (const [, k, v] of command.matchAll(re)) {
    env[k] = v.startsWith("'") ? v.slice(1, -1).replace(/'\\''/g, "'") : v;
  }
  return env;
}

describe('the sidecar command', () => {
  it("is the README's command with the real values", () => {
    const c = sidecarCommand(input);
    expect(c.endsWith('taos-agent')).toBe(true);
    expect(parse(c)).toEqual({
      TAOS_BRIDGE_URL: 'http://127.0.0.1:6970',
      TAOS_AGENT_NAME: 'helper',
      TAOS_AGENT_TOKEN: 'taos_ag_abc-_1',
      OPENAI_BASE_URL: 'http://127.0.0.1:6970/v1',
      OPENAI_API_KEY: 'taos_llm_xyz',
      TAOS_MODEL: 'gpt-4o-mini',
      TAOS_FALLBACK_MODELS: 'llama3:8b',
    });
  });

  it('quotes what a shell would read differently', () => {
    expect(shellWord('a b')).toBe("'a b'");
    expect(shellWord("it's")).toBe("'it'\\''s'");
    expect(shellWord('$(rm -rf /)')).toBe("'$(rm -rf /)'");
    expect(parse(`X=${shellWord("o'k $HOME")}`).X).toBe("o'k $HOME");
  });

  it('names a credential that was not reissued by its placeholder', () => {
    const env = Object.fromEntries(sidecarEnv({ ...input, llmKey: null, model: null, fallbacks: [] }));
    expect(env.OPENAI_API_KEY).toBe('taos_llm_…');
    expect(env.TAOS_MODEL).toBeUndefined();
  });
});

describe('prices', () => {
  const models: ModelInfo[] = [
    { name: 'local', provider: 'mine' },
    { name: 'priced', provider: 'mine', input_usd_per_mtok: 1 },
    { name: 'gpt-4o', provider: 'oa' },
  ];
  const providers = [
    { name: 'mine', type: 'openai-compatible' },
    { name: 'oa', type: 'openai' },
  ] as Provider[];
  it('finds the models whose calls would count as $0', () => {
    expect(unpricedModels({ model: 'local', fallback_models: ['priced', 'gpt-4o', 'local'] }, models, providers)).toEqual(['local']);
    expect(unpricedModels({ model: 'priced', fallback_models: [] }, models, providers)).toEqual([]);
  });
});
