import {execFileSync, spawnSync} from 'node:child_process'
import {chmodSync, mkdtempSync, rmSync} from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import postgres from 'postgres'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {loadV030} from '../../scripts/v030-fixture.mjs'
import {runCli} from '../helpers/cli.js'

// A server restart in the middle of `migrate`, on a PRIVATE cluster this file starts on a free port (never the
// shared server): the run must end in one sentence (no uncaught TypeError), wait for the server, undo what it
// committed, and a plain rerun must finish.
const BIN_DIR = '/usr/lib/postgresql/15/bin'
const TOOL_SESSIONS = `application_name like 'nself-e2ee-%' and application_name <> 'nself-e2ee-tests'`

function asPostgres(args: string[]): void {
  execFileSync('runuser', ['-u', 'postgres', '--', ...args], {stdio: 'pipe'})
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const {port} = srv.address() as net.AddressInfo
      srv.close(() => resolve(port))
    })
  })
}

describe('the server restarting during migrate (private cluster)', () => {
  let dir: string
  let data: string
  let port: number
  const sqlTo = (database: string) =>
    postgres({connection: {application_name: 'nself-e2ee-tests'}, database, host: '127.0.0.1', max: 1, onnotice: () => {}, port, user: 'postgres'})

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'e2ee-restart-'))
    chmodSync(dir, 0o777)
    data = path.join(dir, 'data')
    port = await freePort()
    asPostgres([`${BIN_DIR}/initdb`, '-D', data, '--auth=trust', '-U', 'postgres'])
    asPostgres([`${BIN_DIR}/pg_ctl`, '-D', data, '-l', path.join(dir, 'log'), '-w', '-o', `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1`, 'start'])
    const admin = sqlTo('postgres')
    await admin.unsafe('create database nchat')
    await admin.end()
    const db = sqlTo('nchat')
    await loadV030(db, {channels: 20, messages: 3000, users: 50})
    await db.end()
  })

  afterAll(() => {
    if (data) spawnSync('runuser', ['-u', 'postgres', '--', `${BIN_DIR}/pg_ctl`, '-D', data, '-m', 'immediate', 'stop'], {stdio: 'ignore'})
    if (dir) rmSync(dir, {force: true, recursive: true})
  })

  it('during a CONCURRENTLY build: one sentence, undone after the restart, and a rerun finishes', async () => {
    const args = [
      'db',
      'e2ee',
      'migrate',
      '--local',
      '--host',
      '127.0.0.1',
      '--port',
      String(port),
      '--user',
      'postgres',
      '--database',
      'nchat',
      '--yes',
      '--skip-backup',
      '--skip-dryrun',
      '--max-lock-wait',
      '300',
    ]
    // An open snapshot holds CREATE INDEX CONCURRENTLY in "waiting for old snapshots": a fixed point to restart at.
    const holder = sqlTo('nchat')
    const snap = await holder.reserve()
    await snap.unsafe('begin isolation level repeatable read')
    await snap.unsafe('select 1')
    const run = runCli(args)
    const watch = sqlTo('nchat')
    try {
      for (let i = 0; ; i++) {
        const rows = await watch.unsafe(
          `select 1 from pg_stat_activity where ${TOOL_SESSIONS} and query ilike 'create index concurrently%' and wait_event_type = 'Lock'`,
        )
        if (rows.length > 0) break
        if (i > 1200) throw new Error('the build never waited')
        await new Promise((res) => setTimeout(res, 100))
      }
    } finally {
      await watch.end({timeout: 0}).catch(() => {})
    }
    asPostgres([
      `${BIN_DIR}/pg_ctl`,
      '-D',
      data,
      '-m',
      'fast',
      '-w',
      'restart',
      '-o',
      `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1`,
      '-l',
      path.join(dir, 'log'),
    ])
    await holder.end({timeout: 0}).catch(() => {})
    const r = await run
    expect(r.code, r.stdout + r.stderr).toBe(1)
    expect(r.stderr).not.toMatch(/TypeError/)
    expect(r.stderr).not.toMatch(/\n\s+at .+:\d+:\d+/)
    expect(r.stderr).toMatch(/Error: The migration 014_e2ee_system failed at line \d+ \(CREATE INDEX CONCURRENTLY .*\): the connection to PostgreSQL was lost/)
    expect(r.stderr).toMatch(/2 migrations this run applied \(013_e2ee_system, 014_e2ee_system\) were undone, so the database is as it was before \(at 12\)/)
    const check = sqlTo('nchat')
    try {
      const [{v}] = await check<{v: number}[]>`select max(version)::int as v from schema_migrations`
      expect(v).toBe(12)
      const [{n}] = await check<{n: number}[]>`select count(*)::int as n from pg_class where relname in ('nchat_identity_keys', 'idx_messages_encrypted')`
      expect(n).toBe(0)
    } finally {
      await check.end()
    }
    const again = await runCli(args)
    expect(again.code, again.stdout + again.stderr).toBe(0)
    const after = sqlTo('nchat')
    try {
      const [{v}] = await after<{v: number}[]>`select max(version)::int as v from schema_migrations`
      expect(v).toBe(16)
    } finally {
      await after.end()
    }
  })
})
