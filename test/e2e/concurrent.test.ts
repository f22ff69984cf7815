import {readdirSync} from 'node:fs'
import path from 'node:path'
import {describe, expect, it} from 'vitest'
import {SIDECAR_DIR} from '../../src/archive/manifest.js'

import {connect} from '../helpers/fixture.js'
import {e2eScope, ledgerVersion, leftoverDatabases, localArgs, parseJson, runCli, startCli} from '../helpers/cli.js'

// Two commands at once, and what interrupted commands leave behind (issue 9, defects 4-6). Fault points are
// reached through the test-only NSELF_E2EE_TEST_PAUSE hook (src/test-pause.ts): a command stops there and says
// so, and the test starts the second command, or kills the first with SIGKILL, at exactly that moment.

const T = 300_000
const scope = e2eScope()
const {backupDir, cleanups} = scope

/** `node bin/run.js args…` in the background; `pause` names a fault point it stops at until resume(). */
const start = (args: string[], pause?: string) => startCli(args, {cleanups, pause, timeoutMs: T})

const cli = (command: string, db: string, dir: string, extra: string[] = []) => [
  'db',
  'e2ee',
  command,
  '--yes',
  ...localArgs(db),
  '--backup-dir',
  dir,
  ...extra,
]

async function tables(db: string, like: string): Promise<string[]> {
  const sql = connect(db)
  try {
    return (await sql<{t: string}[]>`select tablename as t from pg_tables where tablename like ${like} order by 1`).map((r) => r.t)
  } finally {
    await sql.end()
  }
}

async function keptCopies(db: string): Promise<string[]> {
  return leftoverDatabases(db, 'pre\\_rollback')
}

const HOLDER = (command: string, db: string) =>
  new RegExp(
    `Another command \\(nself db e2ee ${command}, pid \\d+, running since \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d UTC\\) is changing the database "${db}"; waited \\d+ s for it to finish\\.`,
  )

describe('two commands on one database at once', () => {
  it(
    'migrate waiting behind a long reader + rollback: the rollback refuses, or waits and then rolls back; no migration lands on a swapped-in database',
    async () => {
      const db = await scope.fresh({messages: 3000})
      const dir = backupDir()
      // At 13, with a pre-migration backup at 12 for the rollback to restore.
      const first = await runCli(cli('migrate', db.name, dir, ['--to', '13', '--skip-dryrun']))
      expect(first.code, first.stderr).toBe(0)
      const at12 = path.join(dir, readdirSync(dir).find((f) => f.endsWith('.dump'))!)

      const reader = connect(db.name)
      let release!: () => void
      const released = new Promise<void>((r) => {
        release = r
      })
      const reading = reader.begin(async (tx) => {
        await tx`select count(*) from nchat_messages`
        await released
      })
      try {
        const migrate = start(cli('migrate', db.name, dir, ['--skip-dryrun', '--max-lock-wait', '240']))
        await migrate.waitFor('waiting, without taking any lock')

        const refused = await runCli(cli('rollback', db.name, dir, ['--lock-wait', '1', '--backup', at12]))
        expect(refused.code, refused.stderr).toBe(1)
        expect(refused.stderr).toMatch(HOLDER('migrate', db.name))
        expect(await keptCopies(db.name)).toEqual([])

        const waiting = start(cli('rollback', db.name, dir, ['--lock-wait', '240', '--json', '--backup', at12]))
        await waiting.waitFor('Waiting for another command (nself db e2ee migrate')
        release()
        await reading
        const m = await migrate.done
        expect(m.code, m.stderr).toBe(0)
        const r = await waiting.done
        expect(r.code, r.stderr).toBe(0)
        const summary = parseJson(r.stdout)
        expect(summary).toMatchObject({after: 12, before: 16, ok: true})
        // The rollback replaced the database at 16 by the backup at 12; the migrate's work is kept beside it.
        expect(await ledgerVersion(db.name)).toBe(12)
        expect(await tables(db.name, 'nchat\\_%key%')).toEqual([])
        expect(await keptCopies(db.name)).toEqual([summary.kept.database])
        expect(await ledgerVersion(summary.kept.database)).toBe(16)
        expect(await leftoverDatabases(db.name)).toEqual([])
      } finally {
        release()
        await reading.catch(() => {})
        await reader.end()
      }
    },
    T,
  )

  it(
    "dryrun + migrate: the migrate waits for the dry run's clone work, then refuses naming it",
    async () => {
      const db = await scope.fresh({messages: 3000})
      const dir = backupDir()
      const dry = start(cli('dryrun', db.name, dir), 'dryrun:clone-restored')
      await dry.waitFor('[test-pause] dryrun:clone-restored')
      const m = await runCli(cli('migrate', db.name, dir, ['--lock-wait', '1', '--skip-dryrun']))
      expect(m.code, m.stderr).toBe(1)
      expect(m.stderr).toMatch(HOLDER('dryrun', db.name))
      expect(await ledgerVersion(db.name)).toBe(12)
      dry.resume()
      const d = await dry.done
      expect(d.code, d.stderr).toBe(0)
      expect(await leftoverDatabases(db.name)).toEqual([])
      expect(await ledgerVersion(db.name)).toBe(12)
    },
    T,
  )

  it(
    'rollback + rollback: the second refuses while the first is about to swap; one swap happens',
    async () => {
      const db = await scope.fresh({messages: 3000})
      const dir = backupDir()
      const m = await runCli(cli('migrate', db.name, dir, ['--skip-dryrun']))
      expect(m.code, m.stderr).toBe(0)
      const a = start(cli('rollback', db.name, dir), 'rollback:before-swap')
      await a.waitFor('[test-pause] rollback:before-swap')
      const b = await runCli(cli('rollback', db.name, dir, ['--lock-wait', '1']))
      expect(b.code, b.stderr).toBe(1)
      expect(b.stderr).toMatch(HOLDER('rollback', db.name))
      a.resume()
      const ra = await a.done
      expect(ra.code, ra.stderr).toBe(0)
      expect(await ledgerVersion(db.name)).toBe(12)
      expect(await keptCopies(db.name)).toHaveLength(1)
      expect(await leftoverDatabases(db.name)).toEqual([])
    },
    T,
  )
})

describe('interrupted commands: the next command repairs and cleans up, and says so', () => {
  it(
    'a rollback killed (SIGKILL) inside its swap leaves the live database open and unchanged; status names the restored copy, the next migrate drops it',
    async () => {
      const db = await scope.fresh({messages: 3000})
      const dir = backupDir()
      const m = await runCli(cli('migrate', db.name, dir, ['--skip-dryrun']))
      expect(m.code, m.stderr).toBe(0)
      const rb = start(cli('rollback', db.name, dir), 'swap:renamed')
      await rb.waitFor('[test-pause] swap:renamed')
      await rb.kill9()

      const st = await runCli(['db', 'e2ee', 'status', '--json', ...localArgs(db.name), '--backup-dir', dir])
      expect(st.code, st.stderr).toBe(0)
      const s = parseJson(st.stdout)
      expect(s.ledger.current).toBe(16)
      const copies = await leftoverDatabases(db.name, 'e2ee\\_restore')
      expect(copies).toHaveLength(1)
      expect(s.leftovers).toEqual([{kind: 'restored copy', kept: false, name: copies[0], owner: 'gone'}])
      expect(await keptCopies(db.name)).toEqual([])

      const next = await runCli(cli('migrate', db.name, dir))
      expect(next.code, next.stderr).toBe(0)
      expect(next.stderr).toContain(`Dropped ${copies[0]}, left by an interrupted rollback`)
      expect(await leftoverDatabases(db.name)).toEqual([])
    },
    T,
  )

  it(
    'a database left refusing connections by an interrupted swap (older versions) is re-opened by status, and by migrate, which say so',
    async () => {
      const db = await scope.fresh({messages: 3000})
      const dir = backupDir()
      const admin = connect('postgres')
      const copy = `${db.name}_e2ee_restore_20240102030405`
      const closeLikeAnInterruptedSwap = async () => {
        await admin.unsafe(`CREATE DATABASE "${copy}"`)
        await admin.unsafe(`COMMENT ON DATABASE "${copy}" IS 'nself-e2ee restore of ${db.name}, created 2024-01-02T03:04:05Z, pid 1'`)
        await admin.unsafe(`ALTER DATABASE "${db.name}" WITH ALLOW_CONNECTIONS false`)
      }
      try {
        await closeLikeAnInterruptedSwap()
        const repaired = `Repaired: "${db.name}" was left refusing connections by an interrupted rollback swap (its restored copy ${copy} is still beside it); it accepts connections again, unchanged.`
        const st = await runCli(['db', 'e2ee', 'status', '--json', ...localArgs(db.name), '--backup-dir', dir])
        expect(st.code, st.stderr).toBe(0)
        expect(st.stderr).toContain(repaired)
        const s = parseJson(st.stdout)
        expect(s.repaired).toBe(repaired)
        expect(s.ledger.current).toBe(12)
        expect(s.leftovers).toEqual([{kind: 'restored copy', kept: false, name: copy, owner: 'gone'}])

        await admin.unsafe(`DROP DATABASE "${copy}"`)
        await closeLikeAnInterruptedSwap()
        const mg = await runCli(cli('migrate', db.name, dir, ['--skip-dryrun']))
        expect(mg.code, mg.stderr).toBe(0)
        expect(mg.stderr).toContain(repaired)
        expect(mg.stderr).toContain(`Dropped ${copy}, left by an interrupted rollback`)
        expect(await ledgerVersion(db.name)).toBe(16)
        expect(await leftoverDatabases(db.name)).toEqual([])
      } finally {
        await admin.unsafe(`ALTER DATABASE "${db.name}" WITH ALLOW_CONNECTIONS true`).catch(() => {})
        await admin.end()
      }
    },
    T,
  )

  it(
    'SIGKILL during the dry run and during the backup: status names the clone and the .partial dump, the next command removes each',
    async () => {
      const db = await scope.fresh({messages: 3000})
      const dir = backupDir()
      const fate = 'left by an interrupted command; the next migrate, dryrun or rollback removes it'

      const dry = start(cli('dryrun', db.name, dir), 'dryrun:clone-restored')
      await dry.waitFor('[test-pause] dryrun:clone-restored')
      await dry.kill9()
      const clones = await leftoverDatabases(db.name, 'e2ee\\_dryrun')
      expect(clones).toHaveLength(1)
      const st1 = await runCli(['db', 'e2ee', 'status', ...localArgs(db.name), '--backup-dir', dir])
      expect(st1.code, st1.stderr).toBe(0)
      expect(st1.stdout).toContain(`Leftover    dry-run clone ${clones[0]} (${fate})`)
      // Its rehearsal dump (in the sidecar folder, named with the dead run's id) too.
      const rehearsal = readdirSync(path.join(dir, SIDECAR_DIR))
        .filter((f) => f.startsWith('rehearsal_'))
        .map((f) => path.join(dir, SIDECAR_DIR, f))
      expect(rehearsal).toHaveLength(1)
      expect(st1.stdout).toContain(`Leftover    rehearsal dump ${rehearsal[0]} (${fate})`)

      // The next command drops the clone first thing; killed in its backup, it leaves a .partial dump.
      const mg = start(cli('migrate', db.name, dir), 'backup:partial-written')
      await mg.waitFor('[test-pause] backup:partial-written')
      expect(mg.output()).toContain(`Dropped ${clones[0]}, left by an interrupted dry run`)
      expect(mg.output()).toContain(`Removed ${rehearsal[0]}, the rehearsal dump of an interrupted dry run`)
      expect(await leftoverDatabases(db.name)).toEqual([])
      await mg.kill9()
      // Dumps being written live in the sidecar folder, out of nself's backup listing.
      const sidecar = path.join(dir, SIDECAR_DIR)
      const partials = readdirSync(sidecar).filter((f) => f.endsWith('.partial'))
      expect(partials).toHaveLength(1)
      const partial = path.join(sidecar, partials[0])
      const st2 = await runCli(['db', 'e2ee', 'status', ...localArgs(db.name), '--backup-dir', dir])
      expect(st2.code, st2.stderr).toBe(0)
      expect(st2.stdout).toContain(`Leftover    unfinished backup ${partial} (${fate})`)

      const next = await runCli(cli('migrate', db.name, dir, ['--skip-dryrun']))
      expect(next.code, next.stderr).toBe(0)
      expect(next.stderr).toContain(`Removed ${partial}, the unfinished backup of an interrupted run`)
      expect([...readdirSync(dir), ...readdirSync(sidecar)].filter((f) => f.endsWith('.partial'))).toEqual([])
      expect(await leftoverDatabases(db.name)).toEqual([])
      expect(await ledgerVersion(db.name)).toBe(16)
    },
    T,
  )
})
