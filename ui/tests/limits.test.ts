import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { DEFAULT_DISK_GIB, MAX_MESSAGE_CHARS, WARN_MESSAGE_CHARS, checkLength, countChars, counterText } from '../src/lib/limits';

describe('the message length limit', () => {
  it('is the host’s, as the OpenAPI document states it', () => {
    const doc = JSON.parse(readFileSync('../docs/openapi.json', 'utf8'));
    const schemas = doc.components.schemas;
    expect(schemas.NewMessage.properties.content.maxLength).toBe(MAX_MESSAGE_CHARS);
    expect(schemas.MessageEdit.properties.content.maxLength).toBe(MAX_MESSAGE_CHARS);
  });

  it('counts characters as Rust does, not UTF-16 units', () => {
    expect(countChars('abc')).toBe(3);
    expect(countChars('😀')).toBe(1);
    expect('😀'.length).toBe(2);
    expect(countChars('é😀x')).toBe(3);
    expect(countChars('\ud800')).toBe(1); // a lone surrogate is still one
  });

  it('warns near the limit and refuses past it, counting what would be sent', () => {
    expect(checkLength('hi')).toMatchObject({ near: false, over: false, problem: '' });
    const near = checkLength('x'.repeat(WARN_MESSAGE_CHARS));
    expect(near).toMatchObject({ near: true, over: false });
    expect(counterText(near)).toBe('28,800 / 32,000');
    expect(checkLength('x'.repeat(MAX_MESSAGE_CHARS)).over).toBe(false);
    expect(checkLength(`  ${'x'.repeat(MAX_MESSAGE_CHARS)}\n\n`).over).toBe(false);
    const over = checkLength('😀'.repeat(MAX_MESSAGE_CHARS + 5));
    expect(over.over).toBe(true);
    expect(over.problem).toBe('Too long to send: 5 characters over the 32,000 limit. Shorten it or split it into several messages.');
  });
});

describe('the deploy form', () => {
  it('labels the API’s own default disk quota', () => {
    const doc = JSON.parse(readFileSync('../docs/openapi.json', 'utf8'));
    expect(doc.components.schemas.DeployRequest.properties.disk_quota_gib.default).toBe(DEFAULT_DISK_GIB);
  });
});
