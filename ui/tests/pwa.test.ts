import { describe, expect, it } from 'vitest';
import { explain } from '../src/lib/pwa.svelte';

describe('why offline reading is off', () => {
  it("names the host's certificate when the browser refused the worker for it", () => {
    const e = new DOMException(
      "Failed to register a ServiceWorker for scope ('https://127.0.0.1:6969/'): An SSL certificate error occurred when fetching the script.",
      'SecurityError',
    );
    const r = explain(e, true);
    expect(r.certificate).toBe(true);
    expect(r.reason).toMatch(/does not trust the host's certificate/);
  });

  it('says a page that is not a secure context keeps nothing, with the certificate as the way out', () => {
    const r = explain(new Error('whatever'), false);
    expect(r.certificate).toBe(true);
    expect(r.reason).toMatch(/not a secure context/);
  });

  it("passes any other refusal on in the browser's words", () => {
    const r = explain(new TypeError('Failed to fetch the script: 404'), true);
    expect(r.certificate).toBe(false);
    expect(r.reason).toContain('TypeError: Failed to fetch the script: 404');
  });
});
