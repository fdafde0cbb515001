// Launches the system's Chromium (Debian's package, /usr/bin/chromium, put
// there by scripts/bootstrap.sh chromium) through playwright-core, which
// downloads no browser of its own.
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';

const candidates = [process.env.CHROMIUM_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser'];

/// `userAgent` replaces the browser's own for every request, beacons sent
/// while a page unloads included (a context's override misses those).
export async function launch({ userAgent } = {}) {
  const executablePath = candidates.find((path) => path && existsSync(path));
  if (!executablePath) {
    throw new Error('Chromium is missing: run scripts/bootstrap.sh chromium');
  }
  return chromium.launch({
    executablePath,
    // No sandbox: CI runs as root. The rest keeps Chromium off the network.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ...(userAgent ? [`--user-agent=${userAgent}`] : [])],
  });
}
