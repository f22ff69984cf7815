import {existsSync} from 'node:fs'
import {setTimeout as sleep} from 'node:timers/promises'

/**
 * TEST-ONLY fault injection. With `NSELF_E2EE_TEST_PAUSE=<point>[,<point>…]` in the environment the run stops
 * at each named point, writes `[test-pause] <point>` to stderr and waits until the file named by
 * `NSELF_E2EE_TEST_RESUME` exists (forever when that is unset), so a test can kill -9 it, or start a second
 * command, at exactly that moment instead of guessing with sleeps. Unset (as it always is outside the tests)
 * this does nothing. The points: `backup:partial-written`, `dryrun:dump-written` (the standalone dry run's rehearsal
 * dump written and read back, before the copy is restored), `dryrun:clone-restored`, `rollback:before-swap`,
 * `swap:renamed` (inside the swap's transaction, both renames done, not committed), `rollback:swapped` (the swap
 * committed, before the rollback's last step). Ctrl+C or SIGTERM ends the
 * pause as it would end real work there: the code after the point then sees the run cancelled.
 */
export async function testPause(point: string, signal?: AbortSignal): Promise<void> {
  const points = process.env.NSELF_E2EE_TEST_PAUSE
  if (!points?.split(',').includes(point)) return
  process.stderr.write(`[test-pause] ${point}\n`)
  const resume = process.env.NSELF_E2EE_TEST_RESUME
  for (;;) {
    if ((resume && existsSync(resume)) || signal?.aborted) return
    await sleep(20)
  }
}
