import path from 'node:path'

import {Flags} from '@oclif/core'

import {BaseCommand} from '../../../base-command.js'
import {checkBeforeReading, note} from '../../../pipeline/command.js'
import {inspect, statusDocument} from '../../../migrations/inspect.js'
import {type PgTool, reportTools} from '../../../connection/tools.js'

export default class Status extends BaseCommand {
  static description = 'Show where the database stands: server, schema, and each migration 013-016 applied, pending, partial or drifted (with checksums), and where every connection setting came from.'
  static examples = ['<%= config.bin %> db e2ee status', '<%= config.bin %> db e2ee status --json --local --host 127.0.0.1 -d nchat']
  static flags = {
    'backup-dir': Flags.string({description: 'Where backups go, to look for unfinished ones (default: the nself project\'s backups/).'}),
    'migrations-dir': Flags.string({description: 'Use migration files from this folder instead of the packaged ones.'}),
  }

  async run(): Promise<void> {
    const flags = await this.parseBase(Status)
    const target = this.targetFrom(flags, {backupDir: flags['backup-dir']})
    // Before connecting: a database left closed by an interrupted swap is opened again, and leftovers are listed.
    const scope = this.runScope(target)
    const state = await checkBeforeReading(scope, 'status')
    if (state?.repaired) note(state.repaired)
    const ins = await inspect(target, {migrationsDir: flags['migrations-dir']})
    scope.ownPool(ins.sql)
    const leftovers = [
      ...(state?.databases ?? []).map((d) => ({
        kind: d.kind === 'dryrun' ? 'dry-run clone' : 'restored copy', kept: d.kept, name: d.name,
        owner: state?.busy && state.busy.run === d.run ? 'running' : 'gone',
      })),
      ...(state?.partials ?? []).map((p) => ({kind: 'unfinished backup', kept: false, name: p.file, owner: p.owner})),
    ]
    const tools = await reportTools(target)
    const doc = {...statusDocument(target, ins), busy: state?.busy?.command ?? null, leftovers, repaired: state?.repaired ?? null, tools}
    if (this.jsonMode) return this.printJson({ok: true, ...doc})
    this.say(`Server      PostgreSQL ${doc.server}`)
    this.say(`Database    ${doc.connection.database} on ${doc.connection.host}:${doc.connection.port} as ${doc.connection.user}, schema ${doc.schema}`)
    const v = (tool: PgTool) => `${tool} ${tools.versions[tool] ?? 'missing'}`
    this.say(`Tools       ${tools.problem ? `${tools.where}: ${tools.problem}` : `${v('pg_dump')}, ${v('pg_restore')}, ${v('psql')} (${tools.where})`}`)
    this.say(`Ledger      schema_migrations ${doc.ledger.schemaMigrations ? `in ${doc.ledger.schemaMigrations.schema}, at ${doc.ledger.current ?? 'nothing'}` : 'missing (created on first migrate)'}`)
    this.say(`nself       ${doc.ledger.nself === null ? 'no nself ledger (np_common.schema_versions) in this database' : `np_common.schema_versions lists ${doc.ledger.nself.length > 0 ? doc.ledger.nself.join(', ') : 'none of 013-016'}`}`)
    this.say('')
    for (const m of doc.migrations) {
      const when = m.appliedAt ? `  ${new Date(m.appliedAt).toISOString()} by ${m.appliedBy}` : ''
      this.say(`  ${m.state.padEnd(18)} ${m.name.padEnd(24)} sha256 ${m.checksum.slice(0, 12)}${m.ledgerChecksum && m.ledgerChecksum !== m.checksum ? ` (ledger ${m.ledgerChecksum.slice(0, 12)})` : ''}${when}`)
    }
    this.say('')
    this.say(doc.pending.length > 0 ? `Pending: ${doc.pending.join(', ')}. Run: nself db e2ee migrate` : 'Nothing pending.')
    if (doc.busy) this.say(`Busy        ${doc.busy} is changing this database now.`)
    for (const l of leftovers) {
      const fate = l.kept ? 'kept with --keep-dryrun-db; drop it when done'
        : l.owner === 'running' ? 'in use by the running command'
          : l.owner === 'gone' ? 'left by an interrupted command; the next migrate, dryrun or rollback removes it'
            : 'of unknown origin; not removed automatically'
      this.say(`Leftover    ${l.kind} ${l.name} (${fate})`)
    }
    this.say('')
    this.say(`Project     ${doc.settings.projectDir}${doc.settings.projectDirFrom ? ` (${doc.settings.projectDirFrom})` : ''}`)
    this.say(`ENV         ${doc.settings.env ?? 'dev'}${doc.settings.legacyOrder ? ', NSELF_LEGACY_ENV_ORDER: legacy cascade order' : ''}; env files read: ${doc.settings.envFiles.length > 0 ? doc.settings.envFiles.map((f) => path.relative(doc.settings.projectDir, f) || f).join(' → ') : 'none'}`)
    this.say('Settings came from:')
    for (const [k, v] of Object.entries(doc.connection.sources)) this.say(`  ${k.padEnd(12)} ${v}`)
  }
}
