import fs from 'node:fs'
import path from 'node:path'

import {afterAll, afterEach, beforeAll, describe, expect, it} from 'vitest'

import {UserError} from '../../src/errors.js'
import {acquireCommandLock, type CommandLock} from '../../src/migrations/command-lock.js'
import {loadMigrations} from '../../src/migrations/files.js'
import {migrateUp} from '../../src/migrations/runner.js'
import {connect, RUN_ID, type Sql} from '../../src/connection/connect.js'
import {SIDECAR_DIR} from '../../src/archive/manifest.js'
import {newDatabaseName} from '../../src/pg/databases.js'
import {leftoverDatabases, leftoverPartials, repairClosedDatabase, sweepLeftovers} from '../../src/steps/leftovers.js'
import {createV030Database} from '../helpers/fixture.js'
import {adminSql, createTestDb, derivedDbs, dropTestDb, makeTarget, PG, tempDir, waitFor} from './support.js'

const T = 120_000

let admin: Sql
beforeAll(() => {
  admin = adminSql()
})
afterAll(async () => {
  await admin.end({timeout: 2})
})

const ctx: {dbs: string[]; locks: CommandLock[]; pools: Sql[]; root: string} = {dbs: [], locks: [], pools: [], root: ''}
afterEach(async () => {
  for (const l of ctx.locks.splice(0)) await l.release()
  for (const s of ctx.pools.splice(0)) await s.end({timeout: 2}).catch(() => {})
  for (const d of ctx.dbs.splice(0)) await dropTestDb(admin, d)
  if (ctx.root) fs.rmSync(ctx.root, {force: true, recursive: true})
  ctx.root = ''
})

function target(database: string, backupDir = '/nonexistent') {
  return makeTarget({backupDir, database, mode: 'local', password: ''})
}

async function lock(database: string, command: 'migrate' | 'rollback' = 'migrate', waitMs = 0): Promise<CommandLock> {
  const l = await acquireCommandLock(target(database), {command, waitMs})
  ctx.locks.push(l)
  return l
}

/** End this run's migrate lock session (as a server restart would) and wait until the lock notices. */
async function endLockSession(l: CommandLock): Promise<void> {
  await admin`select pg_terminate_backend(pid) from pg_stat_activity where application_name = ${`nself-e2ee-${RUN_ID} migrate`}`
  await waitFor(
    async () => {
      try {
        l.assertHeld()
        return false
      } catch {
        return true
      }
    },
    10_000,
    20,
  )
}

/** A session that looks like another run (`nself-e2ee-<run> <command>`) of this tool, still alive. */
function fakeRun(run: string, database = 'postgres'): Sql {
  const s = connect({database, host: PG.host, port: PG.port, user: PG.user}, {appName: `nself-e2ee-${run} migrate`, max: 1})
  ctx.pools.push(s)
  return s
}

describe('the command lock', () => {
  it(
    'makes a second command wait, then refuse in one sentence naming the holder; the try form returns null',
    async () => {
      const db = await createTestDb(admin, {audit: 1, messages: 1})
      ctx.dbs.push(db)
      const first = await lock(db, 'rollback')
      const logs: string[] = []
      const t0 = Date.now()
      const error = await acquireCommandLock(target(db), {command: 'migrate', log: (l) => logs.push(l), waitMs: 600}).catch((e: unknown) => e)
      expect(Date.now() - t0).toBeGreaterThanOrEqual(600)
      expect(error).toBeInstanceOf(UserError)
      const [{pid}] = await first.admin<{pid: number}[]>`
      select pid from pg_stat_activity where application_name = ${`nself-e2ee-${RUN_ID} rollback`}`
      expect((error as Error).message).toMatch(
        new RegExp(
          `^Another command \\(nself db e2ee rollback, pid ${pid}, running since \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d UTC\\) is changing the database "${db}"; waited 1 s for it to finish\\.$`,
        ),
      )
      expect(logs).toHaveLength(1)
      expect(await acquireCommandLock(target(db), {command: 'status', tryOnly: true, waitMs: 0})).toBeNull()
      // Another database has its own lock.
      const other = await createTestDb(admin, {audit: 1, messages: 1})
      ctx.dbs.push(other)
      await lock(other)
      await first.release()
      ctx.locks.splice(ctx.locks.indexOf(first), 1)
      await lock(db)
    },
    T,
  )

  it(
    'notices when its connection (and so the lock) is lost',
    async () => {
      const db = await createTestDb(admin, {audit: 1, messages: 1})
      ctx.dbs.push(db)
      const l = await lock(db)
      l.assertHeld()
      await endLockSession(l)
      expect(() => l.assertHeld()).toThrow(
        `The connection holding the lock on "${db}" was lost, so another command could start; stopping before writing anything more.`,
      )
    },
    T,
  )

  it(
    'takes a lost lock again before the next write when no other command took it, and refuses when one did',
    async () => {
      const db = await createTestDb(admin, {audit: 1, messages: 1})
      ctx.dbs.push(db)
      const sql = connect({database: db, host: PG.host, port: PG.port, user: PG.user}, {max: 1})
      ctx.pools.push(sql)
      const l = await lock(db)
      // Lost (a server restart, say) while nobody else wanted it: the next write takes it again and goes on.
      await endLockSession(l)
      await l.assertSameDatabase(sql)
      expect(() => l.assertHeld()).not.toThrow()
      const [{holders}] = await admin<{holders: number}[]>`
      select count(*)::int as holders from pg_locks l join pg_stat_activity a on a.pid = l.pid
      where l.locktype = 'advisory' and l.granted and a.application_name = ${`nself-e2ee-${RUN_ID} migrate`}`
      expect(holders).toBe(1)
      // Lost, and another command took it meanwhile: refused, naming that command.
      await endLockSession(l)
      const other = await lock(db, 'rollback')
      const error = await l.assertSameDatabase(sql).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(UserError)
      expect((error as UserError).message).toMatch(
        new RegExp(
          `^The connection holding the lock on "${db}" was lost and nself db e2ee rollback, pid \\d+, .* took it; stopping before writing anything more\\.$`,
        ),
      )
      await other.release()
    },
    T,
  )

  it(
    'a run whose database was replaced under it writes nothing to the swapped-in database',
    async () => {
      const live = await createV030Database({messages: 50})
      const other = await createV030Database({messages: 50})
      ctx.dbs.push(live.name, other.name, `${live.name}_old`)
      const l = await lock(live.name)
      const sql = connect({database: live.name, host: PG.host, port: PG.port, user: PG.user}, {max: 2})
      ctx.pools.push(sql)
      await l.assertSameDatabase(sql)
      // Another tool swaps the databases under the run (ending the run's sessions, as a rename needs).
      await admin`select pg_terminate_backend(pid) from pg_stat_activity where datname = any(${[live.name, other.name]}) and pid <> pg_backend_pid()`
      await waitFor(async () => (await admin`select 1 from pg_stat_activity where datname = any(${[live.name, other.name]})`).length === 0, 10_000, 20)
      await admin.begin(async (tx) => {
        await tx.unsafe(`ALTER DATABASE "${live.name}" RENAME TO "${live.name}_old"`)
        await tx.unsafe(`ALTER DATABASE "${other.name}" RENAME TO "${live.name}"`)
      })
      // The pool finds its connection closed, and reconnects by name: to the swapped-in database (the issue's case).
      await sql`select 1`.catch(() => {})
      await sql`select 1`
      const error = await migrateUp({beforeWrite: (q) => l.assertSameDatabase(q), migrations: loadMigrations(), schema: 'public', sql}).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(UserError)
      expect((error as Error).message).toMatch(
        new RegExp(
          `^The database "${live.name}" was replaced while this command was working on it \\(it is not the database the command started on: OID ${l.oid} then, \\d+ now\\); nothing more was written\\.$`,
        ),
      )
      const check = connect({database: live.name, host: PG.host, port: PG.port, user: PG.user}, {max: 1})
      ctx.pools.push(check)
      const [{v}] = await check<{v: number}[]>`select max(version)::int as v from schema_migrations`
      expect(v).toBe(12)
      expect(await check`select 1 from pg_tables where tablename = 'nchat_identity_keys'`).toHaveLength(0)
    },
    T,
  )
})

describe('leftovers', () => {
  it(
    "sweeps, under the lock, this database's clones and restores of other runs (name pattern AND comment), and nothing else",
    async () => {
      const db = await createTestDb(admin, {audit: 1, messages: 1})
      ctx.dbs.push(db)
      const mk = async (name: string, comment: string | null) => {
        await admin.unsafe(`CREATE DATABASE "${name}"`)
        if (comment !== null) await admin.unsafe(`COMMENT ON DATABASE "${name}" IS '${comment}'`)
        return name
      }
      const at = (s: number) => new Date(2024, 0, 2, 3, 4, s)
      const now = new Date().toISOString()
      const leftover = await mk(newDatabaseName(db, 'dryrun', at(5)), `nself-e2ee dryrun clone of ${db}, created ${now}, pid 1, run 0badc0de`)
      const restoreLeftover = await mk(newDatabaseName(db, 'restore', at(5)), `nself-e2ee restore of ${db}, created ${now}, pid 1, run 0badc0de`)
      const older = await mk(newDatabaseName(db, 'dryrun', at(4)), `nself-e2ee dryrun clone of ${db}, created 2024-01-02T03:04:04Z, pid 1`)
      const kept = await mk(newDatabaseName(db, 'dryrun', at(6)), `nself-e2ee dryrun clone of ${db}, created ${now}, pid 1, run 0badc0de, kept`)
      const mine = await mk(newDatabaseName(db, 'dryrun', at(7)), `nself-e2ee dryrun clone of ${db}, created ${now}, pid 1, run ${RUN_ID}`)
      const foreign = await mk(newDatabaseName(db, 'dryrun', at(8)), 'a database of somebody else')
      const uncommented = await mk(newDatabaseName(db, 'dryrun', at(9)), null)
      const wrongName = await mk(`${db}_e2ee_dryrun_copy`, `nself-e2ee dryrun clone of ${db}, created ${now}, pid 1, run 0badc0de`)
      const inspected = await mk(newDatabaseName(db, 'dryrun', at(10)), `nself-e2ee dryrun clone of ${db}, created ${now}, pid 1, run 0badc0de`)
      const human = connect({database: inspected, host: PG.host, port: PG.port, user: PG.user}, {appName: 'psql', max: 1})
      ctx.pools.push(human)
      await human`select 1`

      ctx.root = tempDir()
      const dir = path.join(ctx.root, 'backups')
      fs.mkdirSync(dir)
      const file = (n: string) => {
        fs.writeFileSync(path.join(dir, n), 'x')
        return path.join(dir, n)
      }
      const deadPartial = file('nchat_20240102_030405.dump.0badc0de.partial')
      const alivePartial = file('nchat_20240102_030406.dump.aaaabbbb.partial')
      const legacyPartial = file('nchat_20240102_030407.dump.partial')
      const finished = file('nchat_20240102_030408.dump')
      // Rehearsal dumps of standalone dry runs: only in the sidecar folder, named with their run id.
      fs.mkdirSync(path.join(dir, SIDECAR_DIR))
      const deadRehearsal = file(`${SIDECAR_DIR}/rehearsal_nchat.0badc0de.dump`)
      const aliveRehearsal = file(`${SIDECAR_DIR}/rehearsal_nchat.aaaabbbb.dump`)
      const myRehearsal = file(`${SIDECAR_DIR}/rehearsal_nchat.${RUN_ID}.dump`)
      const notInSidecar = file('rehearsal_nchat.0badc0de.dump')
      await fakeRun('aaaabbbb')`select 1`

      expect((await leftoverPartials(dir)).map((p) => `${p.kind} ${p.run}`).sort()).toEqual(
        ['partial 0badc0de', 'partial aaaabbbb', 'partial null', 'rehearsal 0badc0de', 'rehearsal aaaabbbb', `rehearsal ${RUN_ID}`].sort(),
      )
      const l = await acquireCommandLock(target(db, dir), {command: 'migrate', waitMs: 0})
      ctx.locks.push(l)
      const logs: string[] = []
      const removed = await sweepLeftovers(l, dir, (x) => logs.push(x))
      expect(removed.sort()).toEqual([deadPartial, deadRehearsal, leftover, older, restoreLeftover].sort())
      expect(logs).toContain(`Removed ${deadRehearsal}, the rehearsal dump of an interrupted dry run (0badc0de).`)
      expect(
        fs
          .readdirSync(path.join(dir, SIDECAR_DIR))
          .map((n) => path.join(dir, SIDECAR_DIR, n))
          .sort(),
      ).toEqual([aliveRehearsal, myRehearsal].sort())
      expect(await derivedDbs(admin, db)).toEqual([foreign, inspected, kept, mine, uncommented, wrongName].sort())
      expect(logs.some((x) => x.includes(inspected) && x.includes('other session'))).toBe(true)
      expect(
        fs
          .readdirSync(dir)
          .filter((n) => n !== SIDECAR_DIR)
          .map((n) => path.join(dir, n))
          .sort(),
      ).toEqual([alivePartial, finished, legacyPartial, notInSidecar].sort())
      expect((await leftoverDatabases(admin, `${db}_e2ee`)).length).toBe(0)
    },
    T,
  )

  it(
    're-opens a database an interrupted swap left closed only when its restored copy is there',
    async () => {
      const db = await createTestDb(admin, {audit: 1, messages: 1})
      ctx.dbs.push(db)
      await admin.unsafe(`ALTER DATABASE "${db}" WITH ALLOW_CONNECTIONS false`)
      await expect(repairClosedDatabase(admin, db)).rejects.toThrow(
        `The database "${db}" does not accept connections (ALLOW_CONNECTIONS is false), and no interrupted swap of nself db e2ee explains it.`,
      )
      const copy = newDatabaseName(db, 'restore', new Date(2024, 0, 2))
      await admin.unsafe(`CREATE DATABASE "${copy}"`)
      await admin.unsafe(`COMMENT ON DATABASE "${copy}" IS 'nself-e2ee restore of ${db}, created 2024-01-02T00:00:00Z, pid 1, run 0badc0de'`)
      expect(await repairClosedDatabase(admin, db)).toBe(
        `Repaired: "${db}" was left refusing connections by an interrupted rollback swap (its restored copy ${copy} is still beside it); it accepts connections again, unchanged.`,
      )
      const [{allow}] = await admin<{allow: boolean}[]>`select datallowconn as allow from pg_database where datname = ${db}`
      expect(allow).toBe(true)
      expect(await repairClosedDatabase(admin, db)).toBeNull()
    },
    T,
  )
})
