import { defineConfig } from 'vitest/config';
import { svelte } from '@sveltejs/vite-plugin-svelte';

// The host embeds dist/ (host-service/build.rs) and serves it at `/` with a CSP that allows
// only this origin, so the build must not inline scripts or styles.
export default defineConfig({
  plugins: [svelte()],
  build: {
    target: 'es2022',
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
    cssCodeSplit: true,
  },
  server: {
    // `npm run dev` against a running host: TAOS_HOST=https://127.0.0.1:6969 npm run dev
    proxy: process.env.TAOS_HOST
      ? { '/api': { target: process.env.TAOS_HOST, secure: false, ws: true, changeOrigin: true } }
      : undefined,
  },
  test: {
    include: ['tests/**/*.test.ts'],
    environment: 'node',
  },
});
