// The host's slug rule (host-service/src/agents.rs `slugify`), for the deploy wizard's live
// preview: lowercase ASCII letters and digits, runs of anything else become one `-`, at most
// 54 characters, then `-2`, `-3`… when taken.
const MAX_SLUG_LEN = 58;

export function slugify(name: string): string {
  let slug = '';
  let dash = false;
  for (const c of name.toLowerCase()) {
    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
      if (dash && slug.length > 0) slug += '-';
      dash = false;
      slug += c;
    } else {
      dash = true;
    }
  }
  return slug.slice(0, MAX_SLUG_LEN - 4).replace(/-+$/, '');
}

/** The slug the host will give `name`, given the slugs in use. */
export function previewSlug(name: string, taken: Iterable<string>): string {
  const base = slugify(name);
  if (!base) return '';
  const used = new Set(taken);
  if (!used.has(base)) return base;
  for (let n = 2; ; n++) if (!used.has(`${base}-${n}`)) return `${base}-${n}`;
}

/** Why a name cannot be deployed, or null. */
export function nameProblem(name: string): string | null {
  if (!name.trim()) return 'Give the agent a name.';
  if ([...name].length > 64) return 'At most 64 characters.';
  if (!slugify(name)) return 'The name needs a letter or digit (it becomes the agent\u2019s address).';
  return null;
}
