#!/usr/bin/env node
// Prints the step × fault rows of docs/reliability.md from a fault run's report:
//   FAULT_REPORT=/tmp/faults.jsonl npx vitest run test/faults/        # kill -9, Ctrl+C, SIGTERM (+ the others)
//   FAULT_REPORT=/tmp/faults.jsonl npm run faults                     # ended sessions, server restart
//   node scripts/reliability-table.mjs /tmp/faults.jsonl [more.jsonl …]   (a later file's row wins)
// Each line of the report is one case as test/faults/scenarios.ts runCase saw it: exit, first line of the
// message, what was left, the rerun's exit, and whether every assertion held (with the first that did not).
import {readFileSync} from 'node:fs'

const STEPS = [
  'preflight',
  'backup',
  'clone restore',
  'apply, waiting on a lock',
  'CONCURRENTLY build 1/3 (idx_messages_encrypted)',
  'CONCURRENTLY build 2/3 (idx_messages_sender_device)',
  'CONCURRENTLY build 3/3 (idx_channels_enforce_encryption)',
  'VALIDATE CONSTRAINT',
  'verify',
  'vacuum',
  'rollback restore',
  'rollback swap',
  'rollback swap, just committed',
]
const FAULTS = ['kill -9', 'Ctrl+C', 'SIGTERM', 'sessions ended', 'server restart']
const FILE = {
  'Ctrl+C': 'test/faults/ctrl-c.test.ts',
  'kill -9': 'test/faults/kill-9.test.ts',
  'server restart': 'test/faults/server-restart.faults.ts',
  'sessions ended': 'test/faults/sessions-ended.faults.ts',
  SIGTERM: 'test/faults/sigterm.test.ts',
}

const rows = new Map()
for (const file of process.argv.slice(2)) {
  for (const line of readFileSync(file, 'utf8').split('\n').filter(Boolean)) {
    const r = JSON.parse(line)
    rows.set(`${r.step}|${r.fault}`, r)
  }
}

const cell = (s) =>
  String(s ?? '')
    .replaceAll('|', '\\|')
    .replaceAll('\n', ' ')
function left(l) {
  if (!l) return '?'
  if (l.allowConn === false) return `**${'database refuses connections'}**`
  if (l.allowConn === null) return '**database missing**'
  const parts = [`ledger ${l.ledger?.length ? l.ledger.join(',') : '12'}`]
  if (l.objects.length && !l.ledger?.length) parts.push(`${l.objects.length} objects of 013–016 without a ledger row`)
  if (l.invalidIndexes.length) parts.push(`INVALID ${l.invalidIndexes.join(', ')}`)
  if (l.notValidConstraints.length) parts.push(`NOT VALID ${l.notValidConstraints.join(', ')}`)
  if (l.databases.length) parts.push(`databases ${l.databases.map((d) => d.replace(/^flt_[0-9a-f]+/, '<db>')).join(', ')}`)
  if (l.partialFiles.length) parts.push(`${l.partialFiles.length} .partial file(s)`)
  if (l.sessions) parts.push(`${l.sessions} session(s) of the tool`)
  return parts.join('; ')
}

console.log('| step | fault | what happens (exit, message) | what is left | plain rerun | test | outcome now |')
console.log('|---|---|---|---|---|---|---|')
for (const step of STEPS) {
  for (const fault of FAULTS) {
    const r = rows.get(`${step}|${fault}`)
    const test = `\`${FILE[fault]}\` › ${fault} › at '${step}'`
    if (!r) {
      console.log(`| ${step} | ${fault} | not run | | | ${test} | not run |`)
      continue
    }
    const exit = r.signal ? `killed (${r.signal})` : r.code === undefined ? '?' : `exit ${r.code}`
    const rerun =
      r.rerun === undefined && r.earlier && r.ok
        ? 'finishes (exit 0)'
        : r.rerun === undefined
          ? r.ok
            ? 'not needed (already at the end state)'
            : 'not reached'
          : r.rerun === 0
            ? 'finishes (exit 0)'
            : `**fails (exit ${r.rerun})**`
    const outcome = r.ok ? 'pass' : `**fail**: ${cell(r.failure).slice(0, 160)}`
    console.log(`| ${step} | ${fault} | ${exit}${r.message ? `: ${cell(r.message).slice(0, 180)}` : ''} | ${left(r.left)} | ${rerun} | ${test} | ${outcome} |`)
  }
}
