// The whole command on nChat's own documented v0.3.0 database (schema nchat, its update_updated_at_column()
// triggers, row-level security on its tables, public.schema_migrations version BIGINT + name), in an nself project
// that keeps Hasura metadata the way nChat does: migrate, verify on a database in use, a second migrate, both
// rollbacks. And a database that already has an nchat_calls of another shape: found, named, nothing changed.
import {mkdirSync, readFileSync, writeFileSync, existsSync} from 'node:fs'
import path from 'node:path'
import {describe, expect, it} from 'vitest'
import {parse} from 'yaml'

import {connect, dataDigest, V030_TABLES} from '../helpers/fixture.js'
import {appSchemaDump} from '../helpers/engine.js'
import {e2eScope, ledgerVersion, localArgs, makeProject, parseJson, runCli} from '../helpers/cli.js'

const scope = e2eScope()
const {backupDir, cleanups} = scope

/** An nself project with Hasura metadata in nChat's layout (backend/hasura/metadata, one-element lists). */
function nchatProject(): {dir: string; tables: string} {
  const p = makeProject({PROJECT_NAME: 'nchat'})
  cleanups.push(p.cleanup)
  const tables = path.join(p.dir, 'backend/hasura/metadata/databases/default/tables')
  mkdirSync(tables, {recursive: true})
  writeFileSync(
    path.join(p.dir, 'backend/hasura/metadata/databases/databases.yaml'),
    '- name: default\n  kind: postgres\n  tables: "!include default/tables/tables.yaml"\n',
  )
  writeFileSync(path.join(tables, 'tables.yaml'), '- "!include nchat_messages.yaml"\n')
  writeFileSync(
    path.join(tables, 'nchat_messages.yaml'),
    '- table:\n    schema: nchat\n    name: nchat_messages\n  insert_permissions:\n    - role: user\n      permission:\n        columns: [channel_id, user_id, content]\n        check: {}\n',
  )
  return {dir: p.dir, tables}
}

async function q<T>(db: string, text: string): Promise<T[]> {
  const sql = connect(db, {schema: 'nchat'})
  try {
    return (await sql.unsafe<T[]>(text)) as unknown as T[]
  } finally {
    await sql.end()
  }
}

describe("nChat's documented v0.3.0 database (schema nchat)", () => {
  it('migrates with its conventions, writes the Hasura metadata, verifies in use, migrates again, rolls back down to the same schema and data', async () => {
    const db = await scope.fresh({layout: 'reference', messages: 500, rls: true})
    const project = nchatProject()
    const dir = backupDir()
    const schema = await appSchemaDump(db.name)
    const data = await dataDigest(db.name, [...V030_TABLES], {schema: 'nchat'})
    const args = ['--project-dir', project.dir, ...localArgs(db.name), '--backup-dir', dir]

    const r = await runCli(['db', 'e2ee', 'migrate', '--yes', ...args])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/^Hasura {6}run `nself db hasura metadata apply` to expose the new tables to nChat$/m)
    expect(await ledgerVersion(db.name)).toBe(16)
    const includes: string[] = parse(readFileSync(path.join(project.tables, 'tables.yaml'), 'utf8'))
    expect(includes).toContain('!include nchat_calls.yaml')
    expect(parse(readFileSync(path.join(project.tables, 'nchat_messages.yaml'), 'utf8'))[0].insert_permissions[0].permission.columns).toContain(
      'encryption_version',
    )

    // The conventions of the database it joined.
    const rls = await q<{relname: string}>(
      db.name,
      `SELECT relname FROM pg_class WHERE relnamespace = 'nchat'::regnamespace AND relkind = 'r' AND relrowsecurity AND relname IN ('nchat_identity_keys', 'nchat_calls', 'nchat_streams') ORDER BY 1`,
    )
    expect(rls.map((x) => x.relname)).toEqual(['nchat_calls', 'nchat_identity_keys', 'nchat_streams'])
    const trg = await q<{tgname: string}>(
      db.name,
      `SELECT tgname FROM pg_trigger WHERE tgname IN ('update_nchat_calls_updated_at', 'update_nchat_signal_sessions_updated_at') ORDER BY 1`,
    )
    expect(trg.map((x) => x.tgname)).toEqual(['update_nchat_calls_updated_at', 'update_nchat_signal_sessions_updated_at'])

    // In use: keys uploaded, a prekey claimed, an encrypted message, an ended call.
    await q(
      db.name,
      `INSERT INTO nchat_identity_keys (device_id, user_id, identity_key_public, identity_key_private_encrypted, registration_id)
                      SELECT 'dev-1', id, '\\x01', '\\x02', 9 FROM nchat_users ORDER BY username LIMIT 1`,
    )
    await q(
      db.name,
      `INSERT INTO nchat_signed_prekeys (device_id, key_id, public_key, private_key_encrypted, signature, expires_at) VALUES ('dev-1', 1, '\\x03', '\\x04', '\\x05', now() + interval '7 days')`,
    )
    await q(db.name, `INSERT INTO nchat_one_time_prekeys (device_id, key_id, public_key, private_key_encrypted) VALUES ('dev-1', 1, '\\x06', '\\x07')`)
    await q(db.name, `SELECT * FROM nchat_claim_prekey_bundle('dev-1')`)
    await q(
      db.name,
      `UPDATE nchat_messages SET is_encrypted = true, encrypted_payload = '\\xbeef', sender_device_id = 'dev-1', encryption_version = 1 WHERE id IN (SELECT id FROM nchat_messages ORDER BY id LIMIT 3)`,
    )
    await q(
      db.name,
      `INSERT INTO nchat_calls (call_id, type, status, started_at, ended_at, duration) VALUES ('c', 'voice', 'ended', now() - interval '1 minute', now(), 60)`,
    )
    const [upd] = await q<{updated_at: Date; created_at: Date}>(db.name, `UPDATE nchat_calls SET duration = 61 RETURNING updated_at, created_at`)
    expect(upd.updated_at.getTime()).toBeGreaterThanOrEqual(upd.created_at.getTime())

    const v = await runCli(['db', 'e2ee', 'verify', '--json', ...localArgs(db.name)])
    expect(v.code, v.stdout + v.stderr).toBe(0)
    expect(parseJson(v.stdout).ok).toBe(true)
    const again = await runCli(['db', 'e2ee', 'migrate', '--yes', ...args])
    expect(again.code, again.stderr).toBe(0)

    // Using the database changed v0.3.0 rows too (updated_at of the messages it encrypted): down keeps those.
    const inUse = await dataDigest(db.name, [...V030_TABLES], {schema: 'nchat'})
    expect(inUse).not.toEqual(data)
    const down = await runCli(['db', 'e2ee', 'rollback', '--yes', '--strategy', 'down', '--json', ...args])
    expect(down.code, down.stderr).toBe(0)
    expect(parseJson(down.stdout)).toMatchObject({after: 12, strategy: 'down'})
    expect(await appSchemaDump(db.name)).toBe(schema)
    expect(await dataDigest(db.name, [...V030_TABLES], {schema: 'nchat'})).toEqual(inUse)
    // The metadata is back as the project had it.
    expect(parse(readFileSync(path.join(project.tables, 'tables.yaml'), 'utf8'))).toEqual(['!include nchat_messages.yaml'])
    expect(parse(readFileSync(path.join(project.tables, 'nchat_messages.yaml'), 'utf8'))[0].insert_permissions[0].permission.columns).toEqual([
      'channel_id',
      'user_id',
      'content',
    ])
    expect(existsSync(path.join(project.tables, 'nchat_calls.yaml'))).toBe(false)
  })

  it('rollback --strategy restore gives back the v0.3.0 schema and data', async () => {
    const db = await scope.fresh({layout: 'reference', messages: 500})
    const dir = backupDir()
    const schema = await appSchemaDump(db.name)
    const data = await dataDigest(db.name, [...V030_TABLES], {schema: 'nchat'})
    const m = await runCli(['db', 'e2ee', 'migrate', '--yes', '--skip-dryrun', ...localArgs(db.name), '--backup-dir', dir])
    expect(m.code, m.stderr).toBe(0)
    const r = await runCli(['db', 'e2ee', 'rollback', '--yes', '--json', ...localArgs(db.name), '--backup-dir', dir])
    expect(r.code, r.stderr).toBe(0)
    const s = parseJson(r.stdout)
    expect(s).toMatchObject({after: 12, strategy: 'restore'})
    cleanups.push(async () => {
      await q(db.name, 'SELECT 1').catch(() => {})
    })
    expect(await appSchemaDump(db.name)).toBe(schema)
    expect(await dataDigest(db.name, [...V030_TABLES], {schema: 'nchat'})).toEqual(data)
  })
})

describe('a table 013-016 create, already there in another shape', () => {
  it('is found by dryrun and migrate, named with the columns that differ, and nothing is changed', async () => {
    const db = await scope.fresh({messages: 100})
    const sql = connect(db.name)
    try {
      // The shape of nChat's later calls migration: initiator_id, no call_id.
      await sql.unsafe(`CREATE TABLE nchat_calls (id UUID PRIMARY KEY DEFAULT gen_random_uuid(), channel_id UUID, initiator_id UUID NOT NULL,
                          call_type TEXT NOT NULL, status TEXT NOT NULL, started_at TIMESTAMPTZ, ended_at TIMESTAMPTZ,
                          created_at TIMESTAMPTZ DEFAULT now(), updated_at TIMESTAMPTZ DEFAULT now())`)
    } finally {
      await sql.end()
    }
    const schema = await appSchemaDump(db.name)
    const dir = backupDir()
    for (const cmd of [['dryrun'], ['migrate', '--yes']]) {
      const r = await runCli(['db', 'e2ee', ...cmd, ...localArgs(db.name), '--backup-dir', dir])
      expect(r.code, `${cmd[0]}: ${r.stdout}${r.stderr}`).toBe(1)
      expect(r.stderr).toMatch(
        /nchat_calls exists already in another shape \(no column call_id, caller_id, duration, metadata, type; columns initiator_id, call_type that migration 15 does not make\)/,
      )
      expect(r.stderr).not.toMatch(/\n\s+at /)
    }
    expect(await appSchemaDump(db.name)).toBe(schema)
    expect(await ledgerVersion(db.name)).toBe(12)
  })
})
