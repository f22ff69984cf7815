/**
 * The Hasura step: a table Hasura does not track does not exist for nChat. nself keeps Hasura's metadata as
 * files in the project (`hasura/metadata`, nChat: `backend/hasura/metadata`) and applies them with
 * `nself db hasura metadata apply`, which the operator runs: this module writes the files, never talks to
 * Hasura. It follows the layout of the files already there (file naming, a list or a mapping per file) and
 * records what it added in `.nself-e2ee-hasura.json` beside them, so `rollback` takes out exactly that.
 */
import {existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync} from 'node:fs'
import path from 'node:path'

import {isMap, isSeq, parseDocument, stringify, type Document, type YAMLMap, type YAMLSeq} from 'yaml'

import {firstLine, UserError} from '../errors.js'
import {FUNCTIONS, MESSAGE_INSERT_COLUMNS, ROLE, TABLES, type TablePermission, type TableSpec} from './spec.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.hasura.metadata')

export const METADATA_DIRS = ['hasura/metadata', 'backend/hasura/metadata'] as const
export const RECORD_FILE = '.nself-e2ee-hasura.json'
export const APPLY_COMMAND = 'nself db hasura metadata apply'
const HEADER = '# Written by nself db e2ee (nChat v0.4.0 upgrade); `nself db e2ee rollback` removes it.\n'

export interface HasuraRecord {
  createdFiles: string[]
  includes: Array<{file: string; entry: string}>
  messageColumns: {file: string; columns: string[]} | null
  databasesFunctions: boolean
}

export interface HasuraResult {
  /** The metadata folder, or null when the project has none (nothing written). */
  dir: string | null
  written: string[]
  changed: string[]
  note: string
}

/** The project's Hasura metadata folder: the first of METADATA_DIRS that has databases/. */
export function findMetadataDir(projectDir: string): string | null {
  for (const rel of METADATA_DIRS) {
    const dir = path.join(projectDir, rel)
    if (existsSync(path.join(dir, 'databases'))) return dir
  }
  return null
}

const include = (file: string) => `!include ${file}`

function readDoc(file: string): Document {
  const doc = parseDocument(readFileSync(file, 'utf8'))
  if (doc.errors.length > 0) throw new UserError(messages.getMessage('error.not-yaml', [file, firstLine(doc.errors[0])]))
  return doc
}

/** The source named `default` in databases.yaml (nChat's only one), if the file lists it. */
function defaultSource(doc: Document): YAMLMap | undefined {
  if (!isSeq(doc.contents)) return undefined
  return (doc.contents as YAMLSeq).items.find((s) => isMap(s) && (s as YAMLMap).get('name') === 'default') as YAMLMap | undefined
}

function writeAtomic(file: string, text: string): void {
  const tmp = `${file}.nself-e2ee.tmp`
  writeFileSync(tmp, text)
  renameSync(tmp, file)
}

function permission(p: TablePermission, kind: 'select' | 'insert' | 'update'): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  if (kind === 'insert') out.check = p.check ?? {}
  if (p.set) out.set = p.set
  out.columns = p.columns
  if (kind !== 'insert') out.filter = p.filter ?? {}
  if (kind === 'update' && p.check) out.check = p.check
  if (kind === 'select') out.allow_aggregations = true
  return out
}

/** The metadata of one table in Hasura's v3 table format. */
export function tableMetadata(t: TableSpec, schema: string): Record<string, unknown> {
  const m: Record<string, unknown> = {table: {name: t.name, schema}}
  if (t.graphqlNames) {
    m.configuration = {column_config: Object.fromEntries(Object.entries(t.graphqlNames).map(([c, n]) => [c, {custom_name: n}])), custom_root_fields: {}}
  }
  const objects = (t.relationships ?? []).filter((r) => r.kind === 'object')
  const arrays = (t.relationships ?? []).filter((r) => r.kind === 'array')
  if (objects.length > 0) m.object_relationships = objects.map((r) => ({name: r.name, using: {foreign_key_constraint_on: r.column}}))
  if (arrays.length > 0)
    m.array_relationships = arrays.map((r) => ({name: r.name, using: {foreign_key_constraint_on: {column: r.column, table: {name: r.table, schema}}}}))
  if (t.insert) m.insert_permissions = [{permission: permission(t.insert, 'insert'), role: ROLE}]
  m.select_permissions = [{permission: permission(t.select, 'select'), role: ROLE}]
  if (t.update) m.update_permissions = [{permission: permission(t.update, 'update'), role: ROLE}]
  if (t.delete) m.delete_permissions = [{permission: {filter: t.delete.filter}, role: ROLE}]
  return m
}

interface Layout {
  /** `<schema>_<table>.yaml` (Hasura's default) or `<table>.yaml` (nChat's). */
  prefixed: boolean
  /** nChat's table files hold a one-element list; Hasura's hold a mapping. */
  listPerFile: boolean
}

function includesOf(doc: Document): string[] {
  if (!isSeq(doc.contents)) return []
  return (doc.contents as YAMLSeq).items.map((i) => String((i as {value?: unknown}).value ?? i)).filter((s) => s.startsWith('!include '))
}

function detectLayout(tablesDir: string, includes: string[]): Layout {
  const files = includes.map((s) => s.slice('!include '.length).trim())
  const prefixed = files.some((f) => /^(public|nchat)_nchat_/.test(f)) || files.length === 0
  let listPerFile = false
  const sample = files.find((f) => existsSync(path.join(tablesDir, f)))
  if (sample) listPerFile = isSeq(readDoc(path.join(tablesDir, sample)).contents)
  return {listPerFile, prefixed}
}

function appendInclude(doc: Document, entry: string): boolean {
  if (!isSeq(doc.contents)) doc.contents = doc.createNode([]) as unknown as typeof doc.contents
  if (includesOf(doc).includes(entry)) return false
  ;(doc.contents as YAMLSeq).items.push(doc.createNode(entry))
  return true
}

/**
 * Write the metadata that exposes every table and view of 013-016 and the claim function to role `user`.
 * Idempotent: a second run adds nothing. Returns what was written; `dir: null` when the project keeps no
 * Hasura metadata (then the tables must be tracked in the Hasura console).
 */
export function writeHasuraMetadata(projectDir: string, schema: string, existing?: Set<string>): HasuraResult {
  const has = (name: string) => !existing || existing.has(name)
  const dir = findMetadataDir(projectDir)
  if (!dir)
    return {
      changed: [],
      dir: null,
      note: messages.getMessage('note.no-folder', [METADATA_DIRS.join(' or '), projectDir]),
      written: [],
    }
  const recordFile = path.join(dir, RECORD_FILE)
  const record: HasuraRecord = existsSync(recordFile)
    ? (JSON.parse(readFileSync(recordFile, 'utf8')) as HasuraRecord)
    : {createdFiles: [], databasesFunctions: false, includes: [], messageColumns: null}
  const written: string[] = []
  const changed: string[] = []
  const rel = (f: string) => path.relative(dir, f)
  /** Writes one of our files (never over one the project had before) and lists it in `list`, the yaml in `listFile`. */
  const addIncluded = (file: string, body: unknown, list: Document, listFile: string) => {
    if (!existsSync(file) || record.createdFiles.includes(rel(file))) {
      writeAtomic(file, HEADER + stringify(body))
      if (!record.createdFiles.includes(rel(file))) record.createdFiles.push(rel(file))
      written.push(rel(file))
    }
    const entry = include(path.basename(file))
    if (appendInclude(list, entry)) record.includes.push({entry, file: rel(listFile)})
  }

  const tablesDir = path.join(dir, 'databases', 'default', 'tables')
  mkdirSync(tablesDir, {recursive: true})
  const tablesYaml = path.join(tablesDir, 'tables.yaml')
  const tablesDoc = existsSync(tablesYaml) ? readDoc(tablesYaml) : parseDocument('[]\n')
  const layout = detectLayout(tablesDir, includesOf(tablesDoc))

  for (const t of TABLES.filter((x) => has(x.name))) {
    const file = path.join(tablesDir, layout.prefixed ? `${schema}_${t.name}.yaml` : `${t.name}.yaml`)
    const body = tableMetadata(t, schema)
    addIncluded(file, layout.listPerFile ? [body] : body, tablesDoc, tablesYaml)
  }
  writeAtomic(tablesYaml, tablesDoc.toString())
  changed.push(rel(tablesYaml))

  // nChat lists the columns a user may insert into nchat_messages: the encrypted message needs 014's.
  const messagesFile = includesOf(tablesDoc)
    .map((s) => s.slice('!include '.length).trim())
    .find((f) => /(^|_)nchat_messages\.yaml$/.test(f) && !record.createdFiles.includes(rel(path.join(tablesDir, f))))
  if (messagesFile && has('nchat_identity_keys')) {
    const file = path.join(tablesDir, messagesFile)
    const doc = readDoc(file)
    const added = addMessageColumns(doc)
    if (added.length > 0) {
      writeAtomic(file, doc.toString())
      record.messageColumns = {columns: [...new Set([...(record.messageColumns?.columns ?? []), ...added])], file: rel(file)}
      changed.push(rel(file))
    }
  }

  const functionsDir = path.join(dir, 'databases', 'default', 'functions')
  mkdirSync(functionsDir, {recursive: true})
  const functionsYaml = path.join(functionsDir, 'functions.yaml')
  if (!existsSync(functionsYaml)) {
    writeAtomic(functionsYaml, '[]\n')
    record.createdFiles.push(rel(functionsYaml))
  }
  const functionsDoc = readDoc(functionsYaml)
  for (const f of FUNCTIONS.filter((x) => has(x.name))) {
    const file = path.join(functionsDir, `${schema}_${f.name}.yaml`)
    addIncluded(file, {configuration: {exposed_as: f.exposedAs}, function: {name: f.name, schema}, permissions: [{role: ROLE}]}, functionsDoc, functionsYaml)
  }
  writeAtomic(functionsYaml, functionsDoc.toString())
  changed.push(rel(functionsYaml))

  // The default source must include its functions file.
  const databasesYaml = path.join(dir, 'databases', 'databases.yaml')
  if (existsSync(databasesYaml)) {
    const doc = readDoc(databasesYaml)
    const source = defaultSource(doc)
    if (source && !source.has('functions')) {
      source.set('functions', '!include default/functions/functions.yaml')
      writeAtomic(databasesYaml, doc.toString())
      record.databasesFunctions = true
      changed.push(rel(databasesYaml))
    }
  }

  writeAtomic(recordFile, `${JSON.stringify(record, null, 2)}\n`)
  return {changed, dir, note: messages.getMessage('note.apply', [APPLY_COMMAND]), written}
}

function addMessageColumns(doc: Document): string[] {
  const entries = isSeq(doc.contents) ? (doc.contents as YAMLSeq).items : [doc.contents]
  const added: string[] = []
  for (const entry of entries) {
    if (!isMap(entry)) continue
    const perms = (entry as YAMLMap).get('insert_permissions')
    if (!isSeq(perms)) continue
    for (const p of (perms as YAMLSeq).items) {
      if (!isMap(p) || (p as YAMLMap).get('role') !== ROLE) continue
      const cols = (p as YAMLMap).getIn(['permission', 'columns'])
      if (!isSeq(cols)) continue // '*' already allows every column
      const have = (cols as YAMLSeq).items.map((i) => String((i as {value?: unknown}).value ?? i))
      for (const c of MESSAGE_INSERT_COLUMNS) {
        if (have.includes(c)) continue
        ;(cols as YAMLSeq).items.push(doc.createNode(c))
        added.push(c)
      }
    }
  }
  return added
}

/** Undo writeHasuraMetadata by its record: what it added goes, everything else stays. */
export function removeHasuraMetadata(projectDir: string): HasuraResult {
  const dir = findMetadataDir(projectDir)
  const recordFile = dir ? path.join(dir, RECORD_FILE) : ''
  if (!dir || !existsSync(recordFile)) return {changed: [], dir, note: messages.getMessage('note.nothing-written'), written: []}
  const record = JSON.parse(readFileSync(recordFile, 'utf8')) as HasuraRecord
  const changed: string[] = []
  const byFile = new Map<string, string[]>()
  for (const i of record.includes) byFile.set(i.file, [...(byFile.get(i.file) ?? []), i.entry])
  for (const [file, entries] of byFile) {
    const abs = path.join(dir, file)
    if (!existsSync(abs) || record.createdFiles.includes(file)) continue
    const doc = readDoc(abs)
    if (isSeq(doc.contents)) {
      const seq = doc.contents as YAMLSeq
      seq.items = seq.items.filter((i) => !entries.includes(String((i as {value?: unknown}).value ?? i)))
      writeAtomic(abs, doc.toString())
      changed.push(file)
    }
  }
  if (record.messageColumns) {
    const abs = path.join(dir, record.messageColumns.file)
    if (existsSync(abs)) {
      const doc = readDoc(abs)
      const drop = new Set(record.messageColumns.columns)
      const entries = isSeq(doc.contents) ? (doc.contents as YAMLSeq).items : [doc.contents]
      for (const entry of entries) {
        const perms = isMap(entry) ? (entry as YAMLMap).get('insert_permissions') : undefined
        if (!isSeq(perms)) continue
        for (const p of (perms as YAMLSeq).items) {
          const cols = isMap(p) ? (p as YAMLMap).getIn(['permission', 'columns']) : undefined
          if (isSeq(cols)) (cols as YAMLSeq).items = (cols as YAMLSeq).items.filter((i) => !drop.has(String((i as {value?: unknown}).value ?? i)))
        }
      }
      writeAtomic(abs, doc.toString())
      changed.push(record.messageColumns.file)
    }
  }
  if (record.databasesFunctions) {
    const abs = path.join(dir, 'databases', 'databases.yaml')
    if (existsSync(abs)) {
      const doc = readDoc(abs)
      const source = defaultSource(doc)
      if (source) {
        source.delete('functions')
        writeAtomic(abs, doc.toString())
        changed.push('databases/databases.yaml')
      }
    }
  }
  for (const file of record.createdFiles) rmSync(path.join(dir, file), {force: true})
  const functionsDir = path.join(dir, 'databases', 'default', 'functions')
  if (existsSync(functionsDir) && readdirSync(functionsDir).length === 0) rmSync(functionsDir, {recursive: true})
  rmSync(recordFile)
  return {changed, dir, note: messages.getMessage('note.removed', [APPLY_COMMAND]), written: record.createdFiles}
}

/** The tracked tables, views and functions of TABLES/FUNCTIONS that exist in `schema` now. */
export async function existingRelations(sql: import('../connection/connect.js').Querier, schema: string): Promise<Set<string>> {
  const names = [...TABLES.map((t) => t.name), ...FUNCTIONS.map((f) => f.name)]
  const rows = await sql<{name: string}[]>`
    select c.relname as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = ${schema} and c.relname = any(${names}::text[]) and c.relkind in ('r', 'p', 'v')
    union
    select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where n.nspname = ${schema} and p.proname = any(${names}::text[])`
  return new Set(rows.map((r) => r.name))
}

/**
 * Make the project's metadata match the database: what this plugin wrote before is taken out, then every
 * table, view and function of 013-016 that exists is written again (none after a full rollback).
 */
export function syncHasuraMetadata(projectDir: string, schema: string, existing: Set<string>): HasuraResult {
  const removed = removeHasuraMetadata(projectDir)
  if (existing.size === 0) return removed
  return writeHasuraMetadata(projectDir, schema, existing)
}
