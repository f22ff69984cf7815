import {afterEach, describe, expect, it} from 'vitest'

import {CancelledError, interruption} from '../../src/errors.js'
import {createRunScope} from '../../src/run/scope.js'
import {activate, deliverSignal} from '../../src/run/signals.js'

// The run scope and the undo scope (src/run/scope.ts): the first signal cancels the run but not an undo; a
// second one abandons the undo. Signals are delivered through the same function the process handler calls
// (src/run/signals.ts), which routes them to the active root scope.
describe('cancellation scopes', () => {
  afterEach(() => activate(undefined))

  it('the first Ctrl+C cancels the run and its handlers, but not an undo that is running; the second abandons it', async () => {
    const scope = createRunScope()
    activate(scope)
    const ran: string[] = []
    scope.onCancel(() => {
      ran.push('run handler')
    })
    const seen: boolean[] = []
    await scope.underUndo(async (undo) => {
      undo.onCancel(() => {
        ran.push('undo handler')
      })
      deliverSignal('SIGINT')
      seen.push(undo.cancelled, undo.signal.aborted)
      deliverSignal('SIGINT')
      await new Promise((res) => setImmediate(res))
      seen.push(undo.cancelled, undo.signal.aborted)
      expect(() => undo.throwIfCancelled('the undo')).toThrow(CancelledError)
    })
    expect(seen).toEqual([false, false, true, true])
    expect(ran).toEqual(['run handler', 'undo handler'])
    expect(scope.cancelled).toBe(true)
    expect(interruption()).toEqual({by: 'Ctrl+C', exitCode: 130})
  })

  it('an undo that starts after a second Ctrl+C is abandoned from the start; one after a single Ctrl+C runs', async () => {
    const scope = createRunScope()
    activate(scope)
    deliverSignal('SIGINT')
    expect(await scope.underUndo(async (undo) => undo.cancelled)).toBe(false)
    deliverSignal('SIGINT')
    expect(await scope.underUndo(async (undo) => undo.cancelled)).toBe(true)
  })

  it('SIGTERM is named and exits 143; the message claims only what the step says', () => {
    const scope = createRunScope()
    activate(scope)
    deliverSignal('SIGTERM')
    expect(interruption()).toEqual({by: 'SIGTERM', exitCode: 143})
    const e = new CancelledError('VACUUM (ANALYZE)', 'the migrations stay applied')
    expect(e.message).toBe('Interrupted by SIGTERM: VACUUM (ANALYZE) was stopped, and the migrations stay applied.')
    expect(e.exitCode).toBe(143)
  })

  it('closes what it owns newest first (stopped instead after a cancel); a child closes its own on the way out and is cancelled with its parent', async () => {
    const closed: string[] = []
    const pool = (name: string) => ({
      end: async (o?: {timeout?: number}) => {
        closed.push(`${name} end ${o?.timeout}`)
      },
    })
    const scope = createRunScope()
    scope.own(pool('first'))
    scope.defer(async () => {
      closed.push('lock released')
    })
    scope.own(pool('second'))
    const inChild = await scope.child(async (child) => {
      child.own(pool('child'))
      return 'result'
    })
    expect(inChild).toBe('result')
    expect(closed).toEqual(['child end 2'])
    await scope.close()
    expect(closed).toEqual(['child end 2', 'second end 2', 'lock released', 'first end 2'])

    const cancelled = createRunScope()
    const stopped: string[] = []
    cancelled.own(pool('p'), async () => {
      stopped.push('stopped')
    })
    const seen = await cancelled.child(async (child) => {
      const handled: string[] = []
      child.onCancel(() => {
        handled.push('child handler')
      })
      await cancelled.abort()
      return [child.cancelled, ...handled]
    })
    expect(seen).toEqual([true, 'child handler'])
    await cancelled.close()
    expect(stopped).toEqual(['stopped'])
    // Handed to a scope that already closed (work that went on after a cancel): closed at once.
    cancelled.own(pool('late'), async () => {
      stopped.push('late stopped')
    })
    await new Promise((res) => setImmediate(res))
    expect(stopped).toEqual(['stopped', 'late stopped'])
  })
})
