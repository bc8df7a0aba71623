// @vitest-environment happy-dom
import { describe, expect, it } from 'vitest';
import { markdownHtml, renderMarkdown, safeHref } from '../src/lib/markdown';

const render = (text: string) => renderMarkdown(text, document);

/** Parses the rendered HTML the way the page would, to look at what it really contains. */
function dom(text: string): HTMLElement {
  const div = document.createElement('div');
  div.innerHTML = render(text);
  return div;
}

describe('markdown renders what chat needs', () => {
  it('code blocks, inline code, lists, emphasis, tables', () => {
    const html = render('Here:\n\n```js\nconst a = 1 < 2;\n```\n\n- one\n- **two**\n\n1. first\n\n`x` and ~~y~~\n\n| a | b |\n|:-|-:|\n| 1 | 2 |');
    expect(html).toContain('<pre><code class="language-js">const a = 1 &lt; 2;\n</code></pre>');
    expect(html).toContain('<ul>\n<li>one</li>\n<li><strong>two</strong></li>\n</ul>');
    expect(html).toContain('<ol>\n<li>first</li>\n</ol>');
    expect(html).toContain('<code>x</code> and <del>y</del>');
    expect(html).toContain('<td align="right">2</td>');
  });

  it('links open in a new tab without a handle on this page', () => {
    const a = dom('[docs](https://example.com/a?b=1) and https://bare.example and mail@example.com').querySelectorAll('a');
    expect(a.length).toBe(3);
    for (const link of a) {
      expect(link.getAttribute('target')).toBe('_blank');
      expect(link.getAttribute('rel')).toBe('noopener noreferrer');
    }
    expect(a[0].getAttribute('href')).toBe('https://example.com/a?b=1');
    expect(a[1].getAttribute('href')).toBe('https://bare.example/');
    expect(a[2].getAttribute('href')).toBe('mailto:mail@example.com');
  });
});

describe('markdown is safe', () => {
  const hostile = [
    '<script>alert(1)</script>',
    '<img src=x onerror=alert(1)>',
    '<svg onload=alert(1)>',
    '<iframe src="https://evil.example"></iframe>',
    '<a href="javascript:alert(1)">x</a>',
    '<div style="position:fixed">x</div>',
    '[x](javascript:alert(1))',
    '[x](JaVaScRiPt:alert(1))',
    '[x](java\tscript:alert(1))',
    '[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)',
    '[x](vbscript:msgbox(1))',
    '![x](javascript:alert(1))',
    '![x](https://tracker.example/pixel.png)',
    '[x](https://ok.example "title\\" onmouseover=\\"alert(1)")',
    '<https://ok.example/"onmouseover="alert(1)>',
    '`<script>alert(1)</script>`',
    '```\n</code></pre><script>alert(1)</script>\n```',
  ];

  it.each(hostile)('%s: no script, handler, style, frame or dangerous URL', (text) => {
    const el = dom(text);
    expect(el.querySelectorAll('script, iframe, svg, img, object, embed, style, div').length).toBe(0);
    for (const node of el.querySelectorAll('*')) {
      for (const attr of Array.from(node.attributes)) {
        expect(attr.name.startsWith('on')).toBe(false);
        expect(attr.name).not.toBe('style');
        expect(attr.name).not.toBe('src');
      }
    }
    for (const a of el.querySelectorAll('a')) {
      expect(['http:', 'https:', 'mailto:']).toContain(new URL(a.getAttribute('href')!).protocol);
    }
  });

  it('raw HTML is shown as text, not dropped', () => {
    const el = dom('<script>alert(1)</script> and <b>bold?</b>');
    expect(el.textContent).toContain('<script>alert(1)</script>');
    expect(el.textContent).toContain('<b>bold?</b>');
  });

  it('a javascript: link keeps its text and loses its link', () => {
    const el = dom('[click me](javascript:alert(1))');
    expect(el.querySelector('a')).toBeNull();
    expect(el.textContent).toBe('click me');
  });

  it('an image is a link to it, never loaded', () => {
    const el = dom('![a cat](https://example.com/cat.png)');
    expect(el.querySelector('img')).toBeNull();
    const a = el.querySelector('a')!;
    expect(a.getAttribute('href')).toBe('https://example.com/cat.png');
    expect(a.textContent).toBe('a cat');
  });

  it('relative and odd links are text', () => {
    for (const href of ['/api/agents', '#top', 'ftp://x.example', '//evil.example', 'mailto']) {
      expect(safeHref(href)).toBeNull();
    }
    expect(dom('[home](/agents)').querySelector('a')).toBeNull();
  });

  it('the parser itself never passes HTML through', () => {
    expect(markdownHtml('<b onclick="x()">hi</b>')).not.toContain('<b');
    expect(markdownHtml('<b onclick="x()">hi</b>')).toContain('&lt;b onclick=&quot;x()&quot;&gt;');
  });
});
