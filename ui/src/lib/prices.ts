import type { Agent, ModelInfo, Provider, ProviderType } from './api/types';

// LiteLLM reports a cost for models of these providers from its own price list; for the others
// (local servers, anything OpenAI-compatible) it reports none, so a call costs only what the
// owner set as the model's price, and without one it counts as $0.
const PRICED_BY_LITELLM: ProviderType[] = ['openai', 'anthropic', 'openrouter'];

/** Whether the host can count what a call to `model` costs. */
export function hasPrice(model: string, models: ModelInfo[], providers: Provider[]): boolean {
  const info = models.find((m) => m.name === model);
  if (!info) return true; // not served: nothing is spent on it either
  if (info.input_usd_per_mtok != null || info.output_usd_per_mtok != null) return true;
  const provider = providers.find((p) => p.name === info.provider);
  return provider != null && PRICED_BY_LITELLM.includes(provider.type);
}

/** The agent's models (its model and fallbacks) whose calls would count as $0. */
export function unpricedModels(agent: Pick<Agent, 'model' | 'fallback_models'>, models: ModelInfo[], providers: Provider[]): string[] {
  const all = [agent.model, ...agent.fallback_models].filter((m): m is string => !!m);
  return [...new Set(all)].filter((m) => !hasPrice(m, models, providers));
}
