import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.connection.versions')

/**
 * Which client tools may work with which server (README "Supported PostgreSQL versions"). The plugin runs
 * pg_dump (backups) and pg_restore (reading a backup back, the dry-run clone, the restore rollback); psql it
 * does not run, so its version is only shown. The rules, checked before anything is written:
 * - the server is 14 or newer (checked when connecting: assertServerSupported);
 * - pg_dump is at least the server's major version: an older pg_dump refuses to dump a newer server;
 * - pg_restore is at least pg_dump's major version: each major from 16 on writes an archive format older
 *   pg_restore cannot read ("unsupported version (1.15) in file header");
 * - pg_restore 17 and newer into a server 16 or older works: it always sends `SET transaction_timeout = 0`,
 *   which those servers reject, and restoreArchive accepts exactly that error (TRANSACTION_TIMEOUT_ERROR);
 * - servers newer than NEWEST_TESTED work as far as the rules go, with a warning that they were not tested.
 */
export const OLDEST_SERVER = 14
export const NEWEST_TESTED = 18
/** pg_restore from this major on sends `SET transaction_timeout = 0` on every connection. */
export const SENDS_TRANSACTION_TIMEOUT = 17

export interface ToolMajors {
  pg_dump: number
  pg_restore: number
}

export interface VersionCheck {
  status: 'ok' | 'warn' | 'fail'
  detail: string
  fix?: string
}

/**
 * The combination of a server and the client tools `where` (e.g. "local client tools", "in container
 * nchat_postgres") judged by the rules above. `dumps`: this run takes a backup with pg_dump.
 */
export function judgeTools(serverMajor: number, tools: ToolMajors, where: string, o: {dumps: boolean; local: boolean}): VersionCheck {
  const install = (major: number) => (o.local ? messages.getMessage('fix.local', [major, major]) : messages.getMessage('fix.container', [major, major]))
  if (o.dumps && tools.pg_dump < serverMajor) {
    return {
      detail: messages.getMessage('tools.dump-too-old', [tools.pg_dump, where, serverMajor]),
      fix: install(serverMajor),
      status: 'fail',
    }
  }
  if (tools.pg_restore < tools.pg_dump) {
    return {
      detail: messages.getMessage('tools.restore-older-than-dump', [tools.pg_restore, where, tools.pg_dump]),
      fix: install(tools.pg_dump),
      status: 'fail',
    }
  }
  const names = [tools.pg_dump, tools.pg_restore, where, serverMajor]
  if (serverMajor > NEWEST_TESTED) {
    return {
      detail: messages.getMessage('tools.server-newer-than-tested', [...names, serverMajor, OLDEST_SERVER, NEWEST_TESTED]),
      status: 'warn',
    }
  }
  if (tools.pg_restore >= SENDS_TRANSACTION_TIMEOUT && serverMajor < SENDS_TRANSACTION_TIMEOUT) {
    return {detail: messages.getMessage('tools.transaction-timeout', names), status: 'ok'}
  }
  return {detail: messages.getMessage('tools.ok', names), status: 'ok'}
}

/** The error pg_restore 17+ reports on every connection to a server 16 or older; nothing else goes wrong. */
export const TRANSACTION_TIMEOUT_ERROR = /unrecognized configuration parameter "transaction_timeout"/

/**
 * The sentence for a backup that this pg_restore cannot read because a newer pg_dump wrote it (pg_restore
 * says "unsupported version (1.16) in file header"), or undefined when that is not the cause.
 */
export function olderRestoreSentence(file: string, message: string, restoreMajor: number, dumpMajor: number | undefined): string | undefined {
  if (!/unsupported version \([\d.]+\) in file header/i.test(message)) return undefined
  return dumpMajor
    ? messages.getMessage('older-restore.known-dump', [file, dumpMajor, restoreMajor])
    : messages.getMessage('older-restore.unknown-dump', [file, restoreMajor])
}
