// Admin prompts as the owner edits them before sending (the chat's "Admin prompts" picker). The
// host's `POST /api/agents/{slug}/admin-prompts/{name}` sends a prompt unedited; here the UI fills
// the same placeholders the same way (host-service/src/prompts.rs `render`), puts the text in the
// composer, and it goes out as an ordinary message. Keep `renderPrompt` in step with the host's.

/** Every required variable must have a value that is not blank (the host's `MissingVariables`). */
export function missingVariables(required: readonly string[], variables: Record<string, string>): string[] {
  return required.filter((v) => (variables[v] ?? '').trim() === '');
}

export type Rendered = { ok: true; text: string } | { ok: false; problem: string };

/**
 * The body with each `{{name}}` replaced, as the host does it: values are used as given (not
 * trimmed), every variable given is substituted (required or not), one after the other in the
 * order of their names (the host's BTreeMap), and a placeholder nobody gave stays as it is.
 */
export function renderPrompt(body: string, required: readonly string[], variables: Record<string, string>): Rendered {
  const missing = missingVariables(required, variables);
  if (missing.length) return { ok: false, problem: `missing variables: ${missing.join(', ')}` };
  let text = body;
  // The host's BTreeMap<String, String> orders keys by their bytes; for the ASCII names prompts
  // use, a plain code-unit comparison is the same order.
  for (const name of Object.keys(variables).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))) {
    text = text.split(`{{${name}}}`).join(variables[name]);
  }
  return { ok: true, text };
}

/** How a variable is asked for: a point in time (UTC) or free text. */
export type VariableKind = 'time' | 'text';

/** `since` (and any `…_at`/`until`) is a moment; the host and the agent read RFC 3339 UTC. */
export function variableKind(name: string): VariableKind {
  return name === 'since' || name === 'until' || name.endsWith('_at') ? 'time' : 'text';
}

/** `at` as RFC 3339 UTC to the second (`2026-11-20T00:00:00Z`), the form the prompts show. */
export function rfc3339(at: Date): string {
  return at.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** The value a variable starts with: `since` a week before `now`, anything else empty. */
export function defaultValue(name: string, now: Date): string {
  if (name === 'since') return rfc3339(new Date(now.getTime() - 7 * 24 * 3600 * 1000));
  return '';
}

/** Values for every required variable, each at its default. */
export function defaultVariables(required: readonly string[], now: Date): Record<string, string> {
  return Object.fromEntries(required.map((v) => [v, defaultValue(v, now)]));
}

/**
 * A `datetime-local` input shows and gives `YYYY-MM-DDTHH:MM[:SS]` with no zone; the form labels it
 * UTC, so the two conversions below are plain text edits, with no local time zone involved.
 */
export function toTimeInput(value: string): string {
  const m = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2})?)(?:\.\d+)?Z$/.exec(value);
  return m ? m[1] : '';
}

/** The input's value as RFC 3339 UTC, or '' when it is empty or not a real moment. */
export function fromTimeInput(value: string): string {
  const m = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2})(:\d{2})?$/.exec(value);
  if (!m) return '';
  const text = `${m[1]}${m[2] ?? ':00'}Z`;
  const at = new Date(text);
  // `2026-02-30T…` parses to March; a moment that does not print back the same is not real.
  return Number.isNaN(at.getTime()) || rfc3339(at) !== text ? '' : text;
}
