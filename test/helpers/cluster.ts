// A private PostgreSQL cluster a test starts itself, on its own port on 127.0.0.1, so it can restart the
// server, end every session or fill it without touching the shared server on 5432.
//
// initdb refuses to run as root, so the cluster belongs to the `postgres` user (runuser when we are root).

import {execFile, execFileSync} from 'node:child_process'
import {chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {createServer} from 'node:net'
import os from 'node:os'
import path from 'node:path'
import {promisify} from 'node:util'
import postgres from 'postgres'

import {loadV030} from '../../scripts/v030-fixture.mjs'

const execFileP = promisify(execFile)

/** The server binaries: PG_BIN, else the newest /usr/lib/postgresql/<major>/bin that has initdb (Debian layout). */
function serverBin(): string {
  if (process.env.PG_BIN) return process.env.PG_BIN
  const root = '/usr/lib/postgresql'
  const majors = (existsSync(root) ? readdirSync(root) : []).filter((v) => existsSync(path.join(root, v, 'bin', 'initdb')))
  majors.sort((a, b) => Number(b) - Number(a))
  if (majors.length === 0) throw new Error(`no PostgreSQL server binaries (initdb) under ${root}; install postgresql or set PG_BIN`)
  return path.join(root, majors[0], 'bin')
}

const PG_BIN = serverBin()

/** A TCP port nobody listens on right now (the kernel picks it). */
export async function sparePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const {port} = srv.address() as {port: number}
      srv.close(() => resolve(port))
    })
  })
}

function asPostgres(cmd: string, args: string[]): [string, string[]] {
  return process.getuid?.() === 0 ? ['runuser', ['-u', 'postgres', '--', cmd, ...args]] : [cmd, args]
}

async function run(cmd: string, args: string[]): Promise<string> {
  const [c, a] = asPostgres(cmd, args)
  try {
    const {stdout, stderr} = await execFileP(c, a, {maxBuffer: 16 * 1024 * 1024, timeout: 120_000})
    return stdout + stderr
  } catch (error) {
    const e = error as {stdout?: string; stderr?: string; message: string}
    throw new Error(`${path.basename(cmd)} ${args.join(' ')} failed: ${(e.stderr || e.stdout || e.message).trim()}`)
  }
}

export interface ClusterOptions {
  /** Extra lines for postgresql.conf given as -c settings (name → value). */
  settings?: Record<string, string>
  /** Lines put before the trust lines of pg_hba.conf (e.g. a scram rule for one role). */
  hba?: string[]
}

export class PrivateCluster {
  readonly host = '127.0.0.1'
  readonly user = 'postgres'
  private constructor(
    readonly root: string,
    readonly dataDir: string,
    readonly sockDir: string,
    readonly port: number,
    private readonly settings: Record<string, string>,
  ) {}

  static async start(opts: ClusterOptions = {}): Promise<PrivateCluster> {
    const root = mkdtempSync(path.join(os.tmpdir(), 'e2ee-pgc-'))
    chmodSync(root, 0o755)
    const dataDir = path.join(root, 'data')
    const sockDir = path.join(root, 'sock')
    for (const d of [dataDir, sockDir]) {
      execFileSync('mkdir', ['-p', d])
    }
    if (process.getuid?.() === 0) {
      const uid = Number(execFileSync('id', ['-u', 'postgres']).toString().trim())
      const gid = Number(execFileSync('id', ['-g', 'postgres']).toString().trim())
      for (const d of [root, dataDir, sockDir]) chownSync(d, uid, gid)
    }
    chmodSync(dataDir, 0o700)
    await run(path.join(PG_BIN, 'initdb'), ['-D', dataDir, '-A', 'trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8', '--locale=C'])
    if (opts.hba?.length) {
      const hbaFile = path.join(dataDir, 'pg_hba.conf')
      const rest = readFileSync(hbaFile, 'utf8')
        .split('\n')
        .filter((l) => !/^\s*#/.test(l) && l.trim() !== '')
      writeFileSync(hbaFile, `${[...opts.hba, ...rest].join('\n')}\n`)
    }
    const settings = {fsync: 'off', full_page_writes: 'off', max_connections: '60', synchronous_commit: 'off', ...opts.settings}
    for (let attempt = 0; ; attempt++) {
      const port = await sparePort()
      const cluster = new PrivateCluster(root, dataDir, sockDir, port, settings)
      try {
        await cluster.startServer()
        return cluster
      } catch (error) {
        // Another process took the port between the probe and the start: try another one.
        if (attempt >= 3) {
          rmSync(root, {force: true, recursive: true})
          throw error
        }
      }
    }
  }

  private serverOptions(): string {
    const extra = Object.entries(this.settings).map(([k, v]) => `-c ${k}=${v}`)
    return [`-p ${this.port}`, `-k ${this.sockDir}`, '-c listen_addresses=127.0.0.1', ...extra].join(' ')
  }

  private async startServer(): Promise<void> {
    await run(path.join(PG_BIN, 'pg_ctl'), [
      '-D',
      this.dataDir,
      '-o',
      this.serverOptions(),
      '-l',
      path.join(this.root, 'server.log'),
      '-w',
      '-t',
      '60',
      'start',
    ])
  }

  /** Fast shutdown (every session ended, as a crash or failover would), then start again on the same port. */
  async restart(): Promise<void> {
    await run(path.join(PG_BIN, 'pg_ctl'), ['-D', this.dataDir, '-m', 'fast', '-w', '-t', '60', 'stop'])
    await this.startServer()
  }

  async stop(): Promise<void> {
    await run(path.join(PG_BIN, 'pg_ctl'), ['-D', this.dataDir, '-m', 'immediate', '-w', '-t', '60', 'stop']).catch(() => {})
  }

  /** Stop the server and remove its files. */
  async destroy(): Promise<void> {
    await this.stop()
    rmSync(this.root, {force: true, recursive: true})
  }

  /** A postgres.js client as the superuser (notices silenced); one connection unless `max` says otherwise. */
  connect(database = 'postgres', opts: {max?: number; appName?: string; keepIdle?: boolean} = {}): postgres.Sql {
    return postgres({
      connection: {application_name: opts.appName ?? 'e2ee-fault-tests'},
      database,
      host: this.host,
      // keepIdle: a session holding an open transaction (a test's lock) must not be closed for being idle.
      idle_timeout: opts.keepIdle ? 0 : 5,
      max: opts.max ?? 1,
      onnotice: () => {},
      port: this.port,
      user: this.user,
    })
  }

  /** PG* variables that point the CLI (and psql, pg_dump) at this cluster. */
  env(): Record<string, string> {
    return {PGHOST: this.host, PGPORT: String(this.port), PGUSER: this.user}
  }

  /** Runs `fn` with a superuser client, closing it after. */
  async with<T>(database: string, fn: (sql: postgres.Sql) => Promise<T>): Promise<T> {
    const sql = this.connect(database)
    try {
      return await fn(sql)
    } finally {
      await sql.end({timeout: 2}).catch(() => {})
    }
  }

  /** A v0.3.0 nChat database (schema public, guide ledger 1–12) with `messages` messages. */
  async createV030(name: string, opts: {messages?: number; users?: number; channels?: number; owner?: string} = {}): Promise<string> {
    if (!/^[a-z_][a-z0-9_]{0,62}$/.test(name)) throw new Error(`unsafe name ${name}`)
    await this.with('postgres', (sql) => sql.unsafe(`create database "${name}"${opts.owner ? ` owner "${opts.owner}"` : ''}`))
    const sql = this.connect(name)
    try {
      await loadV030(sql, {channels: opts.channels ?? 10, ledger: 'guide', messages: opts.messages ?? 2000, users: opts.users ?? 50})
      if (opts.owner) {
        // The application's role owns its tables, as on a real nself project.
        await sql.unsafe(`do $$ declare r record; begin
          for r in select tablename from pg_tables where schemaname = 'public' loop
            execute format('alter table public.%I owner to %I', r.tablename, '${opts.owner}');
          end loop;
          for r in select sequencename from pg_sequences where schemaname = 'public' loop
            execute format('alter sequence public.%I owner to %I', r.sequencename, '${opts.owner}');
          end loop;
          for r in select p.oid::regprocedure as f from pg_proc p where p.pronamespace = 'public'::regnamespace loop
            execute format('alter function %s owner to %I', r.f, '${opts.owner}');
          end loop;
          execute format('alter schema public owner to %I', '${opts.owner}');
        end $$`)
      }
    } finally {
      await sql.end({timeout: 2}).catch(() => {})
    }
    return name
  }

  async dropDatabase(name: string): Promise<void> {
    await this.with('postgres', (sql) => sql.unsafe(`drop database if exists "${name.replaceAll('"', '""')}" with (force)`))
  }
}
