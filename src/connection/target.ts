import path from 'node:path'

import {UserError} from '../errors.js'
import {loadMessages} from '../messages.js'
import {validateIdentifier} from '../pg/identifiers.js'
import {readNselfEnv} from './env-files.js'

const messages = loadMessages('lib.connection.target')

/** What the operator gave on the command line (every field optional). */
export interface TargetOptions {
  projectDir?: string
  envFile?: string
  database?: string
  user?: string
  host?: string
  port?: number
  container?: string
  local?: boolean
  schema?: string
  backupDir?: string
}

export interface ConnectionInfo {
  host: string
  port: number
  database: string
  user: string
  /** Never printed, logged or passed in argv. */
  password?: string
}

export type Setting = 'host' | 'port' | 'database' | 'user' | 'password' | 'container' | 'projectName' | 'backupDir'

/** Where the database is and how to reach it; one per command run. */
export interface Target {
  conn: ConnectionInfo
  /** Where each setting came from: "flag --host", ".env.local", "PGHOST", "default". */
  sources: Record<Setting, string>
  projectDir: string
  projectName: string
  /** docker: pg_dump/pg_restore run through `docker exec` in the container; local: on this machine. */
  mode: 'docker' | 'local'
  /** Containers to try in order (explicit flag, ${PROJECT_NAME}_postgres, nself-postgres). */
  containerCandidates: string[]
  schema?: string
  backupDir: string
  envFiles: string[]
  /** How nself's env cascade was chosen (for `status`). */
  cascade?: {envName: string; envSource: string; legacyOrder: boolean; monorepoFrom?: string}
}

const DOCKER_NETWORK_HOSTS = new Set(['postgres', 'nself-postgres', 'db', 'database'])

function pick<T>(candidates: Array<[T | undefined, string]>, fallback: [T, string]): [T, string] {
  for (const [value, source] of candidates) {
    if (value !== undefined && value !== null && value !== '') return [value, source]
  }
  return fallback
}

export function resolveTarget(opts: TargetOptions, env: NodeJS.ProcessEnv = process.env): Target {
  const layer = readNselfEnv(opts.projectDir ?? '.', {extraFile: opts.envFile}, env)
  const {projectDir} = layer
  const f = layer.values
  const src = (key: string) => layer.sources[key] ?? 'env file'

  const [projectName, projectNameSrc] = pick<string>(
    [[f.PROJECT_NAME, src('PROJECT_NAME')]],
    [path.basename(projectDir).replace(/^[^A-Za-z0-9]+/, '') || 'nself', 'project folder name'],
  )
  const [database, dbSrc] = pick<string>(
    [
      [opts.database, 'flag --database'],
      [f.POSTGRES_DB, src('POSTGRES_DB')],
      [env.PGDATABASE, 'PGDATABASE'],
    ],
    [projectName, 'PROJECT_NAME'],
  )
  const [user, userSrc] = pick<string>(
    [
      [opts.user, 'flag --user'],
      [f.POSTGRES_USER, src('POSTGRES_USER')],
      [env.PGUSER, 'PGUSER'],
    ],
    ['postgres', 'default'],
  )

  let [host, hostSrc] = pick<string>(
    [
      [opts.host, 'flag --host'],
      [f.POSTGRES_HOST, src('POSTGRES_HOST')],
      [env.PGHOST, 'PGHOST'],
    ],
    ['127.0.0.1', 'default'],
  )
  // nself's POSTGRES_HOST is the container's name on the docker network, unreachable from the host; the
  // port is published on localhost instead.
  if (hostSrc !== 'flag --host' && (DOCKER_NETWORK_HOSTS.has(host) || host === `${projectName}_postgres`)) {
    hostSrc = `${hostSrc} (POSTGRES_HOST=${host} is a docker network name; using the published port on 127.0.0.1)`
    host = '127.0.0.1'
  }

  const portRaw = pick<string | number>(
    [
      [opts.port, 'flag --port'],
      [f.POSTGRES_PORT, src('POSTGRES_PORT')],
      [env.PGPORT, 'PGPORT'],
    ],
    [5432, 'default'],
  )
  const port = Number(portRaw[0])
  if (!Number.isInteger(port) || port < 1 || port > 65_535) {
    throw new UserError(messages.getMessage('error.bad-port', [portRaw[0], portRaw[1]]))
  }

  const [password, pwSrc] = pick<string>(
    [
      [f.POSTGRES_PASSWORD, src('POSTGRES_PASSWORD')],
      [env.PGPASSWORD, 'PGPASSWORD'],
    ],
    ['', 'none'],
  )

  const containerCandidates = opts.container ? [opts.container] : [...new Set([`${projectName}_postgres`, 'nself-postgres'])]
  for (const c of containerCandidates) {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(c)) throw new UserError(messages.getMessage('error.bad-container', [c]))
  }

  if (opts.schema) validateIdentifier(opts.schema, 'schema')
  validateIdentifier(database, 'database')

  const backupDir = path.resolve(projectDir, opts.backupDir ?? 'backups')

  return {
    backupDir,
    conn: {database, host, password: password || undefined, port, user},
    containerCandidates,
    cascade: {envName: layer.envName, envSource: layer.envSource, legacyOrder: layer.legacyOrder, monorepoFrom: layer.monorepoFrom},
    envFiles: layer.files,
    mode: opts.local ? 'local' : 'docker',
    projectDir,
    projectName,
    schema: opts.schema,
    sources: {
      backupDir: opts.backupDir ? 'flag --backup-dir' : 'default (<project>/backups)',
      container: opts.container ? 'flag --container' : `default (${containerCandidates.join(', then ')})`,
      database: dbSrc,
      host: hostSrc,
      password: pwSrc,
      port: portRaw[1],
      projectName: projectNameSrc,
      user: userSrc,
    },
  }
}
