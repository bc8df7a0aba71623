import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  defaultValue,
  defaultVariables,
  fromTimeInput,
  missingVariables,
  renderPrompt,
  rfc3339,
  toTimeInput,
  variableKind,
} from '../src/lib/prompts';

/** A built-in prompt as the host compiles it in: front matter off, body trimmed (prompts.rs `parse`). */
function hostPrompt(name: string): { body: string; required: string[] } {
  const text = readFileSync(new URL(`../../host-service/prompts/${name}.md`, import.meta.url), 'utf8');
  const rest = text.slice('---\n'.length);
  const cut = rest.indexOf('\n---\n');
  const front = rest.slice(0, cut);
  const list = /^required_variables:\s*\[(.*)\]$/m.exec(front)?.[1] ?? '';
  const required = list.split(',').map((v) => v.trim()).filter(Boolean);
  return { body: rest.slice(cut + '\n---\n'.length).trim(), required };
}

describe('renderPrompt follows the host (prompts.rs render)', () => {
  it('fills weekly-summary as the host test does', () => {
    const weekly = hostPrompt('weekly-summary');
    expect(weekly.required).toEqual(['since']);
    const r = renderPrompt(weekly.body, weekly.required, { since: '2026-11-20T00:00:00Z' });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.text).toContain('since=2026-11-20T00:00:00Z');
    expect(r.text).toContain('Please summarise what you did since 2026-11-20T00:00:00Z.');
    expect(r.text).not.toContain('{{');
  });

  it('refuses missing or blank required variables, naming them', () => {
    const weekly = hostPrompt('weekly-summary');
    expect(renderPrompt(weekly.body, weekly.required, {})).toEqual({ ok: false, problem: 'missing variables: since' });
    expect(renderPrompt(weekly.body, weekly.required, { since: '   ' })).toEqual({ ok: false, problem: 'missing variables: since' });
    expect(missingVariables(['a', 'b', 'c'], { a: 'x', c: '' })).toEqual(['b', 'c']);
  });

  it('leaves a prompt without variables as its body', () => {
    for (const name of ['disk-audit', 'memory-audit', 'health-report']) {
      const p = hostPrompt(name);
      expect(p.required).toEqual([]);
      expect(renderPrompt(p.body, p.required, {})).toEqual({ ok: true, text: p.body });
    }
  });

  it('uses values as given, fills optional ones, keeps unknown placeholders, replaces every occurrence', () => {
    const body = '{{a}} and {{a}}, {{b}}, {{unknown}}, {{ a }}';
    expect(renderPrompt(body, ['a'], { a: ' x ', b: 'y' })).toEqual({ ok: true, text: ' x  and  x , y, {{unknown}}, {{ a }}' });
  });

  it('substitutes in name order, like the host BTreeMap', () => {
    // "a" goes first, so a placeholder its value brings in is filled by "b" afterwards; the
    // value of "b" is never looked at again for "a".
    expect(renderPrompt('{{a}} {{b}}', [], { b: '{{a}}', a: '{{b}}' })).toEqual({ ok: true, text: '{{a}} {{a}}' });
    expect(renderPrompt('{{b}}', [], { b: '{{a}}', a: 'A' })).toEqual({ ok: true, text: '{{a}}' });
  });
});

describe('variable defaults', () => {
  const now = new Date('2026-12-05T21:51:07.123Z');

  it('since starts a week back, in RFC 3339 UTC to the second', () => {
    expect(defaultValue('since', now)).toBe('2026-11-28T21:51:07Z');
    expect(defaultVariables(['since'], now)).toEqual({ since: '2026-11-28T21:51:07Z' });
    expect(defaultVariables(['since', 'topic'], now)).toEqual({ since: '2026-11-28T21:51:07Z', topic: '' });
    expect(rfc3339(now)).toBe('2026-12-05T21:51:07Z');
  });

  it('the default fills weekly-summary into text the host would send', () => {
    const weekly = hostPrompt('weekly-summary');
    const r = renderPrompt(weekly.body, weekly.required, defaultVariables(weekly.required, now));
    expect(r).toEqual({ ok: true, text: weekly.body.replaceAll('{{since}}', '2026-11-28T21:51:07Z') });
  });

  it('asks for moments with a UTC time input and for the rest with text', () => {
    expect(variableKind('since')).toBe('time');
    expect(variableKind('until')).toBe('time');
    expect(variableKind('started_at')).toBe('time');
    expect(variableKind('topic')).toBe('text');
  });

  it('converts between the time input and RFC 3339 UTC without a time zone', () => {
    expect(toTimeInput('2026-11-28T21:51:07Z')).toBe('2026-11-28T21:51:07');
    expect(toTimeInput('2026-11-28T21:51:07.5Z')).toBe('2026-11-28T21:51:07');
    expect(toTimeInput('2026-11-28T21:51:07+01:00')).toBe('');
    expect(toTimeInput('')).toBe('');
    expect(fromTimeInput('2026-11-28T21:51:07')).toBe('2026-11-28T21:51:07Z');
    expect(fromTimeInput('2026-11-28T21:51')).toBe('2026-11-28T21:51:00Z');
    expect(fromTimeInput('')).toBe('');
    expect(fromTimeInput('2026-02-30T10:00')).toBe('');
    expect(fromTimeInput('yesterday')).toBe('');
    expect(fromTimeInput(toTimeInput(defaultValue('since', now)))).toBe('2026-11-28T21:51:07Z');
  });
});
