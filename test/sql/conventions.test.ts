// Static checks of the migration files against the conventions the engine relies on.
import {readFileSync} from 'node:fs'
import {describe, expect, it} from 'vitest'
import {MIGRATIONS, migrationFile, splitMigration} from '../helpers/fixture.js'

const read = (f: string) => readFileSync(f, 'utf8')

/** The text without -- comments and without string literals (so words inside them do not count). */
function code(text: string): string {
  return text
    .split('\n')
    .map((l) => l.replace(/--.*$/, ''))
    .join('\n')
}

function comments(text: string): string[] {
  return text
    .split('\n')
    .map((l) => /--(.*)$/.exec(l)?.[1])
    .filter((c): c is string => c !== undefined)
}

const files = MIGRATIONS.flatMap((m) => [
  {version: m.version, direction: 'up' as const, path: migrationFile(m.version, 'up')},
  {version: m.version, direction: 'down' as const, path: migrationFile(m.version, 'down')},
])

describe('migration file conventions', () => {
  for (const f of files) {
    describe(`${f.version} ${f.direction}`, () => {
      const text = read(f.path)
      const body = code(text)

      it('has no transaction control, psql meta-commands or ledger writes', () => {
        expect(body).not.toMatch(/^\s*(BEGIN|COMMIT|ROLLBACK|START\s+TRANSACTION)\s*;/im)
        expect(body).not.toMatch(/^\s*\\/m)
        expect(body).not.toMatch(/schema_migrations/i)
      })

      it('has no schema-qualified names', () => {
        expect(body).not.toMatch(/\b(public|nchat)\.\w/i)
      })

      it('ends every statement with a semicolon', () => {
        expect(body.trim().endsWith(';')).toBe(true)
      })

      it('keeps comments free of quotes, semicolons, dollars and the tail keywords (naive splitters)', () => {
        for (const c of comments(text)) {
          expect(c).not.toMatch(/['";$]/)
          expect(c).not.toMatch(/CONCURRENTLY|VALIDATE\s+CONSTRAINT/i)
        }
      })

      if (f.direction === 'down') {
        it('is fully transactional', () => {
          expect(body).not.toMatch(/CONCURRENTLY|VALIDATE\s+CONSTRAINT/i)
        })
        it('drops only with IF EXISTS', () => {
          const drops = body.match(/\bDROP\s+(TABLE|VIEW|INDEX|FUNCTION|CONSTRAINT|COLUMN|TRIGGER|MATERIALIZED\s+VIEW)\b(?!\s+IF\s+EXISTS)/gi)
          expect(drops).toBeNull()
        })
      } else {
        it('puts the non-transactional statements last', () => {
          const {transactional, tail} = splitMigration(text)
          expect(code(transactional)).not.toMatch(/CONCURRENTLY|VALIDATE\s+CONSTRAINT/i)
          for (const s of tail) {
            expect(s).toMatch(/^(CREATE INDEX CONCURRENTLY IF NOT EXISTS|ALTER TABLE nchat_messages VALIDATE CONSTRAINT)/)
          }
          if (f.version === 14) {
            expect(tail).toHaveLength(4)
            expect(tail.slice(0, 3).map((s) => /IF NOT EXISTS (\w+)/.exec(s)?.[1])).toEqual([
              'idx_messages_encrypted',
              'idx_messages_sender_device',
              'idx_channels_enforce_encryption',
            ])
            expect(tail[3]).toBe('ALTER TABLE nchat_messages VALIDATE CONSTRAINT fk_messages_sender_device')
          } else {
            expect(tail).toHaveLength(0)
          }
        })

        it('creates only IF NOT EXISTS (or OR REPLACE)', () => {
          const bare = body.match(/\bCREATE\s+(?:UNIQUE\s+)?(?:TABLE|INDEX|SCHEMA|SEQUENCE)(?:\s+CONCURRENTLY)?(?!\s+(?:IF\s+NOT\s+EXISTS|CONCURRENTLY))/gi)
          expect(bare).toBeNull()
          expect(body).not.toMatch(/\bCREATE\s+(FUNCTION|VIEW|TRIGGER|MATERIALIZED)\b/i)
        })

        it('declares every function with SET search_path FROM CURRENT', () => {
          const fns = body.match(/CREATE\s+OR\s+REPLACE\s+FUNCTION[\s\S]*?\bAS\s+\$\$/gi) ?? []
          for (const fn of fns) expect(fn).toMatch(/SET\s+search_path\s+FROM\s+CURRENT/i)
        })
      }
    })
  }

  it('014: statements on nchat_messages / nchat_channels come at the end of the transactional part', () => {
    const {transactional} = splitMigration(read(migrationFile(14)))
    const body = code(transactional)
    const first = body.search(/ALTER TABLE nchat_(channels|messages)/)
    expect(first).toBeGreaterThan(0)
    const after = body.slice(first)
    // After the first ALTER of a big table: only ALTERs of big tables, the FK and INVALID-index DO blocks.
    expect(after).not.toMatch(/CREATE\s+(TABLE|INDEX|OR\s+REPLACE)/i)
    expect(after).not.toMatch(/DROP\s+(TABLE|VIEW|FUNCTION|TRIGGER|MATERIALIZED)/i)
  })

  it('013 and 014 create the seven tables with identical text', () => {
    const tables = (t: string) => t.slice(t.indexOf('CREATE TABLE IF NOT EXISTS nchat_user_master_keys'), t.lastIndexOf('idx_e2ee_audit_log_created_at'))
    const a = tables(read(migrationFile(13)))
    const b = tables(read(migrationFile(14)))
    expect(a.length).toBeGreaterThan(1000)
    expect(b).toBe(a)
  })
})
