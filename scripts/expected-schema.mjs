#!/usr/bin/env node
// Regenerates src/migrations/expected-schema.json, the reference snapshot `nself db e2ee verify` compares a
// database with: a scratch database gets the v0.3.0 schema (test/fixtures/v030_schema.sql), then migrations
// 013..016 are applied one by one with the real runner and the catalogs are read after each; every object
// records the version that creates it.
//
//   npx tsc -p . && node scripts/expected-schema.mjs          write the file
//   npx tsc -p . && node scripts/expected-schema.mjs --check  exit 1 when the committed file is stale
//
// Connection: PGHOST (127.0.0.1), PGPORT (5432), PGUSER (postgres), PGPASSWORD. The user must be able to
// CREATE DATABASE; the scratch database is always dropped.
import {randomBytes} from 'node:crypto'
import {existsSync, readFileSync, writeFileSync} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'

import postgres from 'postgres'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const target = path.join(root, 'src', 'migrations', 'expected-schema.json')
const baselineFile = path.join(root, 'test', 'fixtures', 'v030_schema.sql')
const check = process.argv.includes('--check')

if (!existsSync(path.join(root, 'dist', 'steps', 'verify.js'))) {
  console.error('dist/ is missing: run `npx tsc -p .` first.')
  process.exit(2)
}
const {loadMigrations} = await import('../dist/migrations/files.js')
const {generateExpectedSchema, serializeExpectedSchema} = await import('../dist/verify/expected.js')

const conn = {
  host: process.env.PGHOST ?? '127.0.0.1',
  onnotice: () => {},
  password: process.env.PGPASSWORD,
  port: Number(process.env.PGPORT ?? 5432),
  user: process.env.PGUSER ?? 'postgres',
}
const scratch = `nself_e2ee_expected_${randomBytes(4).toString('hex')}`
const admin = postgres({...conn, database: 'postgres', max: 1})
let status = 0
try {
  await admin.unsafe(`create database "${scratch}"`)
  const sql = postgres({...conn, database: scratch, max: 4, prepare: false})
  try {
    await sql.unsafe(readFileSync(baselineFile, 'utf8'))
    const expected = await generateExpectedSchema({log: (l) => console.error(l), migrations: loadMigrations(), schema: 'public', sql})
    const text = serializeExpectedSchema(expected)
    const current = existsSync(target) ? readFileSync(target, 'utf8') : ''
    if (check) {
      if (current === text) console.error(`${path.relative(root, target)} is up to date (${expected.objects.length} objects).`)
      else {
        console.error(`${path.relative(root, target)} is stale: run \`node scripts/expected-schema.mjs\` and commit it.`)
        status = 1
      }
    } else if (current === text) {
      console.error(`${path.relative(root, target)} unchanged (${expected.objects.length} objects).`)
    } else {
      writeFileSync(target, text)
      console.error(`wrote ${path.relative(root, target)} (${expected.objects.length} objects); rebuild (npx tsc -p .) to ship it.`)
    }
  } finally {
    await sql.end({timeout: 5})
  }
} catch (error) {
  console.error(`expected-schema: ${error instanceof Error ? error.message : String(error)}`)
  status = 1
} finally {
  await admin.unsafe(`drop database if exists "${scratch}" with (force)`).catch(() => {})
  await admin.end({timeout: 5})
}
process.exit(status)
