import {createHash} from 'node:crypto'
import {readdirSync, readFileSync} from 'node:fs'
import path from 'node:path'
import {describe, expect, it} from 'vitest'

import {CHECKSUM_FILE, loadMigrations, readChecksumList} from '../../src/migrations/files.js'
import {classify, parseStatements, referencedTables, splitStatements} from '../../src/migrations/statements.js'
import {resolveTarget} from '../../src/connection/target.js'
import {MIGRATIONS_DIR} from '../helpers/fixture.js'
import {makeProject} from '../helpers/cli.js'

describe('packaged migrations', () => {
  it('SHA256SUMS matches every file (run `node scripts/checksums.mjs` after editing one)', () => {
    const sums = readChecksumList(MIGRATIONS_DIR)!
    const files = readdirSync(MIGRATIONS_DIR)
      .filter((f) => f.endsWith('.sql'))
      .sort()
    expect([...sums.keys()].sort()).toEqual(files)
    for (const f of files)
      expect(sums.get(f), f).toBe(
        createHash('sha256')
          .update(readFileSync(path.join(MIGRATIONS_DIR, f)))
          .digest('hex'),
      )
    expect(CHECKSUM_FILE).toBe('SHA256SUMS')
  })

  it('loads 013-016 with their down files, the non-transactional statements last', () => {
    const ms = loadMigrations(MIGRATIONS_DIR)
    expect(ms.map((m) => m.name)).toEqual(['013_e2ee_system', '014_e2ee_system', '015_voice_calls', '016_live_streaming'])
    const alone = ms[1].statements.filter((s) => s.mode !== 'transaction').map((s) => s.summary)
    expect(alone).toEqual([
      expect.stringMatching(/CONCURRENTLY IF NOT EXISTS idx_messages_encrypted/),
      expect.stringMatching(/CONCURRENTLY IF NOT EXISTS idx_messages_sender_device/),
      expect.stringMatching(/CONCURRENTLY IF NOT EXISTS idx_channels_enforce_encryption/),
      expect.stringMatching(/VALIDATE CONSTRAINT fk_messages_sender_device/),
    ])
    for (const m of ms) expect(m.down.statements.every((s) => s.mode === 'transaction')).toBe(true)
  })
})

describe('statement splitter', () => {
  it('splits on semicolons outside strings, identifiers, comments and dollar quotes', () => {
    const sql = `-- header; not a statement
CREATE TABLE "a;b" (x text DEFAULT 'it''s; fine');
/* block; /* nested; */ still comment */
DO $$ BEGIN PERFORM 1; END $$;
CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $body$ SELECT 1; $body$;
SELECT E'back\\'slash;';
SELECT 1`
    const parts = splitStatements(sql)
    expect(parts.map((p) => p.line)).toEqual([2, 4, 5, 6, 7])
    expect(parts[1].sql).toBe('DO $$ BEGIN PERFORM 1; END $$;')
    expect(parts[4].sql).toBe('SELECT 1')
  })

  it('refuses an unterminated dollar quote with its line', () => {
    expect(() => splitStatements('SELECT 1;\nDO $$ BEGIN')).toThrow(/unterminated \$\$ quote at line 2/)
  })

  it('classifies what must run alone', () => {
    expect(classify('CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t(x)')).toBe('concurrent')
    expect(classify('-- c\ncreate unique index concurrently i on t(x)')).toBe('concurrent')
    expect(classify('ALTER TABLE nchat_messages VALIDATE CONSTRAINT fk')).toBe('validate')
    expect(classify('CREATE INDEX i ON t(x)')).toBe('transaction')
    expect(parseStatements("COMMENT ON TABLE t IS 'CONCURRENTLY'")[0].mode).toBe('transaction')
  })

  it('finds the existing tables a statement locks', () => {
    expect(
      referencedTables(
        'ALTER TABLE nchat_messages ADD CONSTRAINT fk FOREIGN KEY (d) REFERENCES nchat_identity_keys(device_id) ON DELETE SET NULL NOT VALID',
      ).sort(),
    ).toEqual(['nchat_identity_keys', 'nchat_messages'])
    expect(referencedTables('CREATE INDEX IF NOT EXISTS i ON nchat_channels(x)')).toEqual(['nchat_channels'])
  })
})

describe('nself env files and precedence', () => {
  it('flags beat env files, which beat PG* variables; a docker network host means the published port', () => {
    const p = makeProject({POSTGRES_DB: 'nchat', POSTGRES_HOST: 'postgres', POSTGRES_PORT: '5433', POSTGRES_USER: 'app', PROJECT_NAME: 'nchat'})
    try {
      const t = resolveTarget({database: 'other', projectDir: p.dir}, {PGPORT: '6000', PGUSER: 'pguser'})
      expect(t.conn).toMatchObject({database: 'other', host: '127.0.0.1', port: 5433, user: 'app'})
      expect(t.sources.database).toBe('flag --database')
      expect(t.sources.port).toMatch(/\.env$/)
      expect(t.sources.host).toMatch(/docker network name/)
      expect(t.containerCandidates).toEqual(['nchat_postgres', 'nself-postgres'])
      expect(() => resolveTarget({database: 'x"y', projectDir: p.dir})).toThrow(/not a valid PostgreSQL identifier/)
      expect(() => resolveTarget({container: 'a b', projectDir: p.dir})).toThrow(/not a valid docker container name/)
    } finally {
      p.cleanup()
    }
  })
})
