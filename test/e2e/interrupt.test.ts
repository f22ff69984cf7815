import {type ChildProcess, spawn} from 'node:child_process'
import {readdirSync, writeFileSync} from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {escapeRegExp} from '../../src/text.js'
import {ADMIN, connect, createV030Database, type V030Database} from '../helpers/fixture.js'
import {appSchemaDump} from '../helpers/engine.js'
import {BIN, e2eScope, fakeDockerEnv, ledgerVersion, leftoverDatabases, localArgs, runCli, tmpDir, TOOL_SESSIONS, toolSessionsLeft} from '../helpers/cli.js'

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
      try {
        files = readdirSync(backups)
      } catch {}
      expect(files.filter((f) => f.endsWith('.partial'))).toEqual([])
      const sql = connect('postgres')
      try {
        // Sessions of the interrupted run (pg_dump/pg_restore children included) must be gone.
        let left = 1
        for (let i = 0; i < 20 && left > 0; i++) {
          ;[{left}] = await sql<
            {left: number}[]
          >`select count(*)::int as left from pg_stat_activity where application_name like 'nself-e2ee-%' and datname like ${`${db.name}%`}`
          if (left > 0) await new Promise((res) => setTimeout(res, 250))
        }
        expect(left).toBe(0)
      } finally {
        await sql.end()
      }
    })
  }
})

/** A transaction of the test's own, open until `end()`: `statement` decides what it holds (a lock, a snapshot). */
async function hold(database: string, statement: string, isolation = 'read committed'): Promise<{pid: number; end: () => Promise<void>}> {
  const sql = connect(database)
  const conn = await sql.reserve()
  await conn.unsafe(`begin isolation level ${isolation}`)
  await conn.unsafe(statement)
  const [{pid}] = await conn<{pid: number}[]>`select pg_backend_pid() as pid`
  return {
    async end() {
      await conn.unsafe('rollback').catch(() => {})
      conn.release()
      await sql.end()
    },
    pid,
  }
}

/** Poll the server until `query` returns a row (bounded only so a broken run cannot hang the suite). */
async function waitForRow<T>(database: string, query: string, params: unknown[] = []): Promise<T> {
  const sql = connect(database)
  try {
    for (let i = 0; i < 1200; i++) {
      const rows = await sql.unsafe<T[]>(query, params as never[])
      if (rows.length > 0) return rows[0]
      await new Promise((res) => setTimeout(res, 100))
    }
    throw new Error(`no row for: ${query}`)
  } finally {
    await sql.end()
  }
}

const STACK = /\n\s+at .+:\d+:\d+/
// Faster runs for the apply cases: the backup and dry run are covered above.
const APPLY_ONLY = ['--yes', '--skip-backup', '--skip-dryrun']
const LONG_LOCK_WAIT = ['--max-lock-wait', '300']

// After something committed: the undo must finish, and every message must say what is true.
describe('interrupting the apply after 013 committed', () => {
  const scope = e2eScope()

  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    it(`${signal}: 013 is undone, the database is back at 12, exit ${signal === 'SIGINT' ? 130 : 143}`, async () => {
      const db = await scope.fresh({messages: 5000})
      const before = await appSchemaDump(db.name)
      // 014 alters nchat_messages: while this reader is open it cannot start, so the signal lands after 013
      // committed and before 014 could, whatever the machine's speed. 013 and its undo never touch the table.
      const reader = await hold(db.name, 'select 1 from nchat_messages limit 1')
      scope.cleanups.push(reader.end)
      const r = await runCli(['db', 'e2ee', 'migrate', ...localArgs(db.name), ...APPLY_ONLY, ...LONG_LOCK_WAIT], {
        interruptWhen: (out) => out.includes('applying 014_e2ee_system'),
        signal,
      })
      expect(r.interrupted).toBe(true)
      expect(r.code, r.stdout + r.stderr).toBe(signal === 'SIGINT' ? 130 : 143)
      expect(r.stderr).toMatch(
        signal === 'SIGINT' ? /Error: Interrupted by Ctrl\+C: the migration was stopped/ : /Error: Interrupted by SIGTERM: the migration was stopped/,
      )
      expect(r.stderr).toMatch(/1 migration this run applied \(013_e2ee_system\) was undone, so the database is as it was before \(at 12\)/)
      expect(r.stderr).not.toMatch(STACK)
      expect(await ledgerVersion(db.name)).toBe(12)
      expect(await appSchemaDump(db.name)).toBe(before)
      expect(await toolSessionsLeft(db.name)).toBe(0)
    })
  }

  it('a second Ctrl+C abandons the undo, and the message names the state left and the commands that finish or undo it', async () => {
    const db = await scope.fresh({messages: 5000})
    const reader = await hold(db.name, 'select 1 from nchat_messages limit 1')
    scope.cleanups.push(reader.end)
    // Once 013 committed, a reader of one of its tables keeps its undo (DROP TABLE) from finishing.
    let keyReader: Awaited<ReturnType<typeof hold>> | undefined
    let stage = 0
    const r = await runCli(['db', 'e2ee', 'migrate', ...localArgs(db.name), ...APPLY_ONLY, ...LONG_LOCK_WAIT], {
      onOutput: (out, child) => {
        if (stage === 0 && out.includes('applying 014_e2ee_system')) {
          stage = 1
          void hold(db.name, 'select 1 from nchat_identity_keys limit 1').then((h) => {
            keyReader = h
            scope.cleanups.push(h.end)
            child.kill('SIGINT')
          })
        } else if (stage === 1 && keyReader && out.includes('undoing what this run applied')) {
          stage = 2
          child.kill('SIGINT')
        }
      },
    })
    expect(stage).toBe(2)
    expect(r.code, r.stdout + r.stderr).toBe(130)
    expect(r.stderr).toMatch(
      /undoing what it applied was abandoned by a second Ctrl\+C: the database is left at 13 \(013_e2ee_system applied\), it was at 12 before/,
    )
    expect(r.stderr).toMatch(/`nself db e2ee migrate` finishes the migration; `nself db e2ee rollback --strategy down --to 12` undoes it/)
    expect(r.stderr).not.toMatch(STACK)
    expect(await ledgerVersion(db.name)).toBe(12 + 1)
    // What the message promises: a plain rerun finishes the migration.
    await keyReader!.end()
    await reader.end()
    const again = await runCli(['db', 'e2ee', 'migrate', ...localArgs(db.name), ...APPLY_ONLY])
    expect(again.code, again.stdout + again.stderr).toBe(0)
    expect(await ledgerVersion(db.name)).toBe(16)
  })

  it('the server ending every session of the tool during a CONCURRENTLY build: one sentence, no TypeError, undone, and a rerun finishes', async () => {
    const db = await scope.fresh({messages: 5000})
    const before = await appSchemaDump(db.name)
    // An open snapshot makes CREATE INDEX CONCURRENTLY wait (phase "waiting for old snapshots") without
    // holding any lock the transactional part of a migration needs.
    const snapshot = await hold(db.name, 'select 1', 'repeatable read')
    scope.cleanups.push(snapshot.end)
    const run = runCli(['db', 'e2ee', 'migrate', ...localArgs(db.name), ...APPLY_ONLY, ...LONG_LOCK_WAIT])
    await waitForRow(
      db.name,
      `select pid from pg_stat_activity where ${TOOL_SESSIONS} and datname = current_database() and query ilike 'create index concurrently%' and wait_event_type = 'Lock'`,
    )
    const admin = connect(db.name)
    try {
      await admin.unsafe(`select pg_terminate_backend(pid) from pg_stat_activity where ${TOOL_SESSIONS} and datname = current_database()`)
    } finally {
      await admin.end()
    }
    const r = await run
    expect(r.code, r.stdout + r.stderr).toBe(1)
    expect(r.stderr).not.toMatch(/TypeError/)
    expect(r.stderr).not.toMatch(STACK)
    expect(r.stderr).toMatch(/: the connection to PostgreSQL was lost \(the server (ended the session|closed it)/)
    expect(r.stderr).toMatch(/2 migrations this run applied \(013_e2ee_system, 014_e2ee_system\) were undone, so the database is as it was before \(at 12\)/)
    expect(await ledgerVersion(db.name)).toBe(12)
    expect(await appSchemaDump(db.name)).toBe(before)
    expect(await toolSessionsLeft(db.name)).toBe(0)
    await snapshot.end()
    const again = await runCli(['db', 'e2ee', 'migrate', ...localArgs(db.name), ...APPLY_ONLY])
    expect(again.code, again.stdout + again.stderr).toBe(0)
    expect(await ledgerVersion(db.name)).toBe(16)
  })

  it('the server ending the session that holds the run lock: the run stops (another could start), undoes 013, no TypeError', async () => {
    const db = await scope.fresh({messages: 5000})
    const before = await appSchemaDump(db.name)
    const reader = await hold(db.name, 'select 1 from nchat_messages limit 1')
    scope.cleanups.push(reader.end)
    let killed = false
    const r = await runCli(['db', 'e2ee', 'migrate', ...localArgs(db.name), ...APPLY_ONLY, '--max-lock-wait', '60'], {
      onOutput: (out) => {
        if (killed || !out.includes('applying 014_e2ee_system')) return
        killed = true
        const admin = connect(db.name)
        void admin
          .unsafe(`select pg_terminate_backend(l.pid) from pg_locks l join pg_database d on d.oid = l.database
          where l.locktype = 'advisory' and l.classid = ${0x6e_73_6c_66} and l.objid = 40 and d.datname = current_database()`)
          .finally(() => admin.end())
      },
    })
    expect(killed).toBe(true)
    expect(r.code, r.stdout + r.stderr).toBe(1)
    expect(r.stderr).not.toMatch(/TypeError/)
    expect(r.stderr).not.toMatch(STACK)
    expect(r.stderr).toMatch(/The session holding this run's lock on the database was ended .* so the run stopped/)
    expect(r.stderr).toMatch(/013_e2ee_system\) was undone/)
    expect(await ledgerVersion(db.name)).toBe(12)
    expect(await appSchemaDump(db.name)).toBe(before)
  })
})

describe('Ctrl+C outside the apply', () => {
  const scope = e2eScope()

  it('verify stops at once (exit 130), even while a check waits for a lock', async () => {
    const db = await scope.fresh({messages: 2000})
    const m = await runCli(['db', 'e2ee', 'migrate', ...localArgs(db.name), ...APPLY_ONLY])
    expect(m.code, m.stdout + m.stderr).toBe(0)
    const locker = await hold(db.name, 'lock table nchat_messages in access exclusive mode')
    scope.cleanups.push(locker.end)
    let child: ChildProcess | undefined
    // Bounded well below the suite's timeout: the old verify waited for the lock for ever.
    const run = runCli(['db', 'e2ee', 'verify', ...localArgs(db.name)], {
      onSpawn: (c) => {
        child = c
      },
      timeoutMs: 60_000,
    })
    await waitForRow(db.name, `select pid from pg_stat_activity where ${TOOL_SESSIONS} and datname = current_database() and wait_event_type = 'Lock'`)
    child!.kill('SIGINT')
    const r = await run
    expect(r.code, r.stdout + r.stderr).toBe(130)
    expect(r.stderr).toMatch(/Interrupted by Ctrl\+C: verify was stopped, and the database was not changed \(verify only reads\)/)
    expect(r.stderr).not.toMatch(STACK)
  })
})

describe('Ctrl+C during a down rollback', () => {
  const scope = e2eScope()

  it('stops between down files and says which migrations are still applied (not "everything was undone")', async () => {
    const db = await scope.fresh({messages: 2000})
    const m = await runCli(['db', 'e2ee', 'migrate', ...localArgs(db.name), ...APPLY_ONLY])
    expect(m.code, m.stdout + m.stderr).toBe(0)
    // 016's down file runs; 015's must drop nchat_calls, which this reader keeps it from doing.
    const reader = await hold(db.name, 'select 1 from nchat_calls limit 1')
    scope.cleanups.push(reader.end)
    const r = await runCli(
      ['db', 'e2ee', 'rollback', '--strategy', 'down', '--yes', ...localArgs(db.name), '--backup-dir', scope.backupDir(), ...LONG_LOCK_WAIT],
      {
        interruptWhen: (out) => out.includes('reverting 015_voice_calls'),
      },
    )
    expect(r.interrupted).toBe(true)
    expect(r.code, r.stdout + r.stderr).toBe(130)
    expect(r.stderr).toMatch(
      /Error: Interrupted by Ctrl\+C: the rollback was stopped; the database is left at 15 \(013_e2ee_system applied, 014_e2ee_system applied, 015_voice_calls applied\), it was at 16 before\./,
    )
    expect(r.stderr).toMatch(/`nself db e2ee rollback --strategy down --to 12` continues the rollback/)
    expect(r.stderr).not.toMatch(/Error: .*undone/)
    expect(await ledgerVersion(db.name)).toBe(15)
  })
})

describe('Ctrl+C at the confirmation', () => {
  const scope = e2eScope()

  it('typed at the prompt on a terminal: exit 130, production not changed', async () => {
    const db = await scope.fresh({messages: 2000})
    const before = await appSchemaDump(db.name)
    const args = [process.execPath, BIN, 'db', 'e2ee', 'migrate', '--skip-dryrun', ...localArgs(db.name), '--backup-dir', scope.backupDir()]
    // `script` gives the CLI a terminal (the prompt needs one); Ctrl+C is typed as the byte a keyboard sends.
    const r = await new Promise<{code: number | null; out: string}>((resolve, reject) => {
      const child = spawn('script', ['-qfec', args.map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(' '), '/dev/null'], {
        env: {...process.env, FORCE_COLOR: '0', NO_COLOR: '1'},
        stdio: ['pipe', 'pipe', 'pipe'],
      })
      let out = ''
      let typed = false
      const timer = setTimeout(() => child.kill('SIGKILL'), 120_000)
      child.stdout.on('data', (d) => {
        out += d
        if (!typed && out.includes('Apply to production now?')) {
          typed = true
          child.stdin.write('\x03')
        }
      })
      child.on('error', reject)
      child.on('close', (code) => {
        clearTimeout(timer)
        resolve({code, out})
      })
    })
    expect(r.code, r.out).toBe(130)
    expect(r.out).toMatch(/Interrupted by Ctrl\+C: the confirmation was stopped, and production was not changed/)
    expect(r.out).not.toMatch(STACK)
    expect(await ledgerVersion(db.name)).toBe(12)
    expect(await appSchemaDump(db.name)).toBe(before)
  })
})

describe('messages that say what is true', () => {
  const scope = e2eScope()

  it('a --backup-dir that is a file is named a file, not "not writable (EEXIST)"', async () => {
    const db = await scope.fresh({messages: 100})
    const dir = tmpDir()
    scope.cleanups.push(dir.cleanup)
    const file = path.join(dir.dir, 'backups')
    writeFileSync(file, 'not a folder')
    const r = await runCli(['db', 'e2ee', 'migrate', '--yes', ...localArgs(db.name), '--backup-dir', file])
    expect(r.code, r.stdout + r.stderr).toBe(1)
    expect(r.stderr).toMatch(new RegExp(`The backup folder ${escapeRegExp(file)} is a file, not a folder\\.`))
    expect(r.stderr).not.toMatch(/EEXIST|\.\.$/m)
    expect(await ledgerVersion(db.name)).toBe(12)
  })

  it('docker not running is "the docker daemon is not reachable", not "container not found"', async () => {
    const db = await scope.fresh({messages: 100})
    const args = [
      'db',
      'e2ee',
      'migrate',
      '--yes',
      '--host',
      ADMIN.host,
      '--port',
      String(ADMIN.port),
      '--user',
      ADMIN.user,
      '--database',
      db.name,
      '--container',
      'nchat_postgres',
    ]
    const r = await runCli(args, {env: {...fakeDockerEnv('nchat_postgres', path.join(os.tmpdir(), `docker-${db.name}.log`)), FAKE_DOCKER_DAEMON_DOWN: '1'}})
    expect(r.code, r.stdout + r.stderr).toBe(1)
    expect(r.stderr).toMatch(/Error: The docker daemon is not reachable \(Cannot connect to the Docker daemon/)
    expect(r.stderr).not.toMatch(/not found/)
  })
})
