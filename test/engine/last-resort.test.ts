import {spawnSync} from 'node:child_process'
import path from 'node:path'
import {pathToFileURL} from 'node:url'
import {describe, expect, it} from 'vitest'

import {REPO_ROOT} from '../helpers/fixture.js'

// The last line of defence, in a process of its own: postgres.js 3.4.9 throws its TypeError from a setImmediate
// (porsager/postgres 1199/1208), beyond any .catch. The handler must turn it into one sentence, run the
// registered undo, and exit non-zero. The undo is registered with the command's root scope, which the process
// hooks speak to (src/run/signals.ts).
const LAST_RESORT = pathToFileURL(path.join(REPO_ROOT, 'dist', 'last-resort.js')).href
const SCOPE = pathToFileURL(path.join(REPO_ROOT, 'dist', 'run', 'scope.js')).href
const SIGNALS = pathToFileURL(path.join(REPO_ROOT, 'dist', 'run', 'signals.js')).href

function crash(body: string, args: string[] = []) {
  const script = `
    import {installLastResort} from ${JSON.stringify(LAST_RESORT)}
    import {createRunScope} from ${JSON.stringify(SCOPE)}
    import {installSignalHandlers} from ${JSON.stringify(SIGNALS)}
    const scope = createRunScope()
    installSignalHandlers(scope)
    installLastResort()
    const registerUndo = (undo) => scope.registerCrashUndo(undo)
    ${body}
    setTimeout(() => {}, 20_000)
  `
  return spawnSync(process.execPath, ['--input-type=module', '-e', script, '--', ...args], {encoding: 'utf8', timeout: 30_000})
}

describe('the last-resort handler', () => {
  it("turns postgres.js's uncaught TypeError on a dead connection into one sentence, runs the undo, exits 1", () => {
    const r = crash(`
      registerUndo(async () => { await new Promise((res) => setTimeout(res, 50)); return 'the 1 migration this run applied was undone' })
      setImmediate(() => { const socket = null; socket.write('x') })
    `)
    expect(r.status, r.stderr).toBe(1)
    expect(r.stderr).toBe(
      "Error: The connection to PostgreSQL was lost (the server ended this tool's session, restarted, or the network failed), so the run stopped; the 1 migration this run applied was undone.\n"
        + '  Run `nself db e2ee status` to see where the database stands; running the same command again continues from there.\n',
    )
  })

  it('names the pipeline step that was running when the connection went', () => {
    const r = crash(`
      scope.enterStep('Dry run on a restored copy')
      void Promise.reject(Object.assign(new Error('write CONNECTION_CLOSED'), {code: 'CONNECTION_CLOSED'}))
    `)
    expect(r.status, r.stderr).toBe(1)
    expect(r.stderr).toMatch(
      /^Error: The connection to PostgreSQL was lost during the step "Dry run on a restored copy" \(the server ended this tool's session, restarted, or the network failed\), so the run stopped\.\n/,
    )
  })

  it('says when the undo itself failed, and an unhandled rejection is reported the same way', () => {
    const r = crash(`
      registerUndo(async () => { throw Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), {code: 'ECONNREFUSED', address: '127.0.0.1', port: 5432}) })
      void Promise.reject(Object.assign(new Error('write CONNECTION_CLOSED'), {code: 'CONNECTION_CLOSED'}))
    `)
    expect(r.status, r.stderr).toBe(1)
    expect(r.stderr).toMatch(
      /^Error: The connection to PostgreSQL was lost .*; undoing what this run applied failed: cannot connect to PostgreSQL at 127\.0\.0\.1:5432 \(connection refused\)\.\n/,
    )
    expect(r.stderr).not.toMatch(/\n\s+at .+:\d+:\d+/)
  })

  it('any other crash is one sentence too, and --verbose adds the stack', () => {
    const r = crash(`setImmediate(() => { throw new RangeError('something impossible') })`, ['--verbose'])
    expect(r.status, r.stderr).toBe(1)
    expect(r.stderr).toMatch(/^Error: something impossible\.\n/)
    expect(r.stderr).toMatch(/RangeError: something impossible\n\s+at /)
  })
})
