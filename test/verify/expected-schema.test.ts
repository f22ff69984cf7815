// The committed reference snapshot (src/migrations/expected-schema.json) must be what the migrations produce
// now: regenerate it from a fresh v0.3.0 database and compare. When this fails, run
// `npx tsc -p . && node scripts/expected-schema.mjs` and commit the file.
import {readFile} from 'node:fs/promises'
import path from 'node:path'

import {describe, expect, it} from 'vitest'

import {loadMigrations} from '../../src/migrations/files.js'
import {expectedAt, type ExpectedSchema, generateExpectedSchema, serializeExpectedSchema} from '../../src/verify/expected.js'
import {createV030Database, REPO_ROOT} from '../helpers/fixture.js'
import {pool, T} from './_db.js'

const FILE = path.join(REPO_ROOT, 'src', 'migrations', 'expected-schema.json')

describe('expected-schema.json', () => {
  it(
    'is not stale: regenerating it from the migrations gives the committed file',
    async () => {
      const db = await createV030Database({messages: 0})
      const sql = pool(db.name)
      try {
        const fresh = await generateExpectedSchema({migrations: loadMigrations(), schema: db.schema, sql})
        const committed = JSON.parse(await readFile(FILE, 'utf8')) as ExpectedSchema
        // Object by object first, for a readable diff.
        expect(
          committed.objects.map((o) => o.key),
          'run `node scripts/expected-schema.mjs`',
        ).toEqual(fresh.objects.map((o) => o.key))
        expect(committed, 'run `node scripts/expected-schema.mjs`').toEqual(JSON.parse(serializeExpectedSchema(fresh)))
        expect(await readFile(FILE, 'utf8')).toBe(serializeExpectedSchema(fresh))
      } finally {
        await sql.end({timeout: 5})
        await db.drop()
      }
    },
    T,
  )

  it('records the version that creates each object, without schema names', async () => {
    const s = JSON.parse(await readFile(FILE, 'utf8')) as ExpectedSchema
    const get = (key: string) => s.objects.find((o) => o.key === key)
    expect(s.migrations).toEqual({13: '013_e2ee_system', 14: '014_e2ee_system', 15: '015_voice_calls', 16: '016_live_streaming'})
    expect(get('rel:nchat_identity_keys')?.since).toBe(13)
    expect(get('rel:nchat_prekey_bundles')).toMatchObject({kind: 'view', since: 14})
    expect(get('function:nchat_claim_prekey_bundle(text)')?.since).toBe(14)
    expect(get('index:idx_messages_encrypted')).toMatchObject({since: 14, table: 'nchat_messages'})
    expect(get('constraint:nchat_messages.fk_messages_sender_device')?.def).toMatchObject({references: {onDelete: 'SET NULL', table: 'nchat_identity_keys'}})
    expect(get('rel:nchat_calls')?.since).toBe(15)
    expect(get('rel:nchat_streams')?.since).toBe(16)
    expect(s.objects.some((o) => o.key.includes('schema_migrations'))).toBe(false)
    expect(JSON.stringify(s)).not.toMatch(/public\./)
    const view = get('rel:nchat_prekey_bundles')!
    expect(expectedAt(view, 13)).toBeUndefined()
    expect(expectedAt(view, 14)?.version).toBe(14)
  })
})
