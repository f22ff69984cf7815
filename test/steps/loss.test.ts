import {afterAll, afterEach, beforeAll, describe, expect, it} from 'vitest'

import {compareWithBackup, describeLoss} from '../../src/steps/loss.js'
import type {Sql} from '../../src/connection/connect.js'
import {adminSql, dbSql, dropTestDb, hex} from './support.js'

const T = 60_000
let admin: Sql
beforeAll(() => {
  admin = adminSql()
})
afterAll(async () => {
  await admin.end({timeout: 2})
})

describe('compareWithBackup: what a restore rollback would undo', () => {
  const made: string[] = []
  const open: Sql[] = []
  afterEach(async () => {
    while (open.length) await open.pop()!.end({timeout: 2})
    while (made.length) await dropTestDb(admin, made.pop()!)
  })

  /** Two databases with the same start: "backup" stays as it was, "live" is then written to. */
  async function pair(setup: string): Promise<{backup: Sql; live: Sql}> {
    const names = [`e2ee_l_${hex()}`, `e2ee_l_${hex()}`]
    const sqls: Sql[] = []
    for (const n of names) {
      await admin.unsafe(`CREATE DATABASE ${n}`)
      made.push(n)
      const sql = dbSql(n, 2)
      open.push(sql)
      await sql.unsafe(setup)
      sqls.push(sql)
    }
    return {backup: sqls[0], live: sqls[1]}
  }

  const SETUP = `
    create table t_pk (id int primary key, v text);
    insert into t_pk select i, 'v' || i from generate_series(1, 1000) i;
    create table t_nopk (a int, b text);
    insert into t_nopk select i, 'b' || i from generate_series(1, 50) i;
    create table t_same (id int primary key, v text);
    insert into t_same select i, 'same' from generate_series(1, 300) i;
    create schema other;
    create table other.t_gone (id int primary key);
    insert into other.t_gone values (1), (2);
    create table schema_migrations (version int primary key);`

  it(
    'counts inserts, updates and deletes per table, in every schema, and leaves unchanged tables out',
    async () => {
      const {backup, live} = await pair(SETUP)
      await live.unsafe(`
      insert into t_pk values (1001, 'new'), (1002, 'new'), (1003, 'new');
      update t_pk set v = 'edited' where id in (10, 20);
      delete from t_pk where id = 30;
      alter table t_pk add column added_since boolean not null default false;
      insert into t_nopk values (51, 'new');
      update t_nopk set b = 'edited' where a = 1;
      drop table other.t_gone;
      create table t_new (id int primary key);
      insert into t_new values (1);
      insert into schema_migrations values (13), (14);`)
      const loss = await compareWithBackup({backup, live})
      expect(loss).toEqual(
        [
          {added: 0, changed: 0, exact: true, note: 'the table was dropped after the backup; the rollback brings it back', removed: 2, table: 'other.t_gone'},
          {added: 1, changed: 0, exact: true, note: 'the table was created after the backup', removed: 0, table: 'public.t_new'},
          {
            added: 2,
            changed: 'yes',
            exact: true,
            note: 'no primary key: an updated row counts as one removed and one added',
            removed: 1,
            table: 'public.t_nopk',
          },
          {added: 3, changed: 2, exact: true, removed: 1, table: 'public.t_pk'},
        ].sort((a, b) => a.table.localeCompare(b.table)),
      )
      expect(loss.map(describeLoss)).toContain('public.t_pk: 3 rows added, 2 rows changed, 1 row removed')
      expect(loss.map(describeLoss)).toContain('public.t_new: 1 row added (the table was created after the backup)')
    },
    T,
  )

  it(
    'an update that does not change the row count is seen; past the detail limit the counts are marked inexact',
    async () => {
      const {backup, live} = await pair(SETUP)
      await live.unsafe(`update t_same set v = 'changed' where id = 7`)
      expect(await compareWithBackup({backup, live})).toEqual([{added: 0, changed: 1, exact: true, removed: 0, table: 'public.t_same'}])
      await live.unsafe(`insert into t_pk select i, 'x' from generate_series(1001, 1500) i; update t_pk set v = 'y' where id <= 400`)
      const loss = await compareWithBackup({backup, detailLimit: 100, live})
      const pk = loss.find((l) => l.table === 'public.t_pk')!
      expect(pk).toMatchObject({added: 500, changed: 'yes', exact: false, removed: 0})
      expect(describeLoss(pk)).toBe('public.t_pk: at least 500 rows added, changed: yes (over 100 rows differ; counted from the row totals)')
    },
    T,
  )

  it(
    'finds nothing when nothing changed',
    async () => {
      const {backup, live} = await pair(SETUP)
      expect(await compareWithBackup({backup, live})).toEqual([])
    },
    T,
  )
})
