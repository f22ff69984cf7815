/**
 * The library behind the commands: usable without oclif (the commands are thin wrappers over these).
 *
 *   import {resolveTarget, connect, loadMigrations, migrateUp} from '@nself/plugin-e2ee'
 *   const target = resolveTarget({projectDir: '.', local: true})
 *   const sql = connect(target.conn)
 *   await migrateUp({sql, migrations: loadMigrations()})
 *
 * A run scope (src/run/scope.ts) is how a caller cancels and cleans up: `const scope = createRunScope({target})`,
 * pass it (`migrateUp({…, scope})`, `runMigrate(scope, options)`, `PgTools.create(target, scope)`), call
 * `scope.abort()` to stop the run (its handlers kill children and drop clones), and `scope.close()` to end the pools
 * it owns. `installSignalHandlers(scope)` routes Ctrl+C and SIGTERM to it as the commands do.
 */
export {CancelledError, UserError} from './errors.js'
export {createRunScope, loggerOf, silentLogger, RootScope, RunScope, type Logger} from './run/scope.js'
export {installSignalHandlers} from './run/signals.js'
export {resolveTarget, type Target, type TargetOptions} from './connection/target.js'
export {connect, connectChecked, type Sql} from './connection/connect.js'
export {PgTools} from './connection/tools.js'
export {loadMigrations, packagedMigrationsDir, type MigrationFile} from './migrations/files.js'
export {parseStatements, splitStatements, type Statement} from './migrations/statements.js'
export {readPlan, type Plan, type MigrationState} from './migrations/plan.js'
export {migrateDown, migrateUp, type RunReport, type RunnerOptions, type RunnerSettings} from './migrations/runner.js'
export {readLedgerVersion} from './migrations/ledger.js'
export {preflight} from './steps/preflight.js'
export {listBackups, newestBackup, chooseRollbackBackup} from './archive/listing.js'
export {takeBackup, verifyBackup} from './steps/backup.js'
export {compareWithBackup, describeLoss, type TableLoss} from './steps/loss.js'
export {createClone} from './clone/clone.js'
export {leftoverDatabases, leftoverPartials, repairClosedDatabase, sweepLeftovers} from './steps/leftovers.js'
export {acquireCommandLock, type CommandLock} from './migrations/command-lock.js'
export {restoreIntoNewDatabase, swapDatabases} from './steps/restore.js'
export {dryRun} from './steps/dryrun.js'
export {verifyDatabase} from './verify/verify-database.js'
export {vacuumTables} from './steps/vacuum.js'
export {runMigrate} from './pipeline/migrate.js'
export {runDryRun} from './pipeline/dryrun.js'
export {runRollback} from './pipeline/rollback.js'
export {runCleanup, cleanupTargets, type CleanupReport} from './maintain/cleanup.js'
export {maintenanceReport, type MaintenanceReport} from './maintain/report.js'
export {buildSchedule} from './maintain/schedule.js'
export {listAllBackups, markProtected, selectPrune, removeBackup} from './maintain/backups.js'
export {keptDatabases, dropKeptDatabase} from './maintain/kept.js'
