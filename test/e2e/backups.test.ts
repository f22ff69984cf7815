import {existsSync, readdirSync, readFileSync, statSync} from 'node:fs'
import path from 'node:path'
import {describe, expect, it} from 'vitest'
import {SIDECAR_DIR} from '../../src/archive/manifest.js'

import {ADMIN, connect, dropDatabase} from '../helpers/fixture.js'
import {e2eScope, ledgerVersion, leftoverDatabases, localArgs, parseJson, runCli} from '../helpers/cli.js'

/** Issue 9, defects 7 and 8: which backup a rollback restores, what it says it loses, and what it refuses. */

const scope = e2eScope()
const {backupDir, cleanups} = scope

async function migrate(db: string, dir: string, extra: string[] = []) {
  const r = await runCli(['db', 'e2ee', 'migrate', '--yes', '--json', ...localArgs(db), '--backup-dir', dir, '--skip-dryrun', ...extra])
  expect(r.code, r.stderr).toBe(0)
  return parseJson(r.stdout)
}

const rollback = (db: string, dir: string, extra: string[] = []) => runCli(['db', 'e2ee', 'rollback', '--yes', ...localArgs(db), '--backup-dir', dir, ...extra])

async function databasesLike(pattern: string): Promise<string[]> {
  const sql = connect('postgres')
  try {
    return (await sql<{datname: string}[]>`select datname from pg_database where datname like ${pattern} order by 1`).map((r) => r.datname)
  } finally {
    await sql.end()
  }
}

async function waitFor(ok: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await ok()) return true
    await new Promise((resolve) => {
      setTimeout(resolve, 100)
    })
  }
  return false
}

// Finished manifests (the sidecar folder also holds the empty placeholder that reserves a backup's name).
const manifests = (dir: string) => {
  const sidecar = path.join(dir, SIDECAR_DIR)
  return existsSync(sidecar)
    ? readdirSync(sidecar)
        .filter((f) => f.endsWith('.dump.manifest.json') && statSync(path.join(sidecar, f)).size > 0)
        .map((f) => path.join(sidecar, f))
    : []
}

describe('rollback --strategy restore chooses the backup from before the upgrade', () => {
  it('after a first migrate that stopped at 013 and a rerun, it restores the backup taken at 12, not the one at 013', async () => {
    const db = await scope.fresh({messages: 500})
    const dir = backupDir()
    expect((await migrate(db.name, dir, ['--to', '13'])).after).toBe(13)
    expect((await migrate(db.name, dir)).after).toBe(16)
    const taken = manifests(dir)
      .map((f) => JSON.parse(readFileSync(f, 'utf8')).ledger_version)
      .sort()
    expect(taken).toEqual([12, 13])
    const r = await rollback(db.name, dir, ['--json'])
    expect(r.code, r.stderr).toBe(0)
    const s = parseJson(r.stdout)
    expect(s).toMatchObject({after: 12, backup: {ledger_version: 12}, before: 16})
    expect(await ledgerVersion(db.name)).toBe(12)
  })

  it('with --to under the restore strategy: refused unless the backup is at that version, before anything is restored', async () => {
    const db = await scope.fresh({messages: 500})
    const dir = backupDir()
    await migrate(db.name, dir)
    const r = await rollback(db.name, dir, ['--to', '14'])
    expect(r.code).toBe(2)
    expect(r.stderr).toMatch(/No pre-migration backup of \S+ taken at migration 14 in .*\(the newest, \S+, was taken at migration 12\)/)
    const named = readdirSync(dir).find((f) => f.endsWith('.dump'))!
    const withFile = await rollback(db.name, dir, ['--to', '14', '--backup', path.join(dir, named)])
    expect(withFile.code).toBe(2)
    expect(withFile.stderr).toMatch(/--to 14 cannot be honoured by a restore rollback: the backup \S+ was taken at migration 12, so restoring it goes to 12/)
    expect(await ledgerVersion(db.name)).toBe(16)
    expect(await leftoverDatabases(db.name, '%')).toEqual([])
  })

  it('a database already at 12 is not rolled back again ("12 → 12"): nothing is restored or swapped', async () => {
    const db = await scope.fresh({messages: 500})
    const dir = backupDir()
    await migrate(db.name, dir)
    const first = await rollback(db.name, dir, ['--json'])
    expect(first.code, first.stderr).toBe(0)
    const kept = await leftoverDatabases(db.name, 'pre\\_rollback')
    expect(kept).toHaveLength(1)
    const again = await rollback(db.name, dir)
    expect(again.code, again.stderr).toBe(0)
    expect(again.stdout).toMatch(/Nothing to roll back: \S+ is at 12 and has none of the upgrade's migrations; no backup was restored\./)
    expect(await leftoverDatabases(db.name, 'pre\\_rollback')).toEqual(kept)
    const named = readdirSync(dir).find((f) => f.endsWith('.dump'))!
    const explicit = await rollback(db.name, dir, ['--backup', path.join(dir, named)])
    expect(explicit.code).toBe(1)
    expect(explicit.stderr).toMatch(/has none of migrations 013, 014, 015, 016 applied, so there is nothing to roll back/)
    expect(await leftoverDatabases(db.name, 'pre\\_rollback')).toEqual(kept)
    expect(await ledgerVersion(db.name)).toBe(12)
  })

  it('a 63-character database name rolls back (one kept-name function, every name checked before the restore)', async () => {
    const name = `e2ee_t_${Math.random().toString(16).slice(2, 10)}_`.padEnd(63, 'x')
    expect(name).toHaveLength(63)
    const db = await scope.fresh({messages: 300, name})
    cleanups.push(async () => {
      for (const d of await databasesLike(`${name.slice(0, 20)}%`)) await dropDatabase(d)
    })
    const dir = backupDir()
    await migrate(db.name, dir)
    const r = await rollback(db.name, dir, ['--json'])
    expect(r.code, r.stderr).toBe(0)
    const s = parseJson(r.stdout)
    expect(s).toMatchObject({after: 12, before: 16})
    expect(s.kept.database).toMatch(/_pre_rollback_\d{8}_\d{6}$/)
    expect(Buffer.byteLength(s.kept.database)).toBeLessThanOrEqual(63)
    expect(await ledgerVersion(db.name)).toBe(12)
    expect(await ledgerVersion(s.kept.database)).toBe(16)
    // Nothing else left beside them: no restored copy.
    expect((await databasesLike(`${name.slice(0, 20)}%`)).sort()).toEqual([db.name, s.kept.database].sort())
  })
})

describe("rollback counts every table's inserts, updates and deletes since the backup", () => {
  it('names reactions added, messages edited, a receipt deleted and a table made since, with correct plurals', async () => {
    const db = await scope.fresh({messages: 3000})
    const dir = backupDir()
    await migrate(db.name, dir)
    const sql = connect(db.name)
    try {
      await sql.unsafe(`
        insert into nchat_reactions (message_id, user_id, emoji)
          select m.id, (select u.id from nchat_users u order by u.id limit 1), '🔥' from nchat_messages m order by m.id limit 1000;
        update nchat_messages set content = coalesce(content, '') || ' (edited)' where id in (select id from nchat_messages order by id limit 100);
        delete from nchat_read_receipts where (channel_id, user_id) in (select channel_id, user_id from nchat_read_receipts order by 1, 2 limit 1);
        create schema app_extra;
        create table app_extra.notes (id int primary key, body text);
        insert into app_extra.notes values (1, 'a'), (2, 'b');`)
    } finally {
      await sql.end()
    }
    const r = await rollback(db.name, dir)
    expect(r.code, r.stderr).toBe(0)
    const lost = r.stdout
      .split('\n')
      .filter((l) => l.startsWith('Lost'))
      .map((l) => l.replace(/^Lost\s+/, ''))
    expect(lost.sort()).toEqual([
      'app_extra.notes: 2 rows added (the table was created after the backup)',
      'public.nchat_messages: 100 rows changed',
      'public.nchat_reactions: 1,000 rows added',
      'public.nchat_read_receipts: 1 row removed',
    ])
    expect(await ledgerVersion(db.name)).toBe(12)
  })

  it('says nothing was written when nothing was, and counts inserts into a table the old check ignored', async () => {
    const db = await scope.fresh({messages: 500})
    const dir = backupDir()
    await migrate(db.name, dir)
    const quiet = await rollback(db.name, dir, ['--json'])
    expect(quiet.code, quiet.stderr).toBe(0)
    expect(parseJson(quiet.stdout).lost).toEqual([])

    // Migrate the restored database again and write into a table that is neither messages nor one it counts.
    await migrate(db.name, dir)
    const sql = connect(db.name)
    try {
      await sql`insert into nchat_channel_members (channel_id, user_id)
        select c.id, u.id from nchat_channels c cross join nchat_users u
        where not exists (select 1 from nchat_channel_members m where m.channel_id = c.id and m.user_id = u.id) limit 7`
    } finally {
      await sql.end()
    }
    const r = await rollback(db.name, dir, ['--json'])
    expect(r.code, r.stderr).toBe(0)
    expect(parseJson(r.stdout).lost).toEqual([
      expect.objectContaining({
        added: 7,
        changed: 0,
        exact: true,
        removed: 0,
        table: 'public.nchat_channel_members',
        what: 'public.nchat_channel_members: 7 rows added',
      }),
    ])
  })
})

describe('two migrate runs at once', () => {
  it('the run that waited for the other reports truthfully that it applied nothing', async () => {
    const db = await scope.fresh({messages: 500})
    const dirA = backupDir()
    const dirB = backupDir()
    // A long reader holds the first run inside its apply step (it waits, without queueing, for old transactions).
    const reader = connect(db.name)
    let readerOpen = true
    const release = async () => {
      if (!readerOpen) return
      readerOpen = false
      await reader.end({timeout: 1})
    }
    cleanups.push(release)
    const holding = reader
      .begin(async (tx) => {
        await tx`select count(*) from nchat_messages`
        await tx`select count(*) from nchat_users`
        await tx`select count(*) from nchat_channels`
        await new Promise((resolve) => {
          setTimeout(resolve, 60_000)
        })
      })
      .catch(() => {})
    const args = (dir: string) => [
      'db',
      'e2ee',
      'migrate',
      '--yes',
      ...localArgs(db.name),
      '--backup-dir',
      dir,
      '--skip-dryrun',
      '--lock-wait',
      '100',
      '--max-lock-wait',
      '100',
    ]
    const a = runCli(args(dirA))
    expect(await waitFor(() => manifests(dirA).length === 1, 60_000), 'A backed up').toBe(true)
    await new Promise((resolve) => {
      setTimeout(resolve, 1500)
    })
    const b = runCli(args(dirB))
    // B has read the plan once its backup exists; if a lock keeps it from even starting, it will see the result.
    await waitFor(() => manifests(dirB).length === 1, 20_000)
    await new Promise((resolve) => {
      setTimeout(resolve, 1500)
    })
    await release()
    await holding
    const [ra, rb] = await Promise.all([a, b])
    expect(ra.code, ra.stderr).toBe(0)
    expect(ra.stdout).toMatch(/Migrated \S+ \(schema public\) from 12 to 16: 013_e2ee_system, 014_e2ee_system, 015_voice_calls, 016_live_streaming\./)
    expect(rb.code, rb.stderr).toBe(0)
    expect(rb.stdout).not.toMatch(/Migrated/)
    expect(rb.stdout).toMatch(
      /Nothing to do: (another run migrated \S+ \(schema public\) from 1[23] to 16 while this one waited for it; this run applied nothing|\S+ is at 16)/,
    )
    expect(await ledgerVersion(db.name)).toBe(16)
  })
})

describe('preflight checks every privilege the run needs before writing anything', () => {
  it('a table owner without CREATE on the database is refused, naming the privilege; no backup file, no ledger schema', async () => {
    const role = `e2ee_r_${Math.random().toString(16).slice(2, 10)}`
    cleanups.push(async () => {
      const admin = connect('postgres')
      try {
        await admin.unsafe(`DROP ROLE IF EXISTS ${role}`)
      } finally {
        await admin.end()
      }
    })
    const db = await scope.fresh({messages: 300})
    const sql = connect(db.name)
    try {
      await sql.unsafe(`CREATE ROLE ${role} LOGIN`)
      await sql.unsafe(`GRANT CREATE ON SCHEMA public TO ${role}`)
      // The role owns every table and sequence of the app (so it may alter them and pg_dump may read them).
      const owned = await sql<{kind: string; name: string}[]>`
        select case c.relkind when 'S' then 'SEQUENCE' else 'TABLE' end as kind, format('%I.%I', n.nspname, c.relname) as name
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = 'public' and c.relkind in ('r', 'S') and not exists (
          select 1 from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype in ('a', 'i'))`
      for (const o of owned) await sql.unsafe(`ALTER ${o.kind} ${o.name} OWNER TO ${role}`)
    } finally {
      await sql.end()
    }
    const dir = backupDir()
    const args = ['--local', '--host', ADMIN.host, '--port', String(ADMIN.port), '--user', role, '--database', db.name]
    const r = await runCli(['db', 'e2ee', 'migrate', '--yes', ...args, '--backup-dir', dir, '--skip-dryrun'])
    expect(r.code).toBe(1)
    expect(r.stderr).toContain(`Preflight failed (privileges): role ${role} lacks CREATE on database ${db.name} (to create the ledger schema nself_e2ee).`)
    expect(r.stderr).toContain(`GRANT CREATE ON DATABASE "${db.name}" TO "${role}";`)
    expect(existsSync(dir) ? readdirSync(dir) : []).toEqual([])
    const check = connect(db.name)
    try {
      const [{ledger}] = await check<{ledger: boolean}[]>`select to_regnamespace('nself_e2ee') is not null as ledger`
      expect(ledger).toBe(false)
    } finally {
      await check.end()
    }
    expect(await ledgerVersion(db.name)).toBe(12)

    // The same role with a dry run also lacks CREATEDB: both are named in the one sentence.
    const both = await runCli(['db', 'e2ee', 'migrate', '--yes', ...args, '--backup-dir', dir])
    expect(both.code).toBe(1)
    expect(both.stderr).toContain(
      `role ${role} lacks CREATE on database ${db.name} (to create the ledger schema nself_e2ee) and CREATEDB (for the dry-run copy).`,
    )

    // Granted what was named, the same role (no superuser) migrates: the check asks for nothing the run does not need.
    const admin = connect(db.name)
    try {
      await admin.unsafe(`GRANT CREATE ON DATABASE ${db.name} TO ${role}`)
    } finally {
      await admin.end()
    }
    const ok = await runCli(['db', 'e2ee', 'migrate', '--yes', ...args, '--backup-dir', dir, '--skip-dryrun'])
    expect(ok.code, ok.stderr).toBe(0)
    expect(await ledgerVersion(db.name)).toBe(16)
  })
})
