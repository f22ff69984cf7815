// v0.3.0 databases of a given size, made once by the project's own generator (scripts/v030-fixture.mjs) and
// kept between benchmark runs as template databases, so a rerun costs a CREATE DATABASE … TEMPLATE (seconds).
//
// A cached template is named e2ee_benchcache_<messages> and carries a comment with the generator's hash (the
// schema file, the generator's source and the sizes): a template made by another version is dropped and made
// again. Only databases with that name AND a comment starting "nself-e2ee bench cache" are ever dropped here.
//
//   node bench/template-cache.js 100000 1000000 5000000     # make (or check) the templates
import {createHash} from 'node:crypto'
import {readFileSync} from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'
import postgres from 'postgres'

import {loadV030, V030_SCHEMA_FILE} from '../scripts/v030-fixture.mjs'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
export const ADMIN = {host: '127.0.0.1', port: 5432, user: 'postgres'}
export const CACHE_USERS = 10_000
export const CACHE_CHANNELS = 1_000
const COMMENT = 'nself-e2ee bench cache'

export function cacheName(messages) {
  return `e2ee_benchcache_${messages}`
}

function generatorHash(messages) {
  const h = createHash('sha256')
  h.update(readFileSync(V030_SCHEMA_FILE))
  h.update(readFileSync(path.join(ROOT, 'scripts', 'v030-fixture.mjs')))
  h.update(`${CACHE_USERS}/${CACHE_CHANNELS}/${messages}`)
  return h.digest('hex').slice(0, 16)
}

function admin(database = 'postgres') {
  return postgres({...ADMIN, database, max: 1, onnotice: () => {}, idle_timeout: 5, connection: {application_name: 'e2ee-bench-cache'}})
}

/** The template database holding `messages` messages; made when missing or made by another generator. */
export async function cachedTemplate(messages, log = (l) => process.stderr.write(`${l}\n`)) {
  const name = cacheName(messages)
  const want = `${COMMENT} ${generatorHash(messages)}`
  const sql = admin()
  try {
    const [row] = await sql`select shobj_description(oid, 'pg_database') as comment from pg_database where datname = ${name}`
    if (row && row.comment === want) return name
    if (row) {
      if (!String(row.comment ?? '').startsWith(COMMENT)) throw new Error(`${name} exists and is not a benchmark cache: not touched`)
      log(`${name} was made by another generator version: making it again`)
      await sql.unsafe(`DROP DATABASE "${name}" WITH (FORCE)`)
    }
    const t0 = performance.now()
    const building = `${name}_building`
    await sql.unsafe(`DROP DATABASE IF EXISTS "${building}" WITH (FORCE)`)
    await sql.unsafe(`CREATE DATABASE "${building}"`)
    const db = admin(building)
    try {
      await loadV030(db, {channels: CACHE_CHANNELS, messages, users: CACHE_USERS})
      await db.unsafe('VACUUM ANALYZE')
    } finally {
      await db.end({timeout: 2})
    }
    await sql.unsafe(`ALTER DATABASE "${building}" RENAME TO "${name}"`)
    await sql.unsafe(`COMMENT ON DATABASE "${name}" IS '${want}'`)
    log(`${name}: made in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
    return name
  } finally {
    await sql.end({timeout: 2})
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  for (const a of process.argv.slice(2)) await cachedTemplate(Number(a.replaceAll('_', '')))
}
