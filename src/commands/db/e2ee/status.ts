import path from 'node:path'

import {Flags} from '@oclif/core'

import {BaseCommand} from '../../../base-command.js'
import {inspect, statusDocument} from '../../../steps/inspect.js'

export default class Status extends BaseCommand {
  static description = 'Show where the database stands: server, schema, and each migration 013-016 applied, pending, partial or drifted (with checksums), and where every connection setting came from.'
  static examples = ['<%= config.bin %> db e2ee status', '<%= config.bin %> db e2ee status --json --local --host 127.0.0.1 -d nchat']
  static flags = {
    'migrations-dir': Flags.string({description: 'Use migration files from this folder instead of the packaged ones.'}),
  }

  async run(): Promise<void> {
    const flags = await this.parseBase(Status)
    const target = this.targetFrom(flags)
    const ins = await inspect(target, {migrationsDir: flags['migrations-dir']})
    try {
      const doc = statusDocument(target, ins)
      if (this.jsonMode) return this.printJson({ok: true, ...doc})
      this.say(`Server      PostgreSQL ${doc.server}`)
      this.say(`Database    ${doc.connection.database} on ${doc.connection.host}:${doc.connection.port} as ${doc.connection.user}, schema ${doc.schema}`)
      this.say(`Tools       ${target.mode === 'local' ? 'local pg_dump/pg_restore' : `docker exec (${target.containerCandidates.join(' or ')})`}`)
      this.say(`Ledger      schema_migrations ${doc.ledger.schemaMigrations ? `in ${doc.ledger.schemaMigrations.schema}, at ${doc.ledger.current ?? 'nothing'}` : 'missing (created on first migrate)'}`)
      this.say(`nself       ${doc.ledger.nself === null ? 'no nself ledger (np_common.schema_versions) in this database' : `np_common.schema_versions lists ${doc.ledger.nself.length > 0 ? doc.ledger.nself.join(', ') : 'none of 013-016'}`}`)
      this.say('')
      for (const m of doc.migrations) {
        const when = m.appliedAt ? `  ${new Date(m.appliedAt).toISOString()} by ${m.appliedBy}` : ''
        this.say(`  ${m.state.padEnd(18)} ${m.name.padEnd(24)} sha256 ${m.checksum.slice(0, 12)}${m.ledgerChecksum && m.ledgerChecksum !== m.checksum ? ` (ledger ${m.ledgerChecksum.slice(0, 12)})` : ''}${when}`)
      }
      this.say('')
      this.say(doc.pending.length > 0 ? `Pending: ${doc.pending.join(', ')}. Run: nself db e2ee migrate` : 'Nothing pending.')
      this.say('')
      this.say(`Project     ${doc.settings.projectDir}${doc.settings.projectDirFrom ? ` (${doc.settings.projectDirFrom})` : ''}`)
      this.say(`ENV         ${doc.settings.env ?? 'dev'}${doc.settings.legacyOrder ? ', NSELF_LEGACY_ENV_ORDER: legacy cascade order' : ''}; env files read: ${doc.settings.envFiles.length > 0 ? doc.settings.envFiles.map((f) => path.relative(doc.settings.projectDir, f) || f).join(' → ') : 'none'}`)
      this.say('Settings came from:')
      for (const [k, v] of Object.entries(doc.connection.sources)) this.say(`  ${k.padEnd(12)} ${v}`)
    } finally {
      await ins.sql.end({timeout: 2})
    }
  }
}
