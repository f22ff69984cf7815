// The fault table as data: for each step of migrate and rollback, how to hold the CLI at that step by observable
// state (a lock or a snapshot the test holds, the CLI's own log line), and what the outcome must be for each
// fault. test/faults/*.test.ts run these against a private cluster; docs/reliability.md lists them.

import {randomBytes} from 'node:crypto'
import {appendFileSync, writeFileSync} from 'node:fs'
import path from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {tmpDir} from '../helpers/cli.js'
import {PrivateCluster} from '../helpers/cluster.js'
import {
  CliRun,
  deliver,
  errorMessage,
  type Fault,
  Hold,
  indexBuildWaits,
  isOneTrueSentence,
  type Leftovers,
  noDebris,
  toolSessions,
  toolWaitsOnLock,
  untouched,
  until,
  v030Digest,
  whatIsLeft,
} from '../helpers/faults.js'

export interface Ctx {
  cluster: PrivateCluster
  db: string
  backupDir: string
  /** A file of the row's own: its existence ends a test pause (src/test-pause.ts). */
  resumeFile: string
  run?: CliRun
  holds: Array<Pick<Hold, 'release'>>
}

/** Where the step sits: decides what "nothing half-done" means right after the fault. */
type Phase = 'before apply' | 'apply' | 'after apply' | 'rollback restore' | 'rollback swap'

export interface Scenario {
  step: string
  command: 'migrate' | 'rollback'
  phase: Phase
  /** Words an error message about this step must use. */
  names: RegExp
  /** Messages in the v0.3.0 database (more where the step is held by its length rather than by a lock). */
  messages?: number
  /**
   * Users in it: the dry-run copy restores the rows of nchat_users but not those of the messages (it leaves them
   * out), so a step held by the copy's restore is made long by users.
   */
  users?: number
  /** Holds taken before the CLI starts. */
  prepare?: (c: Ctx) => Promise<void>
  /** Extra environment of the CLI (a test pause). */
  env?: (c: Ctx) => Record<string, string>
  /** Resolves when the CLI is at the step (held there where possible). */
  reach: (c: Ctx) => Promise<void>
}

const started = (c: Ctx, title: string) => until(`"[STARTED] ${title}"`, () => c.run!.output.includes(`[STARTED] ${title}`), {run: c.run})
const notCompleted = (c: Ctx, title: string) => {
  if (c.run!.output.includes(`[COMPLETED] ${title}`)) throw new Error(`the step "${title}" completed before the fault could be delivered`)
}
const waitsOnLock = (c: Ctx, what: string, pattern?: RegExp) =>
  until(`the CLI to wait for a lock (${what})`, () => toolWaitsOnLock(c.cluster, pattern), {run: c.run})

/** Hold CONCURRENTLY builds with old snapshots, moving on one build at a time; resolves with the held build's snapshot. */
async function stallIndexBuild(c: Ctx, nth: number): Promise<void> {
  const builds = ['idx_messages_encrypted', 'idx_messages_sender_device', 'idx_channels_enforce_encryption']
  for (let i = 0; i <= nth; i++) {
    await until(`the build of ${builds[i]} to wait for old snapshots`, () => indexBuildWaits(c.cluster, c.db, builds[i]), {run: c.run})
    if (i < nth) {
      // A newer snapshot holds the next build; ending the old one lets this build finish.
      const next = await Hold.snapshot(c.cluster, c.db)
      const old = c.holds.pop()!
      c.holds.push(next)
      await old.release()
    }
  }
}

const snapshotFirst = async (c: Ctx) => {
  c.holds.push(await Hold.snapshot(c.cluster, c.db))
}

/** From the last index build held, queue `mode` on nchat_messages behind VALIDATE, so the step after it waits. */
async function pastValidate(c: Ctx, mode: string): Promise<void> {
  await stallIndexBuild(c, 2)
  const validateHold = await Hold.lock(c.cluster, c.db, 'nchat_messages', 'share update exclusive')
  await validateHold.acquired
  const snap = c.holds.pop()!
  c.holds.push(validateHold)
  await snap.release()
  await waitsOnLock(c, 'VALIDATE CONSTRAINT', /validate constraint/i)
  // Queued behind VALIDATE's request: granted once VALIDATE is done, before verify or vacuum need the table.
  const after = await Hold.lock(c.cluster, c.db, 'nchat_messages', mode)
  c.holds.push(after)
  // pg_locks spells the mode as one word: 'share update exclusive' -> 'ShareUpdateExclusiveLock'.
  const lockMode = `${mode
    .split(' ')
    .map((w) => w[0].toUpperCase() + w.slice(1))
    .join('')}Lock`
  await until(
    "the test's lock to queue behind VALIDATE",
    async () =>
      c.cluster.with(
        c.db,
        async (sql) => (await sql`select 1 from pg_locks where not granted and relation = 'public.nchat_messages'::regclass and mode = ${lockMode}`).length > 0,
      ),
    {run: c.run},
  )
  c.holds.splice(c.holds.indexOf(validateHold), 1)
  await validateHold.release()
  await after.acquired
}

export const SCENARIOS: Scenario[] = [
  {
    command: 'migrate',
    names: /preflight/i,
    phase: 'before apply',
    step: 'preflight',
    // The ledger locked: reading the plan waits.
    prepare: async (c) => {
      c.holds.push(await Hold.lock(c.cluster, c.db, 'schema_migrations', 'access exclusive', true))
    },
    reach: async (c) => {
      await started(c, 'Preflight')
      await waitsOnLock(c, 'preflight')
      notCompleted(c, 'Preflight')
    },
  },
  {
    command: 'migrate',
    names: /backup|pg_dump/i,
    phase: 'before apply',
    step: 'backup',
    // pg_dump locks every table it dumps: once the preflight (which sizes every table) is done, the test locks an
    // application table the migrations never touch, so pg_dump waits on it.
    prepare: async (c) => {
      await c.cluster.with(c.db, (sql) => sql`create table public.app_uploads (id bigint primary key)`)
    },
    reach: async (c) => {
      await until('the preflight to complete', () => c.run!.output.includes('[COMPLETED] Preflight'), {run: c.run})
      c.holds.push(await Hold.lock(c.cluster, c.db, 'app_uploads', 'access exclusive', true))
      await waitsOnLock(c, 'pg_dump')
      notCompleted(c, 'Backup')
    },
  },
  {
    command: 'migrate',
    messages: 20_000,
    names: /dry.run|clone|cop(y|ies)/i,
    phase: 'before apply',
    step: 'clone restore',
    users: 200_000,
    reach: async (c) => {
      await until('pg_restore into the dry-run clone', () => /restoring: \d+\/\d+ archive entries \(creating TABLE/.test(c.run!.output), {run: c.run})
      await until('a session of the tool on the clone', async () => (await toolSessions(c.cluster)).some((s) => /_dryrun_/.test(s.datname ?? '')), {run: c.run})
      notCompleted(c, 'Dry run')
    },
  },
  {
    command: 'migrate',
    names: /migration|01[3-6]_|apply/i,
    phase: 'apply',
    step: 'apply, waiting on a lock',
    // A long read on nchat_users: the apply waits for it (without queueing writers behind).
    prepare: async (c) => {
      c.holds.push(await Hold.lock(c.cluster, c.db, 'nchat_users', 'access share', true))
    },
    reach: async (c) => {
      await started(c, 'Apply to production')
      await until(
        'the apply to wait for the long read',
        async () =>
          /waiting[^\n]*(lock|finish)/i.test(c.run!.output.slice(c.run!.output.indexOf('[STARTED] Apply to production'))) || toolWaitsOnLock(c.cluster),
        {run: c.run},
      )
    },
  },
  ...[0, 1, 2].map(
    (n): Scenario => ({
      command: 'migrate',
      names: /index|idx_|014_e2ee_system/i,
      phase: 'apply',
      prepare: snapshotFirst,
      reach: (c) => stallIndexBuild(c, n),
      step: `CONCURRENTLY build ${n + 1}/3 (${['idx_messages_encrypted', 'idx_messages_sender_device', 'idx_channels_enforce_encryption'][n]})`,
    }),
  ),
  {
    command: 'migrate',
    names: /constraint|fk_messages_sender_device|validat|014_e2ee_system/i,
    phase: 'apply',
    step: 'VALIDATE CONSTRAINT',
    prepare: snapshotFirst,
    reach: async (c) => {
      await stallIndexBuild(c, 2)
      const hold = await Hold.lock(c.cluster, c.db, 'nchat_messages', 'share update exclusive')
      await hold.acquired
      const snap = c.holds.pop()!
      c.holds.push(hold)
      await snap.release()
      await waitsOnLock(c, 'VALIDATE CONSTRAINT', /validate constraint/i)
    },
  },
  {
    command: 'migrate',
    names: /verif/i,
    phase: 'after apply',
    step: 'verify',
    prepare: snapshotFirst,
    reach: async (c) => {
      await pastValidate(c, 'access exclusive')
      await started(c, 'Verify')
      await waitsOnLock(c, 'verify')
      notCompleted(c, 'Verify')
    },
  },
  {
    command: 'migrate',
    names: /vacuum/i,
    phase: 'after apply',
    step: 'vacuum',
    prepare: snapshotFirst,
    reach: async (c) => {
      await pastValidate(c, 'share update exclusive')
      await started(c, 'Vacuum and analyze')
      await waitsOnLock(c, 'VACUUM', /vacuum/i)
    },
  },
  {
    command: 'rollback',
    messages: 20_000,
    names: /restor/i,
    phase: 'rollback restore',
    step: 'rollback restore',
    reach: async (c) => {
      await until('pg_restore into the rollback copy', () => /restoring: \d+\/\d+ archive entries/.test(c.run!.output), {run: c.run})
      await until('a session of the tool on the restore copy', async () => (await toolSessions(c.cluster)).some((s) => /_restore_/.test(s.datname ?? '')), {
        run: c.run,
      })
      notCompleted(c, 'Restore into a new database')
    },
  },
  {
    command: 'rollback',
    names: /swap/i,
    phase: 'rollback swap',
    step: 'rollback swap',
    // The swap is one transaction (src/steps/restore.ts): held inside it, both renames done and not committed,
    // by the test pause `swap:renamed`; releasing the hold lets it go on to COMMIT.
    env: (c) => ({NSELF_E2EE_TEST_PAUSE: 'swap:renamed', NSELF_E2EE_TEST_RESUME: c.resumeFile}),
    reach: async (c) => {
      await until('the swap to pause inside its transaction', () => c.run!.stderr.includes('[test-pause] swap:renamed'), {run: c.run})
      c.holds.push({
        release: async () => {
          writeFileSync(c.resumeFile, '')
        },
      })
    },
  },
  {
    command: 'rollback',
    names: /swap/i,
    phase: 'rollback swap',
    step: 'rollback swap, just committed',
    // The same, a moment later: the swap has committed and the rollback has not ended yet.
    env: (c) => ({NSELF_E2EE_TEST_PAUSE: 'rollback:swapped', NSELF_E2EE_TEST_RESUME: c.resumeFile}),
    reach: async (c) => {
      await until('the rollback to pause after its swap committed', () => c.run!.stderr.includes('[test-pause] rollback:swapped'), {run: c.run})
      c.holds.push({
        release: async () => {
          writeFileSync(c.resumeFile, '')
        },
      })
    },
  },
]

// ------------------------------------------------------------------------------------------------------------

export function uniqueDb(prefix = 'flt'): string {
  return `${prefix}_${randomBytes(4).toString('hex')}`
}

export function cliArgs(command: string, c: {db: string; backupDir: string}, extra: string[] = []): string[] {
  return [command, '--yes', '--local', '--database', c.db, '--backup-dir', c.backupDir, ...extra]
}

/** Run a command to its end. */
export async function runToEnd(
  cluster: PrivateCluster,
  args: string[],
  env: Record<string, string> = {},
): Promise<{code: number | null; out: string; stderr: string}> {
  const run = new CliRun(args, {...cluster.env(), ...env})
  const r = await run.done
  return {code: r.code, out: r.stdout + r.stderr, stderr: r.stderr}
}

// "nothing was undone" (vacuum, verify) is the opposite claim.
const UNDONE_CLAIM = /(?<!nothing was )undone|as it was|(was|were) not (changed|touched)|untouched|nothing was changed/i
/** What a message about an interrupted swap says of the live database. */
const OLD_DATABASE_SAID = /untouched/i
const NEW_DATABASE_SAID = /now holds the restored/i
const SIGNAL_CODE: Partial<Record<Fault, number>> = {'Ctrl+C': 130, SIGTERM: 143}

export interface CaseResult {
  fault: Fault
  scenario: Scenario
  exit: string
  message: string
  left: Leftovers
  rerun: string
}

/**
 * One row of the table: fresh database, (for rollback: a finished migrate first), hold at the step, deliver the
 * fault, then check the outcome and that a plain rerun of the same command finishes.
 */
export async function runCase(cluster: PrivateCluster, sc: Scenario, fault: Fault): Promise<void> {
  const t0 = Date.now()
  const mark = (what: string) => {
    if (process.env.FAULT_DEBUG) console.log(`${sc.step} × ${fault}: ${what} at ${Date.now() - t0} ms`)
  }
  const db = uniqueDb()
  const dir = tmpDir('e2ee-flt-')
  const backupDir = path.join(dir.dir, 'backups')
  await cluster.createV030(db, {messages: sc.messages ?? 2000, users: sc.users})
  const c: Ctx = {backupDir, cluster, db, holds: [], resumeFile: path.join(dir.dir, 'resume')}
  const record: Record<string, unknown> = {fault, step: sc.step}
  try {
    const digest = await v030Digest(cluster, db)
    mark('database made')
    if (sc.command === 'rollback') {
      const m = await runToEnd(cluster, cliArgs('migrate', c))
      expect(m.code, m.out).toBe(0)
    }
    await sc.prepare?.(c)
    c.run = new CliRun(cliArgs(sc.command, c), {...cluster.env(), ...sc.env?.(c)})
    try {
      await sc.reach(c)
      mark('step reached')
      await deliver(fault, c.run, cluster)
    } finally {
      for (const h of c.holds.reverse()) await h.release()
    }
    const r = await c.run.done
    mark('CLI ended')
    const out = r.stdout + r.stderr
    const left = await whatIsLeft(cluster, db, backupDir)
    const message = errorMessage(r.stderr)
    Object.assign(record, {code: r.code, left, message: message.split('\n')[0], signal: r.signal})
    const ctxMsg = `${sc.step} × ${fault}\n--- output ---\n${out.slice(-4000)}\n--- left ---\n${JSON.stringify({...left, objects: `${left.objects.length} of 013–016's objects`})}`

    // The exit code.
    if (fault === 'kill -9') expect(r.signal, ctxMsg).toBe('SIGKILL')
    else if (SIGNAL_CODE[fault]) expect(r.code, ctxMsg).toBe(SIGNAL_CODE[fault])
    else expect([0, 1], ctxMsg).toContain(r.code)

    // The message: one true sentence naming the step and the cause.
    if (fault !== 'kill -9' && r.code !== 0) {
      expect(isOneTrueSentence(message), ctxMsg).toBe(true)
      expect(message, ctxMsg).toMatch(sc.names)
      if (fault === 'Ctrl+C') expect(message, ctxMsg).toMatch(/Ctrl\+C/)
      if (fault === 'SIGTERM') {
        expect(message, ctxMsg).toMatch(/SIGTERM/)
        expect(message, ctxMsg).not.toMatch(/Ctrl\+C/)
      }
      if (fault === 'sessions ended' || fault === 'server restart') expect(message, ctxMsg).toMatch(/connection|server|terminat|shut/i)
      if (UNDONE_CLAIM.test(message.split('\n')[0]) && sc.command === 'migrate')
        expect(untouched(left), `${ctxMsg}\nthe message says nothing is changed`).toBe(true)
    }

    // Nothing lost (no writer ran, so every v0.3.0 row must be as it was).
    if (left.allowConn) expect(await v030Digest(cluster, db), ctxMsg).toEqual(digest)

    // Nothing half-done right after the fault.
    const orderly = fault !== 'kill -9' && fault !== 'server restart'
    switch (sc.phase) {
      case 'before apply':
        expect(untouched(left), ctxMsg).toBe(true)
        if (orderly) expect(noDebris(left), ctxMsg).toBe(true)
        break
      case 'apply':
        if (r.code === 0) expect(left.ledger, ctxMsg).toEqual([13, 14, 15, 16])
        else if (orderly) {
          expect(untouched(left), ctxMsg).toBe(true)
          expect(noDebris(left), ctxMsg).toBe(true)
        }
        break
      case 'after apply':
        expect(left.ledger, ctxMsg).toEqual([13, 14, 15, 16])
        expect(left.invalidIndexes, ctxMsg).toEqual([])
        if (fault !== 'kill -9') expect(message.split('\n')[0], ctxMsg).not.toMatch(UNDONE_CLAIM)
        if (orderly) expect(noDebris(left), ctxMsg).toBe(true)
        break
      case 'rollback restore':
        expect(left.ledger, ctxMsg).toEqual([13, 14, 15, 16])
        if (orderly) expect(noDebris(left), ctxMsg).toBe(true)
        break
      case 'rollback swap': {
        // The swap never closes the live database, and it is all or nothing: the old database (at 16, nothing
        // kept) or the restored one (at 12, the old one kept as <db>_pre_rollback_*); the message says which.
        expect(left.allowConn, ctxMsg).toBe(true)
        const kept = left.databases.some((d) => /_pre_rollback_/.test(d))
        const old = !kept && JSON.stringify(left.ledger) === '[13,14,15,16]'
        const restored = kept && left.ledger?.length === 0
        expect(old || restored, `${ctxMsg}\nneither the old database nor the restored one`).toBe(true)
        if (fault !== 'kill -9' && r.code !== 0) {
          expect(message.split('\n')[0], ctxMsg).toMatch(old ? OLD_DATABASE_SAID : NEW_DATABASE_SAID)
          expect(message.split('\n')[0], ctxMsg).not.toMatch(old ? NEW_DATABASE_SAID : OLD_DATABASE_SAID)
        }
        if (orderly)
          expect(
            left.databases.filter((d) => !/_pre_rollback_/.test(d)),
            ctxMsg,
          ).toEqual([])
        break
      }
    }

    mark('checked')
    // A plain rerun of the same command finishes, and clears what the fault left.
    if (sc.command === 'migrate') {
      const again = await runToEnd(cluster, cliArgs('migrate', c))
      record.rerun = again.code
      mark(
        `rerun ended:\n${again.out
          .split('\n')
          .filter((l) => !/ written$|restoring: /.test(l))
          .join('\n')}`,
      )
      expect(again.code, `rerun after ${ctxMsg}\n--- rerun ---\n${again.out.slice(-3000)}`).toBe(0)
      const v = await runToEnd(cluster, ['verify', '--local', '--database', db])
      expect(v.code, `verify after the rerun: ${v.out.slice(-2000)}`).toBe(0)
      const after = await whatIsLeft(cluster, db, backupDir)
      expect(after.ledger).toEqual([13, 14, 15, 16])
      expect(after.invalidIndexes).toEqual([])
      expect(after.notValidConstraints).toEqual([])
      expect(noDebris(after), `after the rerun: ${JSON.stringify(after)}`).toBe(true)
    } else {
      const atStart = left.allowConn && left.ledger?.length === 0
      if (!atStart) {
        const again = await runToEnd(cluster, cliArgs('rollback', c))
        record.rerun = again.code
        expect(again.code, `rerun after ${ctxMsg}\n--- rerun ---\n${again.out.slice(-3000)}`).toBe(0)
      }
      const after = await whatIsLeft(cluster, db, backupDir)
      expect(after.ledger, JSON.stringify(after)).toEqual([])
      expect(after.objects).toEqual([])
      expect(after.allowConn).toBe(true)
      expect(after.partialFiles).toEqual([])
      expect(after.sessions).toBe(0)
      expect(
        after.databases.filter((d) => !/_pre_rollback_/.test(d)),
        JSON.stringify(after),
      ).toEqual([])
    }
    expect(await v030Digest(cluster, db)).toEqual(digest)
    mark('rerun checked')
    record.ok = true
  } catch (error) {
    record.ok = false
    const lines = String((error as Error).message).split('\n')
    record.failure = lines.find((l) => /expected|exited before|timed out|completed before|says nothing/.test(l))?.replace(/^\{.*?\}: /, '') ?? lines[0]
    record.tail = (c.run?.output ?? '')
      .split('\n')
      .filter((l) => !/ written$|restoring: /.test(l))
      .slice(-12)
      .join('\n')
    throw error
  } finally {
    if (process.env.FAULT_REPORT) appendFileSync(process.env.FAULT_REPORT, `${JSON.stringify(record)}\n`)
    for (const d of (await whatIsLeft(cluster, db).catch(() => ({databases: [] as string[]}))).databases) await cluster.dropDatabase(d).catch(() => {})
    await cluster.dropDatabase(db).catch(() => {})
    dir.cleanup()
  }
}

/** The rows of the table for one fault: every step (FAULT_STEP=<part of a step's name> picks some), on a private cluster started for the file. */
export function faultTable(fault: Fault): void {
  const only = process.env.FAULT_STEP
  const rows = SCENARIOS.filter((s) => !only || s.step.includes(only))
  describe(fault, () => {
    let cluster: PrivateCluster
    beforeAll(async () => {
      cluster = await PrivateCluster.start()
    }, 300_000)
    afterAll(async () => {
      await cluster?.destroy()
    }, 300_000)

    // Generous: on a loaded 2-core machine one row (a migrate to the step, the fault, a rerun, verify) can take minutes.
    it.each(rows.map((s) => ({s, step: s.step})))(
      'at $step',
      async ({s}) => {
        await runCase(cluster, s, fault)
      },
      900_000,
    )
  })
}
