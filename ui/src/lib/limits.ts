// Limits the host enforces, checked here first so a message that can't be sent isn't.

/** The longest message, in characters: the host's `MAX_CONTENT_CHARS` (taos-proto), which the
 *  OpenAPI document states as `maxLength` (tests/limits.test.ts keeps the two equal). */
export const MAX_MESSAGE_CHARS = 32_000;

/** The counter shows from this many characters on. */
export const WARN_MESSAGE_CHARS = Math.floor(MAX_MESSAGE_CHARS * 0.9);

/** Characters as the host counts them (Unicode scalar values, Rust's `chars()`): an emoji
 *  outside the BMP is one, though it is two UTF-16 units in `length`. */
export function countChars(text: string): number {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    // A high surrogate followed by a low one is one character.
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) i++;
    }
    n++;
  }
  return n;
}

export interface LengthCheck {
  count: number;
  /** Show the counter. */
  near: boolean;
  /** Too long to send. */
  over: boolean;
  /** What to tell the writer when it is too long. */
  problem: string;
}

const fmt = (n: number) => n.toLocaleString('en');

/** How a draft (as it would be sent: trimmed) stands against the limit. */
export function checkLength(draft: string): LengthCheck {
  const count = countChars(draft.trim());
  const over = count > MAX_MESSAGE_CHARS;
  return {
    count,
    near: count >= WARN_MESSAGE_CHARS,
    over,
    problem: over
      ? `Too long to send: ${fmt(count - MAX_MESSAGE_CHARS)} characters over the ${fmt(MAX_MESSAGE_CHARS)} limit. Shorten it or split it into several messages.`
      : '',
  };
}

export const counterText = (c: LengthCheck) => `${fmt(c.count)} / ${fmt(MAX_MESSAGE_CHARS)}`;

/** A deployed agent's disk quota when the deploy names none, in GiB: the API's default for
 *  `disk_quota_gib` (tests/limits.test.ts keeps the two equal). The deploy form leaves the
 *  field empty, so the host's own default applies; this only labels it. */
export const DEFAULT_DISK_GIB = 40;
