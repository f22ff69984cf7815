// The Hasura step writes metadata files in the layout of the project's own (nChat: backend/hasura/metadata,
// <table>.yaml files holding a one-element list, listed in tables.yaml). Hasura cannot run here: what is
// written is parsed back with the yaml library and checked against nChat's conventions and the migrated schema.
import {mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync} from 'node:fs'
import {tmpdir} from 'node:os'
import path from 'node:path'
import {afterEach, describe, expect, it} from 'vitest'
import {parse} from 'yaml'

import {removeHasuraMetadata, RECORD_FILE, syncHasuraMetadata, writeHasuraMetadata} from '../../src/hasura/metadata.js'
import {FUNCTIONS, TABLES} from '../../src/hasura/spec.js'
import {expectedAt, loadExpectedSchema} from '../../src/verify/expected.js'

// A project laid out like nChat's repository: two existing table files, each a one-element list.
const NCHAT_TABLES = `- "!include nchat_users.yaml"
- "!include nchat_messages.yaml"
`
const NCHAT_USERS = `# users
- table:
    schema: nchat
    name: nchat_users
  select_permissions:
    - role: user
      permission:
        columns: '*'
        filter: {}
`
const NCHAT_MESSAGES = `# messages: insert columns listed one by one
- table:
    schema: nchat
    name: nchat_messages
  insert_permissions:
    - role: user
      permission:
        columns:
          - channel_id
          - user_id
          - content
        check:
          user_id:
            _eq: X-Hasura-User-Id
  select_permissions:
    - role: user
      permission:
        columns: '*'
        filter: {}
`
const DATABASES = `- name: default
  kind: postgres
  configuration:
    connection_info:
      database_url:
        from_env: HASURA_GRAPHQL_DATABASE_URL
  tables: "!include default/tables/tables.yaml"
`

const dirs: string[] = []
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, {force: true, recursive: true})
})

function project(layout: 'nchat' | 'hasura'): {root: string; meta: string; tables: string} {
  const root = mkdtempSync(path.join(tmpdir(), 'e2ee-hasura-'))
  dirs.push(root)
  const meta = path.join(root, layout === 'nchat' ? 'backend/hasura/metadata' : 'hasura/metadata')
  const tables = path.join(meta, 'databases/default/tables')
  mkdirSync(tables, {recursive: true})
  writeFileSync(path.join(meta, 'databases/databases.yaml'), DATABASES)
  if (layout === 'nchat') {
    writeFileSync(path.join(tables, 'tables.yaml'), NCHAT_TABLES)
    writeFileSync(path.join(tables, 'nchat_users.yaml'), NCHAT_USERS)
    writeFileSync(path.join(tables, 'nchat_messages.yaml'), NCHAT_MESSAGES)
  } else {
    writeFileSync(path.join(tables, 'tables.yaml'), '- "!include public_nchat_users.yaml"\n')
    writeFileSync(path.join(tables, 'public_nchat_users.yaml'), 'table:\n  name: nchat_users\n  schema: public\n')
  }
  return {meta, root, tables}
}

const read = (f: string) => parse(readFileSync(f, 'utf8'))

describe('Hasura metadata step', () => {
  it("writes one file per table in nChat's layout, listed in tables.yaml, with role user, own-row filters, user_id presets and the user relationship", () => {
    const p = project('nchat')
    const r = writeHasuraMetadata(p.root, 'nchat')
    expect(r.dir).toBe(p.meta)
    expect(r.note).toMatch(/nself db hasura metadata apply/)
    const includes: string[] = read(path.join(p.tables, 'tables.yaml'))
    for (const t of TABLES) expect(includes).toContain(`!include ${t.name}.yaml`)
    expect(includes.filter((i) => i === '!include nchat_messages.yaml')).toHaveLength(1)

    const file = (t: string) => {
      const doc = read(path.join(p.tables, `${t}.yaml`))
      expect(Array.isArray(doc), `${t}.yaml is a one-element list like nChat's`).toBe(true)
      expect(doc).toHaveLength(1)
      return doc[0]
    }
    for (const t of TABLES) {
      const m = file(t.name)
      expect(m.table).toEqual({name: t.name, schema: 'nchat'})
      expect(m.select_permissions[0].role).toBe('user')
    }
    const keys = file('nchat_signed_prekeys')
    expect(keys.select_permissions[0].permission.filter).toEqual({user_id: {_eq: 'X-Hasura-User-Id'}})
    expect(keys.insert_permissions[0].permission.set).toEqual({user_id: 'X-Hasura-User-Id'})
    expect(keys.insert_permissions[0].permission.columns).not.toContain('user_id')
    const master = file('nchat_user_master_keys')
    expect(master.configuration.column_config.recovery_code_hash_bytes).toEqual({custom_name: 'recovery_code_hash'})
    const participants = file('nchat_call_participants')
    expect(participants.object_relationships).toContainEqual({name: 'user', using: {foreign_key_constraint_on: 'user_id'}})
    const calls = file('nchat_calls')
    expect(calls.array_relationships).toContainEqual({
      name: 'participants',
      using: {foreign_key_constraint_on: {column: 'call_id', table: {name: 'nchat_call_participants', schema: 'nchat'}}},
    })
    expect(file('nchat_streams').select_permissions[0].permission.filter).toEqual({broadcaster_id: {_eq: 'X-Hasura-User-Id'}})

    // nchat_messages keeps its own permissions and gains the encrypted message's columns.
    const messages = read(path.join(p.tables, 'nchat_messages.yaml'))[0]
    expect(messages.insert_permissions[0].permission.columns).toEqual([
      'channel_id',
      'user_id',
      'content',
      'is_encrypted',
      'encrypted_payload',
      'sender_device_id',
      'encryption_version',
    ])
    expect(readFileSync(path.join(p.tables, 'nchat_messages.yaml'), 'utf8')).toMatch(/^# messages: insert columns listed one by one/)

    // The claim function, exposed as a mutation, and the source includes its functions file.
    expect(read(path.join(p.meta, 'databases/default/functions/functions.yaml'))).toEqual(['!include nchat_nchat_claim_prekey_bundle.yaml'])
    expect(read(path.join(p.meta, 'databases/default/functions/nchat_nchat_claim_prekey_bundle.yaml'))).toEqual({
      configuration: {exposed_as: 'mutation'},
      function: {name: 'nchat_claim_prekey_bundle', schema: 'nchat'},
      permissions: [{role: 'user'}],
    })
    expect(read(path.join(p.meta, 'databases/databases.yaml'))[0].functions).toBe('!include default/functions/functions.yaml')
  })

  it('is idempotent, and removing gives back the project as it was', () => {
    const p = project('nchat')
    const before = {
      db: read(path.join(p.meta, 'databases/databases.yaml')),
      messages: read(path.join(p.tables, 'nchat_messages.yaml')),
      tables: read(path.join(p.tables, 'tables.yaml')),
    }
    writeHasuraMetadata(p.root, 'nchat')
    const once = readFileSync(path.join(p.tables, 'tables.yaml'), 'utf8')
    writeHasuraMetadata(p.root, 'nchat')
    expect(readFileSync(path.join(p.tables, 'tables.yaml'), 'utf8')).toBe(once)
    expect(read(path.join(p.tables, 'nchat_messages.yaml'))[0].insert_permissions[0].permission.columns).toHaveLength(7)

    removeHasuraMetadata(p.root)
    expect(read(path.join(p.tables, 'tables.yaml'))).toEqual(before.tables)
    expect(read(path.join(p.tables, 'nchat_messages.yaml'))).toEqual(before.messages)
    expect(read(path.join(p.meta, 'databases/databases.yaml'))).toEqual(before.db)
    for (const t of TABLES) expect(existsSync(path.join(p.tables, `${t.name}.yaml`)), t.name).toBe(false)
    expect(existsSync(path.join(p.meta, 'databases/default/functions'))).toBe(false)
    expect(existsSync(path.join(p.meta, RECORD_FILE))).toBe(false)
  })

  it("follows Hasura's own layout where the project uses it (schema-prefixed files holding a mapping), and a partial rollback keeps what still exists", () => {
    const p = project('hasura')
    writeHasuraMetadata(p.root, 'public')
    const m = read(path.join(p.tables, 'public_nchat_calls.yaml'))
    expect(Array.isArray(m)).toBe(false)
    expect(m.table).toEqual({name: 'nchat_calls', schema: 'public'})
    // down to 014: the call and stream tables are gone, the E2EE ones stay.
    const e2ee = new Set([
      'nchat_user_master_keys',
      'nchat_identity_keys',
      'nchat_signed_prekeys',
      'nchat_one_time_prekeys',
      'nchat_signal_sessions',
      'nchat_safety_numbers',
      'nchat_e2ee_audit_log',
      'nchat_prekey_bundles',
      'nchat_claim_prekey_bundle',
    ])
    syncHasuraMetadata(p.root, 'public', e2ee)
    const includes: string[] = read(path.join(p.tables, 'tables.yaml'))
    expect(includes).toContain('!include public_nchat_identity_keys.yaml')
    expect(includes).not.toContain('!include public_nchat_calls.yaml')
    expect(existsSync(path.join(p.tables, 'public_nchat_calls.yaml'))).toBe(false)
    expect(includes).toContain('!include public_nchat_users.yaml')
  })

  it('a project without Hasura metadata gets nothing written and a sentence saying so', () => {
    const root = mkdtempSync(path.join(tmpdir(), 'e2ee-hasura-none-'))
    dirs.push(root)
    const r = writeHasuraMetadata(root, 'public')
    expect(r.dir).toBeNull()
    expect(r.note).toMatch(/no Hasura metadata folder/)
  })

  it("every column, filter and relationship the metadata names exists in the schema 016 leaves (verify's reference)", () => {
    const expected = loadExpectedSchema()
    const columns = new Set(expected.objects.filter((o) => o.kind === 'column' && expectedAt(o, 16)?.def).map((o) => `${o.table}.${o.name}`))
    const relations = new Set(expected.objects.filter((o) => (o.kind === 'table' || o.kind === 'view') && expectedAt(o, 16)?.def).map((o) => o.name))
    const functions = expected.objects.filter((o) => o.kind === 'function').map((o) => o.name)
    for (const f of FUNCTIONS)
      expect(
        functions.some((n) => n.startsWith(`${f.name}(`)),
        f.name,
      ).toBe(true)
    const fieldsOf = (exp: unknown): string[] => {
      if (!exp || typeof exp !== 'object') return []
      return Object.entries(exp as Record<string, unknown>).flatMap(([k, v]) =>
        k === '_or' || k === '_and' ? (v as unknown[]).flatMap(fieldsOf) : k.startsWith('_') ? [] : [k],
      )
    }
    for (const t of TABLES) {
      expect(relations.has(t.name), t.name).toBe(true)
      const rels = new Set((t.relationships ?? []).map((r) => r.name))
      for (const p of [t.select, t.insert, t.update].filter(Boolean)) {
        if (p!.columns !== '*') for (const c of p!.columns) expect(columns.has(`${t.name}.${c}`), `${t.name}.${c}`).toBe(true)
        for (const c of Object.keys(p!.set ?? {})) expect(columns.has(`${t.name}.${c}`), `${t.name}.${c}`).toBe(true)
        for (const f of [...fieldsOf(p!.filter), ...fieldsOf(p!.check)]) expect(columns.has(`${t.name}.${f}`) || rels.has(f), `${t.name}: ${f}`).toBe(true)
      }
      for (const r of t.relationships ?? []) expect(columns.has(`${r.table ?? t.name}.${r.column}`), `${t.name}.${r.name}`).toBe(true)
      for (const c of Object.keys(t.graphqlNames ?? {})) expect(columns.has(`${t.name}.${c}`), `${t.name}.${c}`).toBe(true)
    }
  })
})
