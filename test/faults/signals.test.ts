import {afterAll, beforeAll, describe, it} from 'vitest'

import {PrivateCluster} from '../helpers/cluster.js'
import type {Fault} from '../helpers/faults.js'
import {runCase, SCENARIOS} from './scenarios.js'

// The fault table, signal rows: each step of migrate and rollback × kill -9, Ctrl+C, SIGTERM, on a private cluster.
// Rows are documented in docs/reliability.md.
const FAULTS: Fault[] = ['kill -9', 'Ctrl+C', 'SIGTERM']
const ONLY = process.env.FAULT_STEP

describe.each(FAULTS)('%s', (fault) => {
  let cluster: PrivateCluster
  beforeAll(async () => { cluster = await PrivateCluster.start() })
  afterAll(async () => { await cluster?.destroy() })

  it.each(SCENARIOS.filter((s) => !ONLY || s.step.includes(ONLY)).map((s) => ({s, step: s.step})))('at $step', async ({s}) => {
    await runCase(cluster, s, fault)
  })
})
