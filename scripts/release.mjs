#!/usr/bin/env node
// Builds the nself plugin tarball: release/nchat-upgrade-<version>.tar.gz (and its sha256 in
// release/SHA256SUMS), installable with `nself install <url> --checksum <sha256>`.
// The archive's root is the plugin folder as nself lays it out in ~/.nself/plugins/nchat-upgrade/: plugin.json,
// package.json, bin/nself-nchat-upgrade (the executable nself copies to ~/.nself/plugins/bin/), dist/, messages/, migrations/,
// oclif.manifest.json and the production dependencies in node_modules/, so it runs with Node 20 and nothing
// downloaded. nself's extractor refuses symlinks and links, so there are none (node_modules/.bin is left out).
// Run `npm run build` first (`npm run release` does).
import {execFileSync} from 'node:child_process'
import {createHash} from 'node:crypto'
import {chmodSync, cpSync, existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..')
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'))
const plugin = JSON.parse(readFileSync(path.join(root, 'plugin.json'), 'utf8'))
const outDir = path.resolve(process.argv[2] ?? path.join(root, 'release'))

function fail(message) {
  process.stderr.write(`release: ${message}\n`)
  process.exit(1)
}

if (plugin.version !== pkg.version) fail(`plugin.json is version ${plugin.version}, package.json ${pkg.version}; run npm run manifest`)
try {
  execFileSync(process.execPath, [path.join(root, 'scripts', 'plugin-manifest.mjs'), '--check'], {stdio: 'inherit'})
} catch {
  fail('plugin.json is out of date; run npm run manifest')
}
if (!existsSync(path.join(root, 'dist', 'nself', 'plugin-entry.js'))) fail('dist/ is missing; run npm run build')

const stage = path.join(outDir, 'stage')
const top = path.join(stage, plugin.name)
rmSync(stage, {force: true, recursive: true})
mkdirSync(top, {recursive: true})

// The package itself.
for (const entry of ['plugin.json', 'oclif.manifest.json', 'README.md', 'messages', 'migrations', 'dist']) {
  cpSync(path.join(root, entry), path.join(top, entry), {recursive: true})
}
rmSync(path.join(top, 'dist', 'tsconfig.tsbuildinfo'), {force: true})
mkdirSync(path.join(top, 'bin'))
cpSync(path.join(root, 'bin', plugin.binaryName), path.join(top, 'bin', plugin.binaryName))
chmodSync(path.join(top, 'bin', plugin.binaryName), 0o755)
const releasePkg = {...pkg, devDependencies: undefined, files: undefined, scripts: undefined}
writeFileSync(path.join(top, 'package.json'), `${JSON.stringify(releasePkg, null, 2)}\n`)

// Production dependencies exactly as the lock file resolved them (npm ls lists their folders).
const depDirs = execFileSync('npm', ['ls', '--omit=dev', '--all', '--parseable'], {cwd: root, encoding: 'utf8'})
  .split('\n')
  .map((l) => l.trim())
  .filter((l) => l && l !== root)
for (const dir of depDirs) {
  const rel = path.relative(root, dir)
  if (!rel.startsWith(`node_modules${path.sep}`)) fail(`unexpected dependency folder ${dir}`)
  cpSync(dir, path.join(top, rel), {
    dereference: false,
    filter: (src) => {
      const name = path.basename(src)
      if (name === '.bin') return false
      // A nested node_modules holds other packages, each copied on its own when npm ls lists it.
      if (src !== dir && name === 'node_modules' && path.dirname(src) === dir) return false
      return !lstatSync(src).isSymbolicLink()
    },
    recursive: true,
  })
}

// No symlinks anywhere (nself refuses the whole archive on one).
const walk = (dir) =>
  readdirSync(dir, {withFileTypes: true}).forEach((e) => {
    const p = path.join(dir, e.name)
    if (e.isSymbolicLink()) fail(`symlink in the package: ${p}`)
    if (e.isDirectory()) walk(p)
  })
walk(top)

const tarball = path.join(outDir, `${plugin.name}-${plugin.version}.tar.gz`)
rmSync(tarball, {force: true})
// Entries relative to the plugin folder (./plugin.json …), owner-neutral, sorted, so the archive is reproducible
// for the same inputs apart from gzip's header.
execFileSync('tar', ['--sort=name', '--owner=0', '--group=0', '--numeric-owner', '--mtime=@0', '-czf', tarball, '-C', top, '.'], {stdio: 'inherit'})
const sha256 = createHash('sha256').update(readFileSync(tarball)).digest('hex')
writeFileSync(path.join(outDir, 'SHA256SUMS'), `${sha256}  ${path.basename(tarball)}\n`)
rmSync(stage, {force: true, recursive: true})
process.stdout.write(`${tarball}\nsha256 ${sha256}\ninstall: nself install <https URL of ${path.basename(tarball)}> --checksum ${sha256}\n`)
