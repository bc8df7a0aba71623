import { describe, expect, it } from 'vitest';
import { complete, mentionAt, suggest } from '../src/lib/mentions';

describe('@ mentions', () => {
  it('finds the mention before the caret', () => {
    expect(mentionAt('hi @hel', 7)).toEqual({ start: 3, query: 'hel' });
    expect(mentionAt('@', 1)).toEqual({ start: 0, query: '' });
    expect(mentionAt('mail a@b', 8)).toBeNull();
    expect(mentionAt('hi @hel there', 13)).toBeNull();
  });
  it('suggests agents, prefix matches first, never people', () => {
    expect(suggest(['user:owner', 'web-helper', 'helper', 'other'], 'hel')).toEqual(['helper', 'web-helper']);
  });
  it('completes the mention and puts the caret after it', () => {
    expect(complete('ask @he now', 7, 'helper')).toEqual({ text: 'ask @helper  now', caret: 12 });
  });
});
