import { describe, expect, it } from 'vitest';
import { nameProblem, previewSlug, slugify } from '../src/lib/slug';

describe('slugify follows the host', () => {
  it('matches the host unit test cases', () => {
    expect(slugify('Research Helper')).toBe('research-helper');
    expect(slugify('  Ünïcode!! Bot  ')).toBe('n-code-bot');
    expect(slugify('a--b__c')).toBe('a-b-c');
    expect(slugify('!!!')).toBe('');
    expect(slugify('x'.repeat(100)).length).toBe(54);
  });
  it('previews the collision suffix', () => {
    expect(previewSlug('Helper', [])).toBe('helper');
    expect(previewSlug('Helper', ['helper', 'helper-2'])).toBe('helper-3');
    expect(previewSlug('!!', ['x'])).toBe('');
  });
  it('explains bad names', () => {
    expect(nameProblem('')).toMatch(/name/);
    expect(nameProblem('!!!')).toMatch(/letter or digit/);
    expect(nameProblem('ok')).toBeNull();
  });
});
