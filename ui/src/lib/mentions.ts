/** The `@word` being typed just before the caret, if any. */
export function mentionAt(text: string, caret: number): { start: number; query: string } | null {
  const m = /(^|\s)@([a-z0-9-]*)$/i.exec(text.slice(0, caret));
  if (!m) return null;
  return { start: caret - m[2].length - 1, query: m[2].toLowerCase() };
}

/** Members matching a mention query: prefix matches first. */
export function suggest(members: string[], query: string, max = 6): string[] {
  const agents = members.filter((m) => !m.startsWith('user:'));
  const prefix = agents.filter((m) => m.startsWith(query));
  const inner = agents.filter((m) => !m.startsWith(query) && m.includes(query));
  return [...prefix, ...inner].slice(0, max);
}

/** Replaces the mention being typed with `@slug `; returns the text and the new caret. */
export function complete(text: string, caret: number, slug: string): { text: string; caret: number } {
  const at = mentionAt(text, caret);
  if (!at) return { text, caret };
  const before = text.slice(0, at.start);
  const insert = `@${slug} `;
  return { text: before + insert + text.slice(caret), caret: before.length + insert.length };
}
