// The throttle behind progress in logs, on a clock the test moves: no real time is involved.
import {describe, expect, it} from 'vitest'

import {ProgressThrottle} from '../../src/pipeline/log-renderer.js'

function throttled(intervalMs: number) {
  let now = 0
  const out: string[] = []
  const t = new ProgressThrottle(
    (l) => out.push(l),
    intervalMs,
    () => now,
  )
  return {
    advance: (ms: number) => {
      now += ms
    },
    out,
    t,
  }
}

describe('ProgressThrottle', () => {
  it('passes at most one line per interval from the start, and the last one held back at flush', () => {
    const {advance, out, t} = throttled(5000)
    for (let i = 1; i <= 100; i++) {
      t.push(`${i} kB written`)
      advance(120) // 100 ticks in 12 s
    }
    t.flush()
    expect(out).toEqual(['43 kB written', '85 kB written', '100 kB written'])
  })

  it('never repeats the line it passed last, however often it comes', () => {
    const {advance, out, t} = throttled(1000)
    advance(1000)
    t.push('10.1 MB written')
    for (let i = 0; i < 26; i++) {
      advance(1500)
      t.push('10.1 MB written')
    }
    t.flush()
    expect(out).toEqual(['10.1 MB written'])
  })

  it('drop forgets the line held back (a note said more), so flush writes nothing', () => {
    const {advance, out, t} = throttled(1000)
    advance(1000)
    t.push('restoring: 1/46')
    t.push('restoring: 46/46')
    t.drop()
    t.flush()
    expect(out).toEqual(['restoring: 1/46'])
  })
})

describe('ProgressThrottle with interval 0', () => {
  it('passes every change at once, still never the same line twice', () => {
    const {out, t} = throttled(0)
    for (const l of ['a', 'a', 'b', 'b', 'c']) t.push(l)
    t.flush()
    expect(out).toEqual(['a', 'b', 'c'])
  })
})
