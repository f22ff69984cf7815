import {execFile} from 'node:child_process'
import {readFileSync} from 'node:fs'
import path from 'node:path'
import {promisify} from 'node:util'

import {describe, expect, it} from 'vitest'

import {buildSchedule, shellQuote} from '../../src/maintain/schedule.js'
import {e2eScope, makeProject, parseJson, runCli} from '../helpers/cli.js'
import {ADMIN} from '../helpers/fixture.js'
import {classCounts, migrateAndSeed} from '../helpers/maintain.js'

const execFileP = promisify(execFile)
const {cleanups, fresh} = e2eScope()

describe('maintain schedule', () => {
  it("prints a crontab entry that, run as cron would (empty environment, from $HOME), cleans up the project's database", async () => {
    const db = await fresh()
    const expected = await migrateAndSeed(db.name, {auditRows: 1000, devices: 3, prekeysPerDevice: 10})
    const project = makeProject({
      POSTGRES_DB: db.name,
      POSTGRES_HOST: ADMIN.host,
      POSTGRES_PASSWORD: 'secret-not-on-the-line',
      POSTGRES_PORT: String(ADMIN.port),
      POSTGRES_USER: 'postgres',
      PROJECT_NAME: 'nchat',
    })
    cleanups.push(project.cleanup)
    const r = await runCli(['db', 'e2ee', 'maintain', 'schedule', '--json', '--project-dir', project.dir, '--at', '04:05'])
    expect(r.code, r.stderr).toBe(0)
    const doc = parseJson(r.stdout)
    expect(doc.cron).toMatch(/^5 4 \* \* \* cd /)
    expect(doc.cron).toContain('maintain cleanup --yes --json')
    expect(doc.cron).not.toContain('secret-not-on-the-line')
    expect(doc.nselfCron).toMatch(/nself e2ee maintain cleanup --yes --json/)
    const pathLine = doc.lines.find((l: string) => l.startsWith('PATH='))

    // The command part of the entry, in cron's conditions.
    const command = doc.cron.split(' ').slice(5).join(' ')
    await execFileP('/bin/sh', ['-c', command], {cwd: '/', env: {HOME: '/tmp', PATH: pathLine.slice(5)}})
    const log = readFileSync(path.join(project.dir, 'logs', 'nself-e2ee-cleanup.log'), 'utf8')
    const run = JSON.parse(log)
    expect(run).toMatchObject({database: db.name, deleted: expected.auditDelete + expected.prekeyDelete, ok: true})
    expect(await classCounts(db.name)).toMatchObject({auditOld: 0, prekeyOld: 0})

    const human = await runCli(['db', 'e2ee', 'maintain', 'schedule', '--project-dir', project.dir])
    expect(human.stdout).toMatch(/^17 3 \* \* \* cd /m)
    expect(human.stdout).toMatch(/this command installs nothing/)
    const bad = await runCli(['db', 'e2ee', 'maintain', 'schedule', '--project-dir', project.dir, '--at', '25:00'])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toMatch(/The time "25:00" is not a time of day as HH:MM\./)
  })

  it('quotes paths for the shell', () => {
    expect(shellQuote("/srv/it's here")).toBe(`'/srv/it'\\''s here'`)
    const s = buildSchedule({
      at: '3:07',
      binPath: '/p/bin/run.js',
      cleanupArgs: ['--audit-days', '180'],
      logFile: 'l/x.log',
      nodePath: '/usr/bin/node',
      pathEnv: '/usr/bin',
      projectDir: '/srv/a b',
    })
    expect(s.cron).toBe(
      `7 3 * * * cd '/srv/a b' && mkdir -p '/srv/a b/l' && flock -n '/srv/a b/l/.nself-e2ee-cleanup.lock' /usr/bin/node /p/bin/run.js db e2ee maintain cleanup --yes --json --audit-days 180 >> '/srv/a b/l/x.log' 2>&1`,
    )
  })
})
