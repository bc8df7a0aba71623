// Colours for charts from the page's theme (canvas can't read CSS variables itself), and a
// palette that reads on both the light and the dark background (Okabe–Ito, colour-blind safe).
export const PALETTE = ['#0072B2', '#E69F00', '#009E73', '#CC79A7', '#56B4E9', '#D55E00', '#F0E442', '#999999'];

export function color(i: number): string {
  return PALETTE[i % PALETTE.length];
}

export function themeColors() {
  const css = getComputedStyle(document.documentElement);
  const v = (name: string, fallback: string) => css.getPropertyValue(name).trim() || fallback;
  return { fg: v('--fg', '#1c2430'), muted: v('--muted', '#5b6675'), line: v('--line', '#d9dee5'), bad: v('--bad', '#c62828'), warn: v('--warn', '#875c00') };
}
