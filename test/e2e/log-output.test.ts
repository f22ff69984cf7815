// Output made for logs (issue 11): piped or in CI, the commands print a bounded number of progress lines per step,
// never the same line twice in a row, each error once, and the summary a terminal gets, with the total time.
import {describe, expect, it} from 'vitest'

import {connect} from '../helpers/fixture.js'
import {migrateAndSeed} from '../helpers/maintain.js'
import {e2eScope, localArgs, parseJson, runCli} from '../helpers/cli.js'

const {backupDir, fresh} = e2eScope()

/** Milliseconds of a time as fmtMs prints it ("12 ms", "1.2 s", "2 min 3 s"), rounded up to its precision. */
function parseMs(text: string): number {
  let m = /^(\d+) ms$/.exec(text)
  if (m) return Number(m[1]) + 1
  m = /^(\d+(?:\.\d)?) s$/.exec(text)
  if (m) return Number(m[1]) * 1000 + 100
  m = /^(\d+) min (\d+) s$/.exec(text)
  if (m) return (Number(m[1]) * 60 + Number(m[2]) + 1) * 1000
  throw new Error(`not a time: ${text}`)
}

interface StepLog {
  title: string
  progress: string[]
  ms: number
  end: 'COMPLETED' | 'FAILED' | 'SKIPPED'
}

/** The steps of a log: each step's progress lines and the time its COMPLETED or FAILED line gives. */
function stepsOf(stdout: string): StepLog[] {
  const steps: StepLog[] = []
  let open: {title: string; progress: string[]} | null = null
  for (const line of stdout.split('\n')) {
    const m = /^\[(STARTED|PROGRESS|OUTPUT|COMPLETED|FAILED|SKIPPED)\] (.*)$/.exec(line)
    if (!m) continue
    const [, tag, text] = m
    if (tag === 'STARTED') open = {progress: [], title: text}
    else if (tag === 'PROGRESS') open!.progress.push(text)
    else if (tag === 'COMPLETED' || tag === 'FAILED') {
      const took = /\((?:took|after) ([^()]+)\)$/.exec(text)
      expect(took, line).not.toBeNull()
      steps.push({end: tag, ms: parseMs(took![1]), progress: open!.progress, title: open!.title})
      open = null
    }
  }
  return steps
}

function expectNoRepeats(output: string): void {
  const lines = output.split('\n').filter((l) => l.trim() !== '')
  for (let i = 1; i < lines.length; i++) expect(lines[i], `line ${i + 1} repeats the line before it`).not.toBe(lines[i - 1])
}

/** "preflight 102 ms, dump 365 ms, dryrun 3.8 s (total 4.3 s)" → the steps' times and the total. */
function stepsLine(stdout: string): {steps: number[]; total: number} {
  const m = /^Steps {7}(.*) \(total ([^()]+)\)$/m.exec(stdout)
  expect(m, stdout).not.toBeNull()
  const steps = m![1].split(', ').map((s) => parseMs(s.replace(/^\S+ /, '')))
  return {steps, total: parseMs(m![2])}
}

describe('output made for logs (piped, CI)', () => {
  it('dryrun: per step at most one progress line per interval plus the last, no line repeated, the summary with the total time', async () => {
    const db = await fresh({messages: 20_000})
    const intervalS = 1
    const r = await runCli(['db', 'e2ee', 'dryrun', ...localArgs(db.name), '--backup-dir', backupDir(), '--progress-interval', String(intervalS)])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stderr).toBe('')
    const steps = stepsOf(r.stdout)
    expect(steps.map((s) => s.end)).toEqual(['COMPLETED', 'COMPLETED', 'COMPLETED'])
    for (const s of steps) {
      // At most one line per interval from the step's start, and its last state at the end.
      expect(s.progress.length, `${s.title}: ${s.progress.join(' | ')}`).toBeLessThanOrEqual(Math.floor(s.ms / (intervalS * 1000)) + 1)
    }
    expectNoRepeats(r.stdout)
    const {steps: times, total} = stepsLine(r.stdout)
    expect(times).toHaveLength(3)
    expect(total).toBeGreaterThanOrEqual(Math.max(...times))
    expect(r.stdout).toMatch(/^Production was only read; nothing in it changed\.$/m)
    // The outline: one line per migration and the statements that lock tables that exist now, not every statement.
    expect(r.stdout).toMatch(/^ {2}014_e2ee_system +\d+ statements in /m)
    expect(r.stdout).toMatch(/^ {2}014 line \d+ +in tx .*ALTER TABLE nchat_messages ADD COLUMN.*\[AccessExclusiveLock on nchat_messages\]$/m)
    expect(r.stdout).not.toMatch(/CREATE INDEX IF NOT EXISTS idx_identity_keys_user_id/)

    const verbose = await runCli(['db', 'e2ee', 'dryrun', ...localArgs(db.name), '--backup-dir', backupDir(), '--verbose'])
    expect(verbose.code, verbose.stderr).toBe(0)
    expect(verbose.stdout).toMatch(/CREATE INDEX IF NOT EXISTS idx_identity_keys_user_id/)
  })

  it('the interval is the one configured: the default 5 s, 0 (every change) from the environment, nothing below 0', async () => {
    const db = await fresh({messages: 20_000})
    const r = await runCli(['db', 'e2ee', 'dryrun', ...localArgs(db.name), '--backup-dir', backupDir()])
    expect(r.code, r.stderr).toBe(0)
    const throttled = stepsOf(r.stdout)
    for (const s of throttled) expect(s.progress.length, s.title).toBeLessThanOrEqual(Math.floor(s.ms / 5000) + 1)
    // 0 (here from the environment, as CI jobs set it): every change, still never the same line twice in a row.
    const every = await runCli(['db', 'e2ee', 'dryrun', ...localArgs(db.name), '--backup-dir', backupDir()], {env: {NSELF_E2EE_PROGRESS_INTERVAL: '0'}})
    expect(every.code, every.stderr).toBe(0)
    const count = (steps: StepLog[]) => steps.reduce((n, s) => n + s.progress.length, 0)
    expect(count(stepsOf(every.stdout))).toBeGreaterThan(count(throttled))
    expectNoRepeats(every.stdout)
    const bad = await runCli(['db', 'e2ee', 'dryrun', ...localArgs(db.name), '--progress-interval', '-1'])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toMatch(/progress-interval/)
    expect(bad.stderr).not.toMatch(/\n\s+at /)
  })

  it('an error appears once on stderr, and the failed step is named on stdout without it', async () => {
    const db = await fresh({messages: 100})
    const r = await runCli(['db', 'e2ee', 'dryrun', ...localArgs(db.name), '--from-backup', '/nonexistent/nchat_20260101_000000.dump'])
    expect(r.code).toBe(1)
    const message = 'The backup file /nonexistent/nchat_20260101_000000.dump does not exist.'
    expect(r.stderr.split(message).length - 1, r.stderr).toBe(1)
    expect(r.stdout).not.toContain(message)
    expect(stepsOf(r.stdout).at(-1)).toMatchObject({end: 'FAILED', title: 'Backup'})

    const json = await runCli(['db', 'e2ee', 'dryrun', '--json', ...localArgs(db.name), '--from-backup', '/nonexistent/nchat_20260101_000000.dump'])
    expect(json.code).toBe(1)
    expect(parseJson(json.stdout).error.message).toBe(message)
    expect(json.stderr.split(message).length - 1).toBe(1)
  })

  it("--json stays one document, with the total time and each step's", async () => {
    const db = await fresh({messages: 500})
    const r = await runCli(['db', 'e2ee', 'dryrun', '--json', ...localArgs(db.name), '--backup-dir', backupDir()])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stderr).toBe('')
    const s = parseJson(r.stdout)
    // No backup: the standalone dry run's rehearsal dump is the 'dump' step.
    expect(Object.keys(s.timings)).toEqual(['preflight', 'dump', 'dryrun'])
    expect(s.elapsedMs).toBeGreaterThanOrEqual(Object.values<number>(s.timings).reduce((a, b) => a + b, 0))
    expect(s.statements.length).toBeGreaterThan(100)
    expect(s.existingTables.sort()).toEqual(['nchat_channels', 'nchat_messages', 'nchat_users'])
  })

  it('migrate and rollback piped: bounded progress, no repeats, summaries with the total time; verify shows failures first with a count, --verbose every check', async () => {
    const db = await fresh({messages: 5000})
    const dir = backupDir()
    const m = await runCli(['db', 'e2ee', 'migrate', '--yes', ...localArgs(db.name), '--backup-dir', dir, '--progress-interval', '2'])
    expect(m.code, m.stderr).toBe(0)
    expect(m.stderr).toBe('')
    for (const s of stepsOf(m.stdout)) expect(s.progress.length, s.title).toBeLessThanOrEqual(Math.floor(s.ms / 2000) + 1)
    expectNoRepeats(m.stdout)
    const ms = stepsLine(m.stdout)
    expect(ms.steps.length).toBeGreaterThanOrEqual(5)
    expect(ms.total).toBeGreaterThanOrEqual(Math.max(...ms.steps))

    const ok = await runCli(['db', 'e2ee', 'verify', ...localArgs(db.name)])
    expect(ok.code, ok.stderr).toBe(0)
    expect(ok.stdout).not.toMatch(/^ {2}ok /m)
    expect(ok.stdout).toMatch(/up to migration 16: \d+ checks passed, in /)

    const sql = connect(db.name)
    await sql`drop index idx_messages_encrypted`
    await sql.end()
    const all = parseJson((await runCli(['db', 'e2ee', 'verify', '--json', ...localArgs(db.name)])).stdout)
    expect(all.elapsedMs).toBeGreaterThan(0)
    const passed = all.checks.filter((c: {status: string}) => c.status === 'ok').length
    const failed = all.checks.filter((c: {status: string}) => c.status === 'fail').length
    expect(failed).toBeGreaterThan(0)

    const bad = await runCli(['db', 'e2ee', 'verify', ...localArgs(db.name)])
    expect(bad.code).toBe(1)
    const lines = bad.stdout.split('\n').filter(Boolean)
    expect(lines[0]).toMatch(/^ {2}FAIL {2}index idx_messages_encrypted: /)
    expect(lines.filter((l) => /^ {2}FAIL /.test(l))).toHaveLength(failed)
    expect(bad.stdout).not.toMatch(/^ {2}ok /m)
    expect(bad.stdout).toContain(`${failed} failed`)
    expect(bad.stdout).toMatch(new RegExp(`${passed} passed \\(of ${all.checks.length} checks\\), in `))
    expect(bad.stderr.split('index idx_messages_encrypted on nchat_messages is missing').length - 1).toBe(1)

    const verbose = await runCli(['db', 'e2ee', 'verify', '--verbose', ...localArgs(db.name)])
    expect(verbose.code).toBe(1)
    const vl = verbose.stdout.split('\n').filter(Boolean)
    expect(vl[0]).toMatch(/^ {2}FAIL /)
    expect(vl.filter((l) => /^ {2}ok {4}/.test(l))).toHaveLength(passed)
    expect(vl.filter((l) => /^ {2}(ok {2}|WARN|FAIL) {2}/.test(l))).toHaveLength(all.checks.length)

    const rb = await runCli(['db', 'e2ee', 'rollback', '--strategy', 'down', '--yes', ...localArgs(db.name), '--backup-dir', dir, '--progress-interval', '2'])
    expect(rb.code, rb.stderr).toBe(0)
    for (const s of stepsOf(rb.stdout)) expect(s.progress.length, s.title).toBeLessThanOrEqual(Math.floor(s.ms / 2000) + 1)
    expectNoRepeats(rb.stdout)
    const rs = stepsLine(rb.stdout)
    expect(rs.total).toBeGreaterThanOrEqual(Math.max(...rs.steps))
  })

  it("maintain cleanup: each table's time and the total beside the time of the deletes; elapsedMs in --json", async () => {
    const db = await fresh({messages: 100})
    await migrateAndSeed(db.name, {auditRows: 3000, devices: 20, prekeysPerDevice: 20})
    const r = await runCli(['db', 'e2ee', 'maintain', 'cleanup', '--yes', ...localArgs(db.name)])
    expect(r.code, r.stderr).toBe(0)
    const tables = r.stdout.split('\n').filter((l) => /: deleted \d+ of \d+/.test(l))
    expect(tables).toHaveLength(2)
    const times = tables.map((l) => parseMs(/ of \d+ in ([^,]+), /.exec(l)![1]))
    const m = /^Deleted \d+ row\(s\) in ([^(]+) \(total ([^,]+), counting and confirmation included\)\.$/m.exec(r.stdout)
    expect(m, r.stdout).not.toBeNull()
    expect(parseMs(m![2])).toBeGreaterThanOrEqual(parseMs(m![1]) - 100)
    expect(parseMs(m![2])).toBeGreaterThanOrEqual(Math.max(...times) - 100)

    const other = await fresh({messages: 100})
    await migrateAndSeed(other.name, {auditRows: 300, devices: 2, prekeysPerDevice: 2})
    const json = await runCli(['db', 'e2ee', 'maintain', 'cleanup', '--yes', '--json', ...localArgs(other.name)])
    expect(json.code, json.stderr).toBe(0)
    const doc = parseJson(json.stdout)
    expect(doc.deleted).toBeGreaterThan(0)
    expect(doc.elapsedMs).toBeGreaterThanOrEqual(doc.durationMs)
  })
})
