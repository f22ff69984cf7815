#!/usr/bin/env node
// Makes a v0.3.0 nChat database to try the plugin on (the README's first command):
//   node scripts/demo-db.mjs [NAME] [--messages N] [--schema public|nchat]
// Connects like the plugin: PGHOST/PGPORT/PGUSER/PGPASSWORD, default 127.0.0.1:5432 as postgres.
// Refuses to touch an existing database unless it is a demo database made by this script.
import postgres from 'postgres'

import {loadV030} from './v030-fixture.mjs'

const args = process.argv.slice(2)
const flag = (name, dflt) => {
  const i = args.indexOf(name)
  if (i === -1) return dflt
  const v = args[i + 1]
  args.splice(i, 2)
  return v
}
const messages = Number(flag('--messages', '20000'))
const schema = flag('--schema', 'public')
const name = args[0] ?? 'nchat_demo'
const MARK = 'nself-e2ee demo database (v0.3.0)'

function fail(message) {
  process.stderr.write(`Error: ${message}\n`)
  process.exit(1)
}
if (!/^[a-z_][a-z0-9_]{0,62}$/.test(name)) fail(`"${name}" is not a simple database name (lower-case letters, digits, _).`)
if (!['public', 'nchat'].includes(schema)) fail('--schema must be public or nchat.')
if (!Number.isInteger(messages) || messages < 0) fail('--messages must be a whole number.')

const conn = {
  host: process.env.PGHOST ?? '127.0.0.1',
  onnotice: () => {},
  password: process.env.PGPASSWORD,
  port: Number(process.env.PGPORT ?? 5432),
  user: process.env.PGUSER ?? 'postgres',
}
const admin = postgres({...conn, database: 'postgres', max: 1})
try {
  const [existing] = await admin`select shobj_description(oid, 'pg_database') as comment from pg_database where datname = ${name}`
  if (existing) {
    if (existing.comment !== MARK) fail(`database ${name} exists and was not made by this script; choose another name.`)
    await admin.unsafe(`drop database "${name}" with (force)`)
  }
  await admin.unsafe(`create database "${name}"`)
  await admin.unsafe(`comment on database "${name}" is '${MARK}'`)
} catch (error) {
  fail(`cannot create the demo database on ${conn.host}:${conn.port}: ${error.message}`)
} finally {
  await admin.end()
}

const sql = postgres({...conn, connection: {search_path: schema}, database: name, max: 1})
try {
  if (schema !== 'public') await sql.unsafe(`create schema ${schema}`)
  await loadV030(sql, {channels: 50, messages, users: 500})
} finally {
  await sql.end()
}
console.log(`Created ${name}: nChat v0.3.0 (schema ${schema}, schema_migrations 1-12, ${messages} messages).`)
