#!/usr/bin/env node
// Writes migrations/SHA256SUMS: the loader refuses a packaged migration file whose bytes differ from it.
// Run after editing a migration: `node scripts/checksums.mjs` (test/engine/files.test.ts fails when stale).
import {createHash} from 'node:crypto'
import {readdirSync, readFileSync, writeFileSync} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'migrations')
const sha256 = (file) =>
  createHash('sha256')
    .update(readFileSync(path.join(dir, file)))
    .digest('hex')
const lines = readdirSync(dir)
  .filter((f) => f.endsWith('.sql'))
  .sort()
  .map((f) => `${sha256(f)}  ${f}`)
writeFileSync(path.join(dir, 'SHA256SUMS'), `${lines.join('\n')}\n`)
console.log(`wrote ${lines.length} checksums to migrations/SHA256SUMS`)
