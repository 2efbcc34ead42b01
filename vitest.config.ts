import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Builds dist/ once, before any file runs: the process tests spawn it.
    globalSetup: ['test/setup/build.ts'],
    testTimeout: 20_000,
    hookTimeout: 30_000,
    // Integration tests bind real sockets and spawn processes; two cores, so keep it modest.
    pool: 'forks',
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
  },
});
