import fs from 'node:fs'
import path from 'node:path'

import {afterAll, afterEach, beforeAll, describe, expect, it} from 'vitest'

import {createRunScope} from '../../src/run/scope.js'
import {CancelledError, UserError} from '../../src/errors.js'
import type {Sql} from '../../src/connection/connect.js'
import {PgTools} from '../../src/connection/tools.js'
import {takeBackup} from '../../src/steps/backup.js'
import {createClone} from '../../src/clone/clone.js'
import {newDatabaseName} from '../../src/pg/databases.js'
import {leftoverDatabases} from '../../src/steps/leftovers.js'
import {
  adminSql,
  assertCleanDockerLog,
  createTestDb,
  dbSql,
  derivedDbs,
  dropTestDb,
  type DockerEnv,
  makeTarget,
  TABLES,
  tableDigest,
  tempDir,
  useDockerStandIn,
  waitFor,
} from './support.js'

const T = 120_000

let admin: Sql
beforeAll(() => {
  admin = adminSql()
})
afterAll(async () => {
  await admin.end({timeout: 2})
})

interface Ctx {
  db: string
  root: string
  sql?: Sql
  docker?: DockerEnv
  extra: Sql[]
}

const ctx: Ctx = {db: '', extra: [], root: ''}

afterEach(async () => {
  ctx.docker?.restore()
  ctx.docker = undefined
  for (const s of ctx.extra.splice(0)) await s.end({timeout: 2}).catch(() => {})
  await ctx.sql?.end({timeout: 2})
  ctx.sql = undefined
  if (ctx.db) await dropTestDb(admin, ctx.db)
  ctx.db = ''
  if (ctx.root) fs.rmSync(ctx.root, {force: true, recursive: true})
  ctx.root = ''
})

async function setup(mode: 'docker' | 'local', data: Parameters<typeof createTestDb>[1] = {}) {
  ctx.db = await createTestDb(admin, data)
  ctx.root = tempDir()
  if (mode === 'docker') ctx.docker = useDockerStandIn(ctx.root)
  const target = makeTarget({backupDir: path.join(ctx.root, 'backups'), database: ctx.db, mode})
  const tools = await PgTools.create(target)
  ctx.sql = dbSql(ctx.db)
  const backup = await takeBackup({ledgerVersion: 12, schema: 'public', sql: ctx.sql, tables: TABLES, target, tools})
  return {backup, target, tools}
}

function cloneSql(name: string): Sql {
  const s = dbSql(name, 1)
  ctx.extra.push(s)
  return s
}

describe.each(['local', 'docker'] as const)('createClone (%s mode)', (mode) => {
  it(
    'restores the schema whole and the data of the migrated tables (and what they reference) only',
    async () => {
      const {backup, target, tools} = await setup(mode)
      const logs: string[] = []
      const progress: {done: number; total: number}[] = []
      const clone = await createClone({
        admin: ctx.sql!,
        backup,
        dataTables: ['nchat_messages'],
        jobs: 2,
        log: (l) => logs.push(l),
        onProgress: (p) => progress.push(p),
        target,
        tools,
      })
      try {
        expect(clone.name).toMatch(new RegExp(`^${ctx.db}_e2ee_dryrun_\\d{14}$`))
        expect(clone.restoreMs).toBeGreaterThan(0)
        // nchat_messages references users and channels: their data comes too, or the foreign keys would not validate.
        expect(logs.some((l) => l.includes('public.nchat_users') && l.includes('public.nchat_channels'))).toBe(true)
        expect(clone.leftOut.sort((a, b) => a.table.localeCompare(b.table))).toEqual([
          {rows: 1000, table: 'nchat_audit'},
          {rows: 300, table: 'nchat_reactions'},
          {rows: null, table: 'schema_migrations'},
        ])
        expect(progress.length).toBeGreaterThan(0)
        expect(progress.at(-1)!.done).toBe(progress.at(-1)!.total)

        const c = cloneSql(clone.name)
        for (const t of ['nchat_messages', 'nchat_users', 'nchat_channels']) {
          expect(await tableDigest(c, t)).toEqual(await tableDigest(ctx.sql!, t))
        }
        for (const t of ['nchat_reactions', 'nchat_audit', 'schema_migrations']) {
          expect((await tableDigest(c, t)).rows).toBe(0)
        }
        // Schema objects are all there: indexes, constraints, comments, sequence positions.
        const [shape] = await c<{idx: number; fks: number; comment: string; nextval: string}[]>`
        select (select count(*)::int from pg_indexes where schemaname = 'public' and indexname = 'nchat_messages_channel_idx') as idx,
               (select count(*)::int from pg_constraint where contype = 'f' and convalidated) as fks,
               obj_description('nchat_messages'::regclass, 'pg_class') as comment,
               nextval('nchat_audit_id_seq')::text as nextval`
        expect(shape).toEqual({comment: 'chat messages', fks: 3, idx: 1, nextval: '1001'})
        const [db] = await admin<{owner: string; comment: string}[]>`
        select pg_get_userbyid(datdba) as owner, shobj_description(oid, 'pg_database') as comment from pg_database where datname = ${clone.name}`
        expect(db.owner).toBe('postgres')
        expect(db.comment).toMatch(new RegExp(`^nself-e2ee dryrun clone of ${ctx.db}, created \\d{4}-\\d\\d-\\d\\dT.*Z, pid ${process.pid}, run [0-9a-f]{8}$`))

        if (ctx.docker) {
          const lines = ctx.docker.lines()
          assertCleanDockerLog(lines)
          // Dump and list were copied into the "container" (the host folder is invisible there) and removed after.
          const cps = lines.filter((a) => a[0] === 'cp')
          expect(cps.length).toBe(2)
          expect(cps.map((a) => a[1]).sort()).toEqual([backup.file, expect.stringMatching(/\/restore\.list$/)])
          expect(cps.every((a) => a[2].startsWith('nchat_postgres:/tmp/'))).toBe(true)
          const restore = lines.find((a) => a.includes('pg_restore') && a.includes('--verbose'))!
          expect(restore).toContain('--jobs=2')
          expect(restore.some((a) => a.startsWith('--use-list=/tmp/'))).toBe(true)
          expect(lines.filter((a) => a.includes('rm')).length).toBe(2)
          for (const cp of cps) expect(fs.existsSync(cp[2].slice('nchat_postgres:'.length))).toBe(false)
        }
      } finally {
        await ctx.extra.pop()?.end({timeout: 2})
        await clone.drop()
      }
      expect(await derivedDbs(admin, ctx.db)).toEqual([])
    },
    T,
  )

  it(
    'drops the clone when the restore fails (truncated backup), naming the file',
    async () => {
      const {backup, target, tools} = await setup(mode, {bigBodies: true, messages: 20_000})
      const broken = backup.file.replace(/\.dump$/, '_cut.dump')
      fs.copyFileSync(backup.file, broken)
      fs.truncateSync(broken, Math.floor(backup.bytes * 0.5))
      const error = await createClone({
        admin: ctx.sql!,
        backup: {file: broken, manifest: backup.manifest},
        dataTables: ['nchat_messages'],
        target,
        tools,
      }).catch((e: unknown) => e)
      expect(error).toBeInstanceOf(UserError)
      const message = (error as Error).message
      expect(message).toContain(broken)
      expect(message).toMatch(new RegExp(`^Restoring the dry-run clone ${ctx.db}_e2ee_dryrun_\\d{14} from ${broken} failed: .+\\.$`))
      expect(await derivedDbs(admin, ctx.db)).toEqual([])
      if (ctx.docker) assertCleanDockerLog(ctx.docker.lines())
    },
    T,
  )
})

describe('createClone failures and sweeping', () => {
  it(
    'refuses a table that is not in the backup before creating anything',
    async () => {
      const {backup, target, tools} = await setup('local')
      await expect(createClone({admin: ctx.sql!, backup, dataTables: ['nchat_nope'], target, tools})).rejects.toThrow(
        `The table public.nchat_nope is not in the backup ${backup.file}.`,
      )
      expect(await derivedDbs(admin, ctx.db)).toEqual([])
    },
    T,
  )

  it(
    'drops the clone on Ctrl+C during the restore',
    async () => {
      const {backup, target} = await setup('docker', {audit: 300_000, bigBodies: true, messages: 100_000})
      process.env.FAKE_DOCKER_NO_SIGNALS = '1'
      const scope = createRunScope()
      const tools = await PgTools.create(target, scope)
      const run = createClone({admin: ctx.sql!, backup, dataTables: ['nchat_messages', 'nchat_audit'], jobs: 2, target, tools})
      run.catch(() => {})
      // Wait until pg_restore is writing into the clone, then press Ctrl+C.
      await waitFor(
        async () =>
          (
            await admin`
      select 1 from pg_stat_activity where starts_with(datname, ${`${ctx.db}_e2ee_dryrun_`}) and query ilike 'copy%'`
          ).length > 0,
        30_000,
        10,
      )
      await scope.abort()
      const error = await run.then(
        () => undefined,
        (e: unknown) => e,
      )
      expect(error).toBeInstanceOf(CancelledError)
      expect(await derivedDbs(admin, ctx.db)).toEqual([])
    },
    T,
  )

  it(
    'keeps a clone marked ", kept", which sweeping leaves alone',
    async () => {
      const {backup, target, tools} = await setup('local')
      const clone = await createClone({admin: ctx.sql!, backup, dataTables: ['nchat_audit'], keep: true, target, tools})
      expect(clone.leftOut.map((l) => l.table).sort()).toEqual(['nchat_channels', 'nchat_messages', 'nchat_reactions', 'nchat_users', 'schema_migrations'])
      const [{comment}] = await admin<
        {comment: string}[]
      >`select shobj_description(oid, 'pg_database') as comment from pg_database where datname = ${clone.name}`
      expect(comment).toMatch(/, run [0-9a-f]{8}, kept$/)
      // Listed as ours and kept: sweepLeftovers (test/steps/leftovers.test.ts) never drops it.
      expect(await leftoverDatabases(admin, ctx.db)).toMatchObject([{kept: true, kind: 'dryrun', name: clone.name}])
      expect(await derivedDbs(admin, ctx.db)).toEqual([clone.name])
      await clone.drop()
      expect(await derivedDbs(admin, ctx.db)).toEqual([])
    },
    T,
  )

  it('keeps long names within 63 bytes', () => {
    const long = 'n'.repeat(63)
    const name = newDatabaseName(long, 'dryrun', new Date('2024-01-02T03:04:05'))
    expect(Buffer.byteLength(name)).toBeLessThanOrEqual(63)
    expect(name).toMatch(/^n+_e2ee_dryrun_20240102030405$/)
  })
})
