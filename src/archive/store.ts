import {constants as fsConstants, type Stats} from 'node:fs'
import fs from 'node:fs/promises'
import path from 'node:path'

import {UserError} from '../errors.js'
import {loadMessages} from '../messages.js'
import {nextSecond, timestamp} from '../text.js'
import {legacyManifestPathFor, manifestPathFor, partialPathFor} from './manifest.js'

const messages = loadMessages('lib.archive.store')

/** The backup folder: created 0700, file names reserved in nself's pattern, finished dumps published without overwriting. */

export async function removeQuietly(file: string): Promise<void> {
  await fs.rm(file, {force: true}).catch(() => {})
}

export async function fsyncDir(dir: string): Promise<void> {
  try {
    const fh = await fs.open(dir, fsConstants.O_RDONLY)
    try {
      await fh.sync()
    } finally {
      await fh.close()
    }
  } catch {
    // Some filesystems refuse fsync on a directory; the data itself was synced.
  }
}

export function fsErrorSentence(error: unknown, what: string, file: string): UserError {
  const code = (error as {code?: string}).code ?? ''
  const msg = (error as Error).message ?? String(error)
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new UserError(messages.getMessage('fs.disk-full', [what, file, code]), {
      cause: error,
      hint: messages.getMessage('fs.disk-full.hint'),
    })
  }
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS' || code === 'ENOTDIR' || code === 'EEXIST' || code === 'EISDIR') {
    return new UserError(messages.getMessage('fs.not-writable', [what, file, code]), {
      cause: error,
      hint: messages.getMessage('fs.not-writable.hint'),
    })
  }
  return new UserError(messages.getMessage('fs.other', [what, file, msg.replace(/\.$/, '')]), {cause: error})
}

/** Create the backup folder (0700) or tighten an existing one that others could read. */
export async function ensureBackupDir(dir: string, log?: (line: string) => void): Promise<void> {
  try {
    await fs.mkdir(dir, {mode: 0o700, recursive: true})
  } catch (error) {
    const code = (error as {code?: string}).code
    if (code === 'EEXIST' || code === 'ENOTDIR') {
      const sentence = code === 'EEXIST' ? messages.getMessage('folder.is-file', [dir]) : messages.getMessage('folder.path-has-file', [dir])
      throw new UserError(sentence, {cause: error, hint: messages.getMessage('folder.choose.hint')})
    }
    throw fsErrorSentence(error, messages.getMessage('what.creating-folder'), dir)
  }
  let st: Stats
  try {
    st = await fs.stat(dir)
  } catch (error) {
    throw fsErrorSentence(error, messages.getMessage('what.reading-folder'), dir)
  }
  if (!st.isDirectory()) {
    throw new UserError(messages.getMessage('folder.not-folder', [dir]), {hint: messages.getMessage('folder.choose.hint')})
  }
  if ((st.mode & 0o077) !== 0) {
    const mode = (st.mode & 0o777).toString(8)
    try {
      if (typeof process.getuid === 'function' && st.uid !== process.getuid()) throw new Error('not owner')
      await fs.chmod(dir, 0o700)
      log?.(messages.getMessage('log.folder-mode-tightened', [dir, mode]))
    } catch {
      log?.(messages.getMessage('log.folder-mode-not-ours', [dir, mode]))
    }
  }
  try {
    await fs.access(dir, fsConstants.W_OK)
  } catch (error) {
    throw fsErrorSentence(error, messages.getMessage('what.writing-to-folder'), dir)
  }
}

export const exists = (f: string) =>
  fs.access(f).then(
    () => true,
    () => false,
  )

/**
 * Reserve `<project>_<YYYYMMDD_HHMMSS>.dump` by creating its manifest's place in the sidecar folder exclusively
 * (O_EXCL; the manifest is later written over it): two runs started in the same second cannot both get it, and the
 * loser moves to the next second, so every name keeps nself's pattern. The dump itself is written to a `.partial`
 * named with this run's id, so the next command can prove its writer is gone (steps/leftovers.ts) before removing it.
 * A placeholder left by a killed run is an unreadable manifest without a dump: listings skip it.
 */
export async function reserveFileName(dir: string, project: string): Promise<{final: string; partial: string}> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const final = path.join(dir, `${project}_${timestamp()}.dump`)
    const placeholder = manifestPathFor(final)
    try {
      const fh = await fs.open(placeholder, 'wx', 0o600)
      await fh.close()
    } catch (error) {
      if ((error as {code?: string}).code !== 'EEXIST') throw fsErrorSentence(error, messages.getMessage('what.writing-backup'), final)
      await nextSecond()
      continue
    }
    const taken = await Promise.all([final, legacyManifestPathFor(final)].map(exists))
    if (!taken.includes(true)) return {final, partial: partialPathFor(final)}
    await removeQuietly(placeholder)
    await nextSecond()
  }
  throw new UserError(messages.getMessage('error.no-free-name', [dir]))
}

/** Give the finished dump its name without ever replacing a file of that name (e.g. an `nself db backup`). */
export async function publish(partial: string, final: string): Promise<void> {
  try {
    await fs.link(partial, final)
  } catch (error) {
    const code = (error as {code?: string}).code
    if (code === 'EEXIST') throw new UserError(messages.getMessage('error.written-meanwhile', [final]))
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EXDEV') throw error
    // No hard links on this filesystem: the name was reserved, a rename is the next best thing.
    await fs.rename(partial, final)
    return
  }
  await fs.rm(partial, {force: true})
}
