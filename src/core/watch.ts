import { watch, type FSWatcher } from 'node:fs';

/**
 * Calls `onChange` once a burst of changes in `dirs` has settled (`debounceMs`; a directory
 * that never settles still gets a call every 5 × `debounceMs`), for the entries named in
 * `names` only when given. Directories, not files: editors and renewal tools replace a
 * file (write aside, rename over), which a watch on the file itself stops seeing. Where the
 * filesystem cannot watch, nothing is called (SIGHUP remains). Returns the unwatch function.
 */
export function watchDirectories(
  dirs: Iterable<string>,
  onChange: () => void,
  options: { debounceMs: number; names?: ReadonlySet<string> },
): () => void {
  const { debounceMs, names } = options;
  let timer: NodeJS.Timeout | null = null;
  let since = 0; // when the pending burst began
  const fire = () => {
    timer = null;
    onChange();
  };
  const watchers: FSWatcher[] = [];
  for (const dir of new Set(dirs)) {
    try {
      const watcher = watch(dir, { persistent: false }, (_event, changed) => {
        if (names !== undefined && changed !== null && !names.has(changed)) return;
        const now = Date.now();
        if (timer === null) since = now;
        else if (now - since >= 5 * debounceMs)
          return; // busy: the pending call goes out as planned
        else clearTimeout(timer);
        timer = setTimeout(fire, debounceMs);
      });
      watcher.on('error', () => {});
      watchers.push(watcher);
    } catch {
      // No watch support on this filesystem.
    }
  }
  return () => {
    if (timer !== null) clearTimeout(timer);
    for (const watcher of watchers) watcher.close();
  };
}
