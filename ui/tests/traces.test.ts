import { describe, expect, it } from 'vitest';
import type { TraceEvent } from '../src/lib/api/types';
import { llmContent, localToRfc3339 } from '../src/lib/traces';

const call = (payload: Record<string, unknown>): TraceEvent => ({
  id: 'x',
  created_at: '2026-01-02T10:00:00Z',
  agent_name: 'a',
  kind: 'llm_call',
  payload: payload as TraceEvent['payload'],
});

describe('traces', () => {
  it('turns a local time into RFC 3339', () => {
    expect(localToRfc3339('')).toBeUndefined();
    expect(localToRfc3339('2026-01-02T03:04')).toBe(new Date('2026-01-02T03:04').toISOString());
  });

  it('reads the prompt and reply of an llm_call', () => {
    const c = llmContent(
      call({
        messages: JSON.stringify([
          { role: 'system', content: 'Be brief.' },
          { role: 'user', content: [{ type: 'text', text: 'hello' }, { type: 'image_url' }] },
        ]),
        response: 'Hi.',
      }),
    );
    expect(c?.messages).toEqual([
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'hello\n[image_url]' },
    ]);
    expect(c?.reply).toBe('Hi.');
    expect(c?.truncated).toBe(false);
  });

  it('shows a prompt the host cut short as text, and says it was cut', () => {
    const c = llmContent(call({ messages: '[{"role":"user","content":"a very long que…', response: '' }));
    expect(c?.messages).toBeNull();
    expect(c?.prompt).toContain('a very long que');
    expect(c?.truncated).toBe(true);
  });

  it('is only for llm_call events', () => {
    expect(llmContent({ ...call({}), kind: 'message_in' })).toBeNull();
  });
});
