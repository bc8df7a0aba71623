import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

// src/lib/api/schema.d.ts is generated from the host's committed OpenAPI document; the host
// fails its own test when that document is stale, and this fails when the types are.
describe('generated API types', () => {
  it('match docs/openapi.json (run `npm run gen:api` if not)', () => {
    const out = join(mkdtempSync(join(tmpdir(), 'taos-api-')), 'schema.d.ts');
    execFileSync(
      process.execPath,
      ['node_modules/openapi-typescript/bin/cli.js', '../docs/openapi.json', '-o', out],
      { stdio: 'pipe' },
    );
    expect(readFileSync('src/lib/api/schema.d.ts', 'utf8')).toBe(readFileSync(out, 'utf8'));
  }, 30_000);
});
