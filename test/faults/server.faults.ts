import {afterAll, beforeAll, describe, it} from 'vitest'

import {PrivateCluster} from '../helpers/cluster.js'
import type {Fault} from '../helpers/faults.js'
import {runCase, SCENARIOS} from './scenarios.js'

// The fault table, server rows: each step of migrate and rollback × the server ending the tool's sessions
// (pg_terminate_backend) and the server restarting, on a private cluster this file starts. `npm run faults`.
const FAULTS: Fault[] = ['sessions ended', 'server restart']
const ONLY = process.env.FAULT_STEP

describe.each(FAULTS)('%s', (fault) => {
  let cluster: PrivateCluster
  beforeAll(async () => { cluster = await PrivateCluster.start() })
  afterAll(async () => { await cluster?.destroy() })

  it.each(SCENARIOS.filter((s) => !ONLY || s.step.includes(ONLY)).map((s) => ({s, step: s.step})))('at $step', async ({s}) => {
    await runCase(cluster, s, fault)
  })
})
