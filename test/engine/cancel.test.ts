import {afterEach, describe, expect, it} from 'vitest'

import {cancelSignal, deliverSignal, isCancelled, onCancel, resetCancellation, throwIfCancelled, underUndoScope} from '../../src/cancel.js'
import {CancelledError, interruption} from '../../src/errors.js'

// The run scope and the undo scope (src/cancel.ts): the first signal cancels the run but not an undo; a
// second one abandons the undo. Signals are delivered through the same function the process handler calls.
describe('cancellation scopes', () => {
  afterEach(() => resetCancellation())

  it('the first Ctrl+C cancels the run and its handlers, but not an undo that is running; the second abandons it', async () => {
    resetCancellation()
    const ran: string[] = []
    onCancel(() => { ran.push('run handler') })
    const seen: boolean[] = []
    await underUndoScope(async () => {
      onCancel(() => { ran.push('undo handler') })
      deliverSignal('SIGINT')
      seen.push(isCancelled(), cancelSignal().aborted)
      deliverSignal('SIGINT')
      await new Promise((res) => setImmediate(res))
      seen.push(isCancelled(), cancelSignal().aborted)
      expect(() => throwIfCancelled('the undo')).toThrow(CancelledError)
    })
    expect(seen).toEqual([false, false, true, true])
    expect(ran).toEqual(['run handler', 'undo handler'])
    expect(isCancelled()).toBe(true)
    expect(interruption()).toEqual({by: 'Ctrl+C', exitCode: 130})
  })

  it('an undo that starts after a second Ctrl+C is abandoned from the start; one after a single Ctrl+C runs', async () => {
    resetCancellation()
    deliverSignal('SIGINT')
    expect(await underUndoScope(async () => isCancelled())).toBe(false)
    deliverSignal('SIGINT')
    expect(await underUndoScope(async () => isCancelled())).toBe(true)
  })

  it('SIGTERM is named and exits 143; the message claims only what the step says', () => {
    resetCancellation()
    deliverSignal('SIGTERM')
    expect(interruption()).toEqual({by: 'SIGTERM', exitCode: 143})
    const e = new CancelledError('VACUUM (ANALYZE)', 'the migrations stay applied')
    expect(e.message).toBe('Interrupted by SIGTERM: VACUUM (ANALYZE) was stopped, and the migrations stay applied.')
    expect(e.exitCode).toBe(143)
  })
})
