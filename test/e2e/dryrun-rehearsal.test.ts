import {type ChildProcess, execFileSync} from 'node:child_process'
import {existsSync, readdirSync, readFileSync, statSync} from 'node:fs'
import path from 'node:path'
import {describe, expect, it} from 'vitest'

import {SIDECAR_DIR} from '../../src/archive/manifest.js'
import {ADMIN, connect} from '../helpers/fixture.js'
import {dockerCalls, e2eScope, fakeDockerEnv, leftoverDatabases, localArgs, makeProject, parseJson, runCli, startCli, toolSessionsLeft} from '../helpers/cli.js'

// A standalone dryrun only reads production, so it takes no backup: its rehearsal dump (the whole schema and the
// rows of the tables the copy restores) is written into the sidecar folder, read back, restored into the copy
// and removed, however the run ends; a kill -9 leaves it for the next command to remove (README, "What the dry
// run restores").
const T = 180_000
const scope = e2eScope()
const {backupDir, cleanups} = scope
const MESSAGES = 3000
// A table with a name pg_dump's patterns would misread unquoted: its rows must be left out all the same.
const ODD = 'odd*"x.y$'
const ODD_SQL = `public."${ODD.replaceAll('"', '""')}"`

/** Every file under `dir` (recursively), relative to it; none when it does not exist. */
function filesUnder(dir: string): string[] {
  if (!existsSync(dir)) return []
  return readdirSync(dir, {recursive: true})
    .map(String)
    .filter((f) => statSync(path.join(dir, f)).isFile())
}

/** The TABLE DATA entries of a dump as "schema.table" (pg_restore --list). */
function tableData(file: string): string[] {
  const list = execFileSync('pg_restore', ['--list', file], {encoding: 'utf8'})
  return list.split('\n').flatMap((l) => {
    const m = /^\d+; \d+ \d+ TABLE DATA (\S+) (.+) \S+$/.exec(l)
    return m ? [`${m[1]}.${m[2]}`] : []
  })
}

/** `node bin/run.js args…` stopping at the test-pause `point` (never resumed: the test signals or kills it). */
const startPaused = (args: string[], point: string) => startCli(args, {cleanups, pause: point, timeoutMs: T})

const dry = (db: string, dir: string, extra: string[] = []) => ['db', 'e2ee', 'dryrun', '--yes', ...localArgs(db), '--backup-dir', dir, ...extra]

describe('nself db e2ee dryrun: the rehearsal dump', () => {
  it(
    'leaves no file in the backup folder nor its sidecar folder, and says the rehearsal dump was used and removed',
    async () => {
      const db = await scope.fresh({messages: MESSAGES})
      const dir = backupDir()
      const r = await runCli([...dry(db.name, dir), '--json'])
      expect(r.code, r.stderr).toBe(0)
      const s = parseJson(r.stdout)
      expect(s.ok).toBe(true)
      expect(s.backup).toBeNull()
      expect(s.rehearsalDump).toMatchObject({file: expect.stringContaining(path.join(dir, SIDECAR_DIR, `rehearsal_${db.name}.`)), removed: true})
      expect(s.rehearsalDump.bytes).toBeGreaterThan(0)
      expect(s.rehearsalDump.tablesWithData).toEqual(expect.arrayContaining(['public.nchat_users', 'public.schema_migrations']))
      expect(s.rehearsalDump.tablesWithData).not.toContain('public.nchat_messages')
      expect(Object.keys(s.timings)).toEqual(['preflight', 'dump', 'dryrun'])
      expect(filesUnder(dir)).toEqual([])

      const text = await runCli(dry(db.name, dir))
      expect(text.code, text.stderr).toBe(0)
      expect(text.stdout).toMatch(
        /\nDump {8}a rehearsal dump \([^)]+: the schema and the rows of \d+ tables\) was restored into the copy and removed; it is no backup, and none was taken: `migrate` takes the full verified backup\n/,
      )
      expect(text.stdout).not.toMatch(/\nBackup {6}/)
      expect(filesUnder(dir)).toEqual([])
      expect(await leftoverDatabases(db.name)).toEqual([])
    },
    T,
  )

  it(
    'holds the schema and the rows of the kept tables only (a table named with pattern characters too), mode 0600, in the sidecar folder; Ctrl+C after it is written removes it',
    async () => {
      const db = await scope.fresh({messages: MESSAGES})
      const sql = connect(db.name)
      await sql.unsafe(`create table ${ODD_SQL} (id int primary key); insert into ${ODD_SQL} select generate_series(1, 50)`)
      await sql.end()
      const dir = backupDir()
      const p = startPaused(dry(db.name, dir), 'dryrun:dump-written')
      await p.waitFor('[test-pause] dryrun:dump-written')
      const files = filesUnder(dir)
      expect(files).toHaveLength(1)
      expect(files[0]).toMatch(new RegExp(`^\\${SIDECAR_DIR}/rehearsal_${db.name}\\.[0-9a-f]{8}\\.dump$`))
      const file = path.join(dir, files[0])
      expect(statSync(file).mode & 0o777).toBe(0o600)
      const data = tableData(file)
      expect(data).toEqual(expect.arrayContaining(['public.nchat_users', 'public.schema_migrations']))
      for (const t of ['nchat_messages', 'nchat_channels', 'nchat_reactions', 'nchat_read_receipts', 'nchat_channel_members', ODD]) {
        expect(data).not.toContain(`public.${t}`)
      }
      // The definitions are all there.
      const list = execFileSync('pg_restore', ['--list', file], {encoding: 'utf8'})
      expect(list).toMatch(/ TABLE public nchat_messages /)
      expect(list).toContain(` TABLE public ${ODD} `)
      expect(list).toMatch(/ INDEX public idx_messages_\w+ /)

      const r = await p.kill('SIGINT')
      expect(r.code, r.stdout + r.stderr).toBe(130)
      expect(r.stderr).toMatch(/Interrupted by Ctrl\+C/)
      expect(r.stderr).toMatch(/Interrupted by Ctrl\+C: the rehearsal dump \S+ was stopped, and the file was removed; production was not changed\./)
      expect(filesUnder(dir)).toEqual([])
      expect(await leftoverDatabases(db.name)).toEqual([])
      expect(await toolSessionsLeft(db.name)).toBe(0)
    },
    T,
  )

  it(
    'SIGTERM while the copy is restored from it, and Ctrl+C while pg_dump writes it: removed either way, no session left',
    async () => {
      const db = await scope.fresh({messages: MESSAGES})
      const dirA = backupDir()
      const a = startPaused(dry(db.name, dirA), 'dryrun:clone-restored')
      await a.waitFor('[test-pause] dryrun:clone-restored')
      expect(filesUnder(dirA)).toHaveLength(1)
      const ra = await a.kill('SIGTERM')
      expect(ra.code, ra.stdout + ra.stderr).toBe(143)
      expect(filesUnder(dirA)).toEqual([])
      expect(await leftoverDatabases(db.name)).toEqual([])

      // pg_dump waits for this lock (it locks every table whose definition it dumps): the dump is in progress. Taken
      // once the step has started, since preflight reads every table's size (which waits for it too); nothing of
      // ours before pg_dump touches nchat_reactions.
      const holder = connect(db.name)
      const conn = await holder.reserve()
      cleanups.push(async () => {
        await conn.unsafe('rollback').catch(() => {})
        conn.release()
        await holder.end()
      })
      await conn.unsafe('begin')
      const dirB = backupDir()
      let child: ChildProcess | undefined
      let locked: Promise<unknown> | undefined
      let seen = ''
      const run = runCli(dry(db.name, dirB), {
        onOutput: (out) => {
          seen = out
          if (!locked && out.includes('[STARTED] Rehearsal dump'))
            locked = conn.unsafe('lock table nchat_reactions in access exclusive mode').then(() => 'locked') // postgres.js sends a query once it is awaited
        },
        onSpawn: (c) => {
          child = c
        },
      })
      const watch = connect('postgres')
      try {
        let waiting = 0
        for (let i = 0; i < 600 && waiting === 0; i++) {
          ;[{waiting}] = await watch<{waiting: number}[]>`select count(*)::int as waiting from pg_stat_activity
          where datname = ${db.name} and application_name like 'nself-e2ee-%-dump' and wait_event_type = 'Lock'`
          if (waiting === 0) await new Promise((res) => setTimeout(res, 100))
        }
        expect(waiting, seen).toBe(1)
        await locked
      } finally {
        await watch.end()
      }
      expect(filesUnder(dirB)).toHaveLength(1)
      child!.kill('SIGINT')
      const rb = await run
      expect(rb.code, rb.stdout + rb.stderr).toBe(130)
      expect(rb.stderr).toMatch(/Interrupted by Ctrl\+C/)
      expect(filesUnder(dirB)).toEqual([])
      expect(await toolSessionsLeft(db.name)).toBe(0)
    },
    T,
  )

  it(
    'a rehearsal dump left by a kill -9 is listed by status and removed by the next command',
    async () => {
      const db = await scope.fresh({messages: MESSAGES})
      const dir = backupDir()
      const p = startPaused(dry(db.name, dir), 'dryrun:dump-written')
      await p.waitFor('[test-pause] dryrun:dump-written')
      await p.kill9()
      const [left] = filesUnder(dir)
      expect(left).toMatch(/^\.nself-e2ee\/rehearsal_/)
      const file = path.join(dir, left)

      const st = await runCli(['db', 'e2ee', 'status', ...localArgs(db.name), '--backup-dir', dir])
      expect(st.code, st.stderr).toBe(0)
      expect(st.stdout).toContain(`Leftover    rehearsal dump ${file} (left by an interrupted command; the next migrate, dryrun or rollback removes it)`)
      const stj = parseJson((await runCli(['db', 'e2ee', 'status', '--json', ...localArgs(db.name), '--backup-dir', dir])).stdout)
      expect(stj.leftovers).toEqual([{kind: 'rehearsal dump', kept: false, name: file, owner: 'gone'}])

      const next = await runCli([...dry(db.name, dir), '--json'])
      expect(next.code, next.stderr).toBe(0)
      expect(next.stderr).toContain(`Removed ${file}, the rehearsal dump of an interrupted dry run`)
      expect(filesUnder(dir)).toEqual([])
    },
    T,
  )

  it(
    '--full still takes a full verified backup, keeps it, and restores every row',
    async () => {
      const db = await scope.fresh({messages: MESSAGES})
      const dir = backupDir()
      const r = await runCli([...dry(db.name, dir), '--json', '--full'])
      expect(r.code, r.stderr).toBe(0)
      const s = parseJson(r.stdout)
      expect(s.rehearsalDump).toBeNull()
      expect(s.backup).toMatchObject({file: expect.stringMatching(new RegExp(`^${dir}/[^/]+\\.dump$`)), taken: true})
      expect(s.content).toBe('full')
      expect(Object.keys(s.timings)).toEqual(['preflight', 'backup', 'dryrun'])
      expect(filesUnder(dir).sort()).toEqual([path.basename(s.backup.file), `${SIDECAR_DIR}/${path.basename(s.backup.file)}.manifest.json`].sort())
      expect(tableData(s.backup.file)).toEqual(expect.arrayContaining(['public.nchat_messages', 'public.nchat_reactions']))
      // A backup like migrate's (its manifest counts every touched table's rows), marked as the dry run's.
      const manifest = JSON.parse(readFileSync(path.join(dir, SIDECAR_DIR, `${path.basename(s.backup.file)}.manifest.json`), 'utf8'))
      expect(manifest).toMatchObject({database: db.name, purpose: 'dryrun', row_counts: expect.objectContaining({nchat_messages: MESSAGES})})
    },
    T,
  )

  it(
    'through docker exec: pg_dump runs in the container with the left-out tables quoted, no secret in argv, nothing left',
    async () => {
      const db = await scope.fresh({messages: MESSAGES})
      const secret = 'pw-s3cret'
      const sql = connect(db.name)
      await sql.unsafe(`create table ${ODD_SQL} (id int primary key); insert into ${ODD_SQL} values (1)`)
      await sql.end()
      const project = makeProject({POSTGRES_DB: db.name, POSTGRES_PASSWORD: secret, POSTGRES_USER: ADMIN.user, PROJECT_NAME: 'nchat'})
      cleanups.push(project.cleanup)
      const log = path.join(project.dir, 'docker.log')
      const r = await runCli(['db', 'e2ee', 'dryrun', '--json', '--project-dir', project.dir, '--host', '127.0.0.1'], {
        env: fakeDockerEnv('nchat_postgres', log, secret),
      })
      expect(r.code, r.stderr).toBe(0)
      expect(parseJson(r.stdout).rehearsalDump.removed).toBe(true)
      const dump = dockerCalls(log).find((c) => c[0] === 'exec' && c.includes('pg_dump') && c.includes('--format=custom'))!
      expect(dump).toBeDefined()
      expect(dump).toContain('--exclude-table-data="public"."nchat_messages"')
      expect(dump).toContain(`--exclude-table-data="public"."${ODD.replaceAll('"', '""')}"`)
      expect(dump).not.toContain('-t')
      expect(dump.some((a) => a.includes(secret))).toBe(false)
      expect(filesUnder(path.join(project.dir, 'backups'))).toEqual([])
    },
    T,
  )
})
