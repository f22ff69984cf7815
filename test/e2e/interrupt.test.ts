import {readdirSync} from 'node:fs'
import path from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {connect, createV030Database, type V030Database} from '../helpers/fixture.js'
import {appSchemaDump} from '../helpers/engine.js'
import {ledgerVersion, leftoverDatabases, localArgs, runCli, tmpDir} from '../helpers/cli.js'

// Ctrl+C at each step of migrate: exit 130, production as it was, no clone, no partial backup, no session left.
describe('Ctrl+C during nself db e2ee migrate', () => {
  let db: V030Database
  let schemaBefore: string
  const dir = tmpDir()

  beforeAll(async () => {
    db = await createV030Database({messages: 300_000})
    schemaBefore = await appSchemaDump(db.name)
  })
  afterAll(async () => {
    for (const d of await leftoverDatabases(db.name, '%')) await connect('postgres').unsafe(`drop database if exists "${d}" with (force)`)
    await db.drop()
    dir.cleanup()
  })

  for (const step of ['Preflight', 'Backup', 'Dry run on a restored copy', 'Apply to production']) {
    it(`at "${step}"`, async () => {
      const backups = path.join(dir.dir, step.replaceAll(' ', '_'))
      const r = await runCli(['db', 'e2ee', 'migrate', '--yes', ...localArgs(db.name), '--backup-dir', backups], {
        interruptWhen: (out) => out.includes(`[STARTED] ${step}`),
      })
      expect(r.interrupted).toBe(true)
      expect(r.code, r.stdout + r.stderr).toBe(130)
      expect(r.stderr).toMatch(/Interrupted/)
      expect(r.stderr).not.toMatch(/\n\s+at .+:\d+:\d+/)
      expect(await ledgerVersion(db.name)).toBe(12)
      expect(await appSchemaDump(db.name)).toBe(schemaBefore)
      expect(await leftoverDatabases(db.name)).toEqual([])
      let files: string[] = []
      try { files = readdirSync(backups) } catch {}
      expect(files.filter((f) => f.endsWith('.partial'))).toEqual([])
      const sql = connect('postgres')
      try {
        // Sessions of the interrupted run (pg_dump/pg_restore children included) must be gone.
        let left = 1
        for (let i = 0; i < 20 && left > 0; i++) {
          ;[{left}] = await sql<{left: number}[]>`select count(*)::int as left from pg_stat_activity where application_name like 'nself-e2ee-%' and datname like ${db.name + '%'}`
          if (left > 0) await new Promise((res) => setTimeout(res, 250))
        }
        expect(left).toBe(0)
      } finally {
        await sql.end()
      }
    })
  }
})
