import {describe, expect, it} from 'vitest'

import {connect} from '../helpers/fixture.js'
import {e2eScope, leftoverDatabases, localArgs, parseJson, runCli} from '../helpers/cli.js'

// The dry run's copy holds the whole schema and only the rows 013-016 read (issue 11). These tests prove what
// it leaves out, and that leaving rows out never hides a failure: a schema that makes 014 fail, and data that
// 014 validates, are both caught.
const scope = e2eScope()
const {backupDir} = scope
const MESSAGES = 3000

async function count(db: string, query: string): Promise<number> {
  const sql = connect(db)
  try {
    const [{n}] = await sql.unsafe<{n: string}[]>(query)
    return Number(n)
  } finally {
    await sql.end()
  }
}

describe('nself db e2ee dryrun: what the copy holds', () => {
  it('leaves out the message rows (saying why), keeps the whole schema and the rows 014 reads, and scales the scans of messages from a sample', async () => {
    const db = await scope.fresh({messages: MESSAGES})
    const r = await runCli(['db', 'e2ee', 'dryrun', '--yes', '--json', '--keep-dryrun-db', ...localArgs(db.name), '--backup-dir', backupDir()])
    expect(r.code, r.stderr).toBe(0)
    const s = parseJson(r.stdout)
    expect(s.ok).toBe(true)
    expect(s.content).toBe('slim')
    const messages = s.leftOut.find((l: {table: string}) => l.table === 'nchat_messages')
    // The rehearsal dump counts only the rows it holds (in its snapshot); the left-out ones are not read.
    expect(messages.rows).toBeNull()
    expect(s.rehearsalDump.tablesWithData).not.toContain('public.nchat_messages')
    expect(messages.why).toMatch(/VALIDATE.*NULL in every row/)
    expect(s.keptAltered).toEqual([])

    const clone = s.clone as string
    scope.cleanups.push(async () => {
      const admin = connect('postgres')
      await admin.unsafe(`drop database if exists "${clone}" with (force)`)
      await admin.end()
    })
    // No message rows, every user; the message table's indexes, foreign keys and triggers are all there.
    expect(await count(clone, 'select count(*) as n from nchat_messages')).toBe(0)
    expect(await count(clone, 'select count(*) as n from nchat_users')).toBe(await count(db.name, 'select count(*) as n from nchat_users'))
    const objects = `select (select count(*) from pg_index where indrelid = 'nchat_messages'::regclass and indexrelid::regclass::text not like 'idx\\_messages\\_encrypted' and indexrelid::regclass::text not like 'idx\\_messages\\_sender\\_device')
                          + (select count(*) from pg_constraint where conrelid = 'nchat_messages'::regclass and conname <> 'fk_messages_sender_device')
                          + (select count(*) from pg_trigger where tgrelid = 'nchat_messages'::regclass and not tgisinternal) as n`
    expect(await count(clone, objects)).toBe(await count(db.name, objects))

    // The forecast scaled the scans of nchat_messages from a sample (here the whole table: it is small).
    const sample = s.forecast.samples.find((x: {table: string}) => x.table === 'nchat_messages')
    expect(sample.sampleRows).toBe(MESSAGES)
    expect(s.forecast.scaled.filter((x: {table: string}) => x.table === 'nchat_messages')).toHaveLength(3)
    expect(s.forecastMs).toBeGreaterThanOrEqual(s.applyMs)
    // The sample table is gone from the kept copy.
    expect(await count(clone, "select count(*) as n from pg_class where relname like 'nself\\_e2ee\\_sample\\_%'")).toBe(0)
  })

  it('--full restores every row, as the guide does', async () => {
    const db = await scope.fresh({messages: MESSAGES})
    const r = await runCli(['db', 'e2ee', 'dryrun', '--yes', '--json', '--full', ...localArgs(db.name), '--backup-dir', backupDir()])
    expect(r.code, r.stderr).toBe(0)
    const s = parseJson(r.stdout)
    expect(s.content).toBe('full')
    expect(s.leftOut).toEqual([])
    expect(s.backup.taken).toBe(true)
    expect(s.rehearsalDump).toBeNull()
    expect(s.forecast.samples).toEqual([])
    expect(s.forecastMs).toBe(s.applyMs)
  })

  it('still catches a statement the schema makes fail while the message rows are left out (an event trigger refusing ALTER TABLE nchat_messages)', async () => {
    const db = await scope.fresh({messages: MESSAGES})
    const sql = connect(db.name)
    await sql.unsafe(`
      create function refuse_messages_alter() returns event_trigger language plpgsql as $$
      begin
        if tg_tag = 'ALTER TABLE' and current_query() ~* 'alter\\s+table\\s+nchat_messages\\s+add\\s+column' then
          raise exception 'nchat_messages is frozen by policy';
        end if;
      end $$;
      create event trigger refuse_messages_alter on ddl_command_start execute function refuse_messages_alter();`)
    await sql.end()
    const r = await runCli(['db', 'e2ee', 'dryrun', '--yes', '--json', ...localArgs(db.name), '--backup-dir', backupDir()])
    expect(r.code).toBe(1)
    const s = parseJson(r.stdout)
    expect(s.leftOut.map((l: {table: string}) => l.table)).toContain('nchat_messages')
    expect(s.failure).toMatch(/014_e2ee_system failed at line \d+ \(ALTER TABLE nchat_messages[^)]*\): .*frozen by policy/)
    expect(
      await count(db.name, "select count(*) as n from information_schema.columns where table_name = 'nchat_messages' and column_name = 'is_encrypted'"),
    ).toBe(0)
    expect(await leftoverDatabases(db.name)).toEqual([])
  })

  it('keeps the message rows when 014 validates values already in them, and catches the violating row', async () => {
    const db = await scope.fresh({messages: MESSAGES})
    const sql = connect(db.name)
    // A half-done hand run of the guide: the column exists and one message names a device that does not exist.
    await sql.unsafe(`alter table nchat_messages add column sender_device_id text;
      update nchat_messages set sender_device_id = 'ghost-device' where id = (select id from nchat_messages order by created_at desc limit 1)`)
    await sql.end()
    const r = await runCli(['db', 'e2ee', 'dryrun', '--yes', '--json', ...localArgs(db.name), '--backup-dir', backupDir()])
    expect(r.code).toBe(1)
    const s = parseJson(r.stdout)
    expect(s.leftOut.map((l: {table: string}) => l.table)).not.toContain('nchat_messages')
    expect(s.keptAltered).toEqual([expect.objectContaining({table: 'nchat_messages', why: expect.stringMatching(/column sender_device_id exists already/)})])
    expect(s.failure).toMatch(/VALIDATE CONSTRAINT fk_messages_sender_device.*violates foreign key constraint/)
    expect(await leftoverDatabases(db.name)).toEqual([])
  })
})
