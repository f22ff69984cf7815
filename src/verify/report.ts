/** What a verification found: one check per object or behaviour, each ok, warn or fail with one sentence. */

export type CheckStatus = 'ok' | 'warn' | 'fail'

export interface VerifyCheck {
  name: string
  status: CheckStatus
  detail: string
}

export interface VerifyReport {
  ok: boolean
  checks: VerifyCheck[]
  /** One sentence per failed check, naming the object and what is wrong. */
  failures: string[]
}

export class Checks {
  readonly list: VerifyCheck[] = []
  add(name: string, status: CheckStatus, detail: string): void {
    const sentence = detail.trim().replace(/\s+/g, ' ')
    this.list.push({detail: /[.!?]$/.test(sentence) ? sentence : `${sentence}.`, name, status})
  }
  ok(name: string, detail: string): void {
    this.add(name, 'ok', detail)
  }
  warn(name: string, detail: string): void {
    this.add(name, 'warn', detail)
  }
  fail(name: string, detail: string): void {
    this.add(name, 'fail', detail)
  }
  report(): VerifyReport {
    const failures = this.list.filter((c) => c.status === 'fail').map((c) => c.detail)
    return {checks: this.list, failures, ok: failures.length === 0}
  }
}
