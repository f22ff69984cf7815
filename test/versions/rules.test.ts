// The version rules of src/connection/versions.ts, one row per kind of combination (the end-to-end proof of each is
// in client-server.test.ts and in vitest.versions.config.ts).
import {describe, expect, it} from 'vitest'

import {judgeTools, olderRestoreSentence} from '../../src/connection/versions.js'

const local = {dumps: true, local: true}

describe('judgeTools', () => {
  it('refuses a pg_dump older than the server, naming both versions and the package to install', () => {
    const c = judgeTools(17, {pg_dump: 15, pg_restore: 15}, 'local client tools', local)
    expect(c).toMatchObject({detail: 'pg_dump 15 (local client tools) cannot dump the PostgreSQL 17 server', status: 'fail'})
    expect(c.fix).toMatch(/postgresql-client-17/)
    const inContainer = judgeTools(18, {pg_dump: 16, pg_restore: 16}, 'in container nchat_postgres', {dumps: true, local: false})
    expect(inContainer.fix).toMatch(/image with PostgreSQL 18 client tools, or pass --local with postgresql-client-18/)
  })

  it('does not ask for a new enough pg_dump when nothing is dumped', () => {
    expect(judgeTools(17, {pg_dump: 15, pg_restore: 15}, 'local client tools', {dumps: false, local: true}).status).toBe('ok')
  })

  it('refuses a pg_restore older than the pg_dump beside it (it cannot read what that pg_dump writes)', () => {
    expect(judgeTools(15, {pg_dump: 17, pg_restore: 15}, 'local client tools', local)).toMatchObject({
      detail: 'pg_restore 15 (local client tools) cannot read the backups pg_dump 17 writes',
      status: 'fail',
    })
  })

  it("accepts newer tools on an older server, and says when pg_restore's SET transaction_timeout is expected", () => {
    expect(judgeTools(14, {pg_dump: 15, pg_restore: 15}, 'local client tools', local)).toEqual({
      detail: 'pg_dump 15, pg_restore 15 (local client tools) for server 14',
      status: 'ok',
    })
    expect(judgeTools(16, {pg_dump: 17, pg_restore: 17}, 'local client tools', local).detail).toMatch(
      /SET transaction_timeout, unknown to this server, is the one error restores accept/,
    )
    expect(judgeTools(17, {pg_dump: 18, pg_restore: 18}, 'local client tools', local).detail).not.toMatch(/transaction_timeout/)
  })

  it('warns (does not refuse) on a server newer than the tested ones', () => {
    expect(judgeTools(19, {pg_dump: 19, pg_restore: 19}, 'local client tools', local).status).toBe('warn')
  })
})

describe('olderRestoreSentence', () => {
  it('names the pg_dump the manifest records and the pg_restore at hand, only for a format-version refusal', () => {
    expect(olderRestoreSentence('/b/x.dump', 'unsupported version (1.16) in file header', 15, 17)).toBe(
      'The backup /b/x.dump was written by pg_dump 17 (its manifest says so), and pg_restore 15 cannot read that archive format; the file itself is not damaged',
    )
    expect(olderRestoreSentence('/b/x.dump', 'unsupported version (1.16) in file header', 15, undefined)).toMatch(/written by a newer pg_dump/)
    expect(olderRestoreSentence('/b/x.dump', 'could not read input file: end of file', 15, 17)).toBeUndefined()
  })
})
