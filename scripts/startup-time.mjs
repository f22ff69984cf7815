#!/usr/bin/env node
// Start-up time of the plugin as nself runs it (the release tarball unpacked to <tmp>/.nself/plugins/nchat-upgrade,
// the executable copied to <tmp>/.nself/plugins/bin/) against running it from the repository (node bin/run.js).
// Each command is a `--help` (no database), run N times; prints min and median in ms.
// Usage: npm run release && node scripts/startup-time.mjs [N]
import {execFileSync, spawnSync} from 'node:child_process'
import {copyFileSync, chmodSync, mkdirSync, mkdtempSync, readdirSync, rmSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..')
const runs = Number(process.argv[2] ?? 15)
const tarball = readdirSync(path.join(root, 'release')).find((f) => f.endsWith('.tar.gz'))
if (!tarball) {
  process.stderr.write('No release tarball; run npm run release first.\n')
  process.exit(1)
}
const home = mkdtempSync(path.join(os.tmpdir(), 'e2ee-startup-'))
const pluginDir = path.join(home, '.nself', 'plugins', 'nchat-upgrade')
mkdirSync(pluginDir, {recursive: true})
mkdirSync(path.join(home, '.nself', 'plugins', 'bin'))
execFileSync('tar', ['-xzf', path.join(root, 'release', tarball), '-C', pluginDir])
const bin = path.join(home, '.nself', 'plugins', 'bin', 'nself-nchat-upgrade')
copyFileSync(path.join(pluginDir, 'bin', 'nself-nchat-upgrade'), bin)
chmodSync(bin, 0o755)

function time(argv) {
  const ms = []
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint()
    const r = spawnSync(argv[0], argv.slice(1), {cwd: home, encoding: 'utf8'})
    if (r.status !== 0) throw new Error(`${argv.join(' ')} exited ${r.status}: ${r.stderr}`)
    ms.push(Number(process.hrtime.bigint() - t0) / 1e6)
  }
  ms.sort((a, b) => a - b)
  return {median: ms[Math.floor(ms.length / 2)], min: ms[0]}
}

const cases = [
  ['node -e 0 (Node itself)', [process.execPath, '-e', '0']],
  ['installed: nself-nchat-upgrade --help', [bin, '--help']],
  ['installed: nself-nchat-upgrade migrate --help', [bin, 'migrate', '--help']],
  ['repository: node bin/run.js db e2ee migrate --help', [process.execPath, path.join(root, 'bin', 'run.js'), 'db', 'e2ee', 'migrate', '--help']],
]
process.stdout.write(`| command (${runs} runs each, ${os.cpus().length} cores, Node ${process.version}) | min ms | median ms |\n|---|---:|---:|\n`)
for (const [label, argv] of cases) {
  const t = time(argv)
  process.stdout.write(`| ${label} | ${t.min.toFixed(0)} | ${t.median.toFixed(0)} |\n`)
}
rmSync(home, {force: true, recursive: true})
