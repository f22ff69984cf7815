import {appendFileSync, copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync} from 'node:fs'
import path from 'node:path'

import postgres from 'postgres'
import {describe, expect, it} from 'vitest'

import {listBackups} from '../../src/archive/listing.js'
import {e2eScope, localArgs, parseJson, runCli} from '../helpers/cli.js'
import {ADMIN, connect} from '../helpers/fixture.js'

const {backupDir, fresh} = e2eScope()
const backups = (db: string, dir: string, ...extra: string[]) => runCli(['db', 'e2ee', 'maintain', 'backups', ...localArgs(db), '--backup-dir', dir, ...extra])
const daysAgo = (d: number) => new Date(Date.now() - d * 86_400_000).toISOString()

/** A copy of a real backup under another name, with its manifest saying another age and purpose. */
function copyBackup(src: {file: string; manifestFile: string}, name: string, manifest: Record<string, unknown>): string {
  const file = path.join(path.dirname(src.file), name)
  copyFileSync(src.file, file)
  const m = {...JSON.parse(readFileSync(src.manifestFile, 'utf8')), ...manifest, file: name}
  writeFileSync(path.join(path.dirname(src.manifestFile), `${name}.manifest.json`), JSON.stringify(m), {mode: 0o600})
  return file
}

describe('maintain backups', () => {
  it("lists ours and nself's, prunes by age and count, and never the newest pre-migration backup of a database at 16", async () => {
    const db = await fresh()
    const dir = backupDir()
    const m = await runCli(['db', 'e2ee', 'migrate', '--yes', '--skip-dryrun', ...localArgs(db.name), '--backup-dir', dir])
    expect(m.code, m.stderr).toBe(0)
    const [real] = await listBackups(dir, db.name)
    expect(real.manifest.purpose).toBe('pre-migration')
    // The real one, made 20 days ago; an older pre-migration one; a manual one at 16; a dry-run one; nself's own.
    writeFileSync(real.manifestFile, JSON.stringify({...real.manifest, created_at: daysAgo(20)}))
    const older = copyBackup(real, `${db.name}_20250101_000000.dump`, {created_at: daysAgo(60)})
    const manual = copyBackup(real, `${db.name}_20250102_000000.dump`, {created_at: daysAgo(10), ledger_version: 16, purpose: 'manual'})
    const dry = copyBackup(real, `${db.name}_20250103_000000.dump`, {created_at: daysAgo(50), ledger_version: 16, purpose: 'dryrun'})
    const nself = path.join(dir, 'nchat_20200101_000000.dump')
    copyFileSync(real.file, nself)
    appendFileSync(manual, 'x')

    const list = await backups(db.name, dir, '--json')
    expect(list.code, list.stderr).toBe(0)
    const doc = parseJson(list.stdout)
    const byFile = Object.fromEntries(doc.backups.map((b: {file: string}) => [b.file, b]))
    expect(doc.backups).toHaveLength(5)
    expect(byFile[real.file]).toMatchObject({database: db.name, ledgerVersion: 12, madeBy: 'nself-e2ee', purpose: 'pre-migration', verified: true})
    expect(byFile[real.file].ageDays).toBeCloseTo(20, 0)
    expect(byFile[real.file].protectedBecause).toMatch(new RegExp(`newest pre-migration backup, and ${db.name} is at 16`))
    expect(byFile[older].protectedBecause).toBeNull()
    expect(byFile[manual].verified).toBe(false)
    expect(byFile[nself]).toMatchObject({database: null, madeBy: 'nself', verified: null})
    expect(byFile[nself].ageDays).toBeGreaterThan(365)

    const noYes = await backups(db.name, dir, '--older-than', '15')
    expect(noYes.code).toBe(2)
    const dryRun = await backups(db.name, dir, '--older-than', '15', '--dry-run', '--json')
    expect(dryRun.code, dryRun.stderr).toBe(0)
    expect(parseJson(dryRun.stdout).wouldPrune.sort()).toEqual([older, dry, nself].sort())
    expect([real.file, older, manual, dry, nself].every((f) => existsSync(f))).toBe(true)

    const pruned = await backups(db.name, dir, '--older-than', '15', '--yes', '--json')
    expect(pruned.code, pruned.stderr).toBe(0)
    expect(parseJson(pruned.stdout).pruned.sort()).toEqual([older, dry, nself].sort())
    for (const f of [older, dry, nself]) expect(existsSync(f)).toBe(false)
    expect((await listBackups(dir)).map((b) => b.file).sort()).toEqual([real.file, manual].sort())
    expect(existsSync(real.manifestFile)).toBe(true)

    const keep0 = await backups(db.name, dir, '--keep', '0', '--yes')
    expect(keep0.code, keep0.stderr).toBe(0)
    expect(keep0.stdout).toMatch(/Deleted 1 backup\(s\), dropped 0 kept database\(s\); 1 protected backup\(s\) kept\./)
    expect((await listBackups(dir)).map((b) => b.file)).toEqual([real.file])
  })

  it('refuses a negative --keep or --older-than in one sentence naming it, deleting nothing, also with --json', async () => {
    const db = await fresh()
    const dir = backupDir()
    const file = path.join(dir, 'nchat_20200101_000000.dump')
    mkdirSync(dir, {recursive: true})
    writeFileSync(file, 'PGDMP', {mode: 0o600})
    for (const [flag, value] of [
      ['--keep', '-1'],
      ['--older-than', '-2'],
    ]) {
      const r = await backups(db.name, dir, '--yes', '--json', `${flag}=${value}`)
      expect(r.code, `${flag} ${value}`).toBe(2)
      expect(parseJson(r.stdout)).toMatchObject({
        error: {message: expect.stringContaining(`Parsing ${flag}: Expected an integer greater than or equal to 0`)},
        ok: false,
      })
      expect(r.stderr).not.toMatch(/\n\s+at /)
    }
    expect(existsSync(file)).toBe(true)
  })

  it('lists the databases a restore rollback kept, with their size, and drops them on request', async () => {
    const db = await fresh()
    const kept = `${db.name}_pre_rollback_20260101_000000`
    const other = `${db.name}_other_copy`
    const admin = connect('postgres')
    await admin.unsafe(`create database "${kept}"`)
    await admin.unsafe(`create database "${other}"`)
    await admin.end()
    const dir = backupDir()

    const list = await backups(db.name, dir, '--json')
    expect(list.code, list.stderr).toBe(0)
    const doc = parseJson(list.stdout)
    expect(doc.kept).toHaveLength(1)
    expect(doc.kept[0]).toMatchObject({connections: 0, name: kept})
    expect(doc.kept[0].bytes).toBeGreaterThan(1_000_000)

    const noYes = await backups(db.name, dir, '--drop-kept')
    expect(noYes.code).toBe(2)

    // A session on the kept database: refused, naming it.
    const busy = postgres({...ADMIN, database: kept, idle_timeout: 0, max: 1})
    await busy`select 1`
    const refused = await backups(db.name, dir, '--drop-kept', '--yes')
    expect(refused.code).toBe(1)
    expect(refused.stderr).toContain(`The kept database ${kept} was not dropped: sessions are connected to it.`)
    await busy.end()

    const dropped = await backups(db.name, dir, '--drop-kept', '--yes', '--json')
    expect(dropped.code, dropped.stderr).toBe(0)
    expect(parseJson(dropped.stdout).dropped).toEqual([kept])
    const check = connect('postgres')
    const names = (await check<{n: string}[]>`select datname as n from pg_database where datname like ${`${db.name}%`}`).map((r) => r.n).sort()
    await check.end()
    expect(names).toEqual([db.name, other].sort())
  })
})
