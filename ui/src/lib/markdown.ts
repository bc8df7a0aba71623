// Chat messages as Markdown, safely.
//
// micromark turns Markdown into HTML and is safe by construction: raw HTML in a message is
// escaped, never passed through, and it writes only the elements Markdown has. (It is the
// CommonMark parser of the unified collective, small — about 20 KB gzipped here with the GFM
// parts — and needs no DOM.) GFM adds bare-URL links, tables, strikethrough and task lists;
// footnotes are left out (they would put ids into the page).
//
// A second pass over the result, in an inert <template>, keeps only what chat needs: links to
// http, https and mailto open in a new tab without access to this page (target=_blank,
// rel=noopener noreferrer); any other link becomes its text; images become links (the page's
// CSP would refuse to load them, and a message shouldn't make the browser fetch anything);
// every element and attribute not on the list below goes. The result has no inline styles or
// scripts, so the strict CSP (`default-src 'self'`, no 'unsafe-inline') stays as it is.
import { micromark } from 'micromark';
import { gfmAutolinkLiteral, gfmAutolinkLiteralHtml } from 'micromark-extension-gfm-autolink-literal';
import { gfmStrikethrough, gfmStrikethroughHtml } from 'micromark-extension-gfm-strikethrough';
import { gfmTable, gfmTableHtml } from 'micromark-extension-gfm-table';
import { gfmTaskListItem, gfmTaskListItemHtml } from 'micromark-extension-gfm-task-list-item';

/** Elements kept, with the attributes each may keep. */
const ALLOWED: Record<string, readonly string[]> = {
  p: [], br: [], hr: [], em: [], strong: [], del: [], code: ['class'], pre: [], blockquote: [],
  ul: [], ol: ['start'], li: [], a: ['href', 'target', 'rel'],
  h1: [], h2: [], h3: [], h4: [], h5: [], h6: [],
  table: [], thead: [], tbody: [], tr: [], th: ['align'], td: ['align'],
  input: ['type', 'checked', 'disabled'],
};
const PROTOCOLS = new Set(['http:', 'https:', 'mailto:']);

/** The link target if it is an absolute http, https or mailto URL, else null. */
export function safeHref(href: string | null): string | null {
  if (!href) return null;
  try {
    const url = new URL(href);
    return PROTOCOLS.has(url.protocol) ? url.href : null;
  } catch {
    return null; // relative, or not a URL
  }
}

/** micromark's HTML for `text`, before the second pass. */
export function markdownHtml(text: string): string {
  return micromark(text, {
    allowDangerousHtml: false,
    allowDangerousProtocol: false,
    extensions: [gfmAutolinkLiteral(), gfmStrikethrough(), gfmTable(), gfmTaskListItem()],
    htmlExtensions: [gfmAutolinkLiteralHtml(), gfmStrikethroughHtml(), gfmTableHtml(), gfmTaskListItemHtml()],
  });
}

function unwrap(el: Element) {
  el.replaceWith(...Array.from(el.childNodes));
}

function clean(root: DocumentFragment) {
  const doc = root.ownerDocument;
  for (const el of Array.from(root.querySelectorAll('*'))) {
    if (!root.contains(el)) continue; // went with a replaced ancestor
    const tag = el.localName;
    if (tag === 'img') {
      const alt = el.getAttribute('alt') || 'image';
      const href = safeHref(el.getAttribute('src'));
      if (href) {
        const a = doc.createElement('a');
        a.setAttribute('href', href);
        a.textContent = alt;
        el.replaceWith(a);
      } else {
        el.replaceWith(doc.createTextNode(alt));
      }
      continue;
    }
    const keep = ALLOWED[tag];
    if (!keep) {
      el.replaceWith(doc.createTextNode(el.textContent ?? ''));
      continue;
    }
    for (const attr of Array.from(el.attributes)) {
      if (!keep.includes(attr.name)) el.removeAttribute(attr.name);
    }
    if (tag === 'a') {
      const href = safeHref(el.getAttribute('href'));
      if (!href) {
        unwrap(el);
        continue;
      }
      el.setAttribute('href', href);
      el.setAttribute('target', '_blank');
      el.setAttribute('rel', 'noopener noreferrer');
    } else if (tag === 'code') {
      const cls = el.getAttribute('class');
      if (cls && !/^language-[\w+-]{1,32}$/.test(cls)) el.removeAttribute('class');
    } else if (tag === 'input') {
      if (el.getAttribute('type') !== 'checkbox') {
        el.remove();
        continue;
      }
      el.setAttribute('disabled', '');
    } else if (tag === 'th' || tag === 'td') {
      const align = el.getAttribute('align');
      if (align && !['left', 'right', 'center'].includes(align)) el.removeAttribute('align');
    } else if (tag === 'ol') {
      const start = el.getAttribute('start');
      if (start && !/^\d{1,9}$/.test(start)) el.removeAttribute('start');
    }
  }
}

/** A message's text as safe HTML, for `{@html}`. */
export function renderMarkdown(text: string, doc: Document = document): string {
  const template = doc.createElement('template');
  template.innerHTML = markdownHtml(text);
  clean(template.content);
  return template.innerHTML;
}

const cache = new Map<string, string>();

/** `renderMarkdown`, remembering recent results (rows re-render as the list scrolls). */
export function renderCached(text: string): string {
  let html = cache.get(text);
  if (html === undefined) {
    html = renderMarkdown(text);
    if (cache.size >= 500) cache.delete(cache.keys().next().value!);
    cache.set(text, html);
  }
  return html;
}
