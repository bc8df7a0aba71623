// Tool approvals as people see them: what an agent wants to run, where its approval is, and
// answering it. A step of an agent's tool use carries `approval: {id, state, reason}` while its
// agent is on `tool_policy: ask` (docs/api.md, "Tool approvals"); the host is the authority, this
// only words it and sends the answer.
import type { Api } from './api/api';
import type { components } from './api/schema';
import { HostError } from './host/HostClient';

export type ApprovalState = components['schemas']['ApprovalState'];
export type ToolPolicy = components['schemas']['ToolPolicy'];
export type Decision = components['schemas']['Decision'];

/** An approval as it shows on a chat step. */
export interface StepApproval {
  id: string;
  state: ApprovalState;
  reason: string | null;
}

const STATES: readonly ApprovalState[] = ['pending', 'approved', 'denied', 'expired', 'cancelled'];
export const TOOL_POLICIES: readonly ToolPolicy[] = ['auto', 'ask', 'off'];

/** What each policy means, for the selector's hint. */
export const POLICY_HINTS: Record<ToolPolicy, string> = {
  auto: 'Tool calls run at once.',
  ask: 'Each tool call waits until you approve it; unanswered, it is denied.',
  off: 'No tool call runs; the agent is told so.',
};

const isState = (s: unknown): s is ApprovalState => typeof s === 'string' && (STATES as readonly string[]).includes(s);

/** A step's approval, if it has a well-formed one (the step is agent-made data). */
export function approvalOf(step: { approval?: unknown }): StepApproval | null {
  const a = step.approval as { id?: unknown; state?: unknown; reason?: unknown } | null | undefined;
  if (!a || typeof a !== 'object' || typeof a.id !== 'string' || !a.id || !isState(a.state)) return null;
  return { id: a.id, state: a.state, reason: typeof a.reason === 'string' && a.reason ? a.reason : null };
}

/** A state as shown: the host's, or `answered` when a 409 said it was decided but not how. */
export type ShownState = ApprovalState | 'answered';

/** What we learnt about an approval after its step was stored. */
export interface Learnt {
  state: ShownState;
  reason: string | null;
}

/**
 * The newer of what the step says and what we learnt since (our own answer, an
 * `approval.decided` event): a decided approval never becomes pending again, so a decided one wins.
 */
export function current(step: StepApproval, learnt: Learnt | undefined): { id: string; state: ShownState; reason: string | null } {
  if (step.state !== 'pending' || !learnt || learnt.state === 'pending') return step;
  return { id: step.id, state: learnt.state, reason: learnt.reason };
}

const SUMMARY_CHARS = 200;

function cut(text: string, max: number): string {
  const chars = [...text];
  return chars.length > max ? `${chars.slice(0, max).join('')}…` : text;
}

/**
 * What a call would do, in one short line, without the tool's name: a shell command as written
 * (an argv joined by spaces), a file tool's path, `GET <url>`, else the arguments as JSON. The
 * host's `summary` in `GET /api/approvals` words it the same way.
 */
export function callSummary(tool: string, args: unknown): string {
  const a = args && typeof args === 'object' && !Array.isArray(args) ? (args as Record<string, unknown>) : {};
  let text: string | null = null;
  if (tool === 'shell') {
    const c = a.command;
    if (typeof c === 'string') text = c;
    else if (Array.isArray(c)) text = c.map((x) => (typeof x === 'string' ? x : JSON.stringify(x))).join(' ');
  } else if (tool === 'read_file' || tool === 'write_file' || tool === 'list_dir') {
    text = typeof a.path === 'string' ? a.path : '.';
  } else if (tool === 'http_get' && typeof a.url === 'string') {
    text = `GET ${a.url}`;
  }
  return cut(text ?? JSON.stringify(args ?? {}), SUMMARY_CHARS);
}

/** The request as a sentence: "Helper wants to run shell: rm -r ~/logs/2024". */
export function requestText(agent: string, tool: string, args: unknown): string {
  return `${agent} wants to run ${tool}: ${callSummary(tool, args)}`;
}

/** The small label for an approval's state; a denial says why. */
export function stateLabel(a: { state: ShownState; reason: string | null }): string {
  switch (a.state) {
    case 'pending':
      return 'waiting for approval';
    case 'approved':
      return 'approved';
    case 'denied':
      return a.reason ? `denied: ${a.reason}` : 'denied';
    case 'expired':
      return 'expired: nobody answered in time';
    case 'cancelled':
      return 'cancelled';
    case 'answered':
      return 'already answered';
  }
}

/** What answering came to. */
export type Outcome =
  | { kind: 'decided'; state: ApprovalState; reason: string | null }
  /** Someone (or the clock) answered first; `state` when the host said which. */
  | { kind: 'already'; state: ApprovalState | null };

/**
 * Sends a person's answer. A 409 (already decided, expired or cancelled) is not a failure to show
 * as an error: the call is answered either way, so it comes back as `already`, with the state the
 * host named in its message ("this approval is already denied") when it did. Other failures throw.
 */
export async function decide(api: Api, id: string, decision: Decision): Promise<Outcome> {
  try {
    const a = await api.post('/api/approvals/{id}', { path: { id }, body: { decision } });
    return { kind: 'decided', state: a.state, reason: a.reason ?? null };
  } catch (e) {
    if (e instanceof HostError && e.status === 409) {
      const named = /already (\w+)/.exec(e.message)?.[1];
      return { kind: 'already', state: isState(named) ? named : null };
    }
    throw e;
  }
}
