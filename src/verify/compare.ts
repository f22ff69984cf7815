import {GUIDE_LEFTOVERS} from '../nchat/guide.js'
import {
  type Catalog,
  type CatalogObject,
  type ColumnDef,
  type ConstraintDef,
  CONSTRAINT_TYPE,
  displayIdent,
  type FunctionDef,
  type IndexDef,
  type ObjectDef,
  type RelationDef,
  RELKIND_TEXT,
  type TriggerDef,
} from './catalog.js'
import {canonical, expectedAt, type ExpectedObject, type ExpectedSchema, sameDef} from './expected.js'
import type {Checks} from './report.js'
import {loadMessages} from '../messages.js'

const messages = loadMessages('lib.verify.compare')

/** The live catalog compared with the reference snapshot: every expected object by name, the guide's leftovers gone. */

function migrationLabel(expected: ExpectedSchema, version: number): string {
  return expected.migrations[String(version)] ?? messages.getMessage('label.migration', [version])
}

function describeColumn(d: ColumnDef): string {
  return `${d.type}${d.notNull ? ' NOT NULL' : ' NULL'}${d.default === null ? ' without default' : ` DEFAULT ${d.default}`}${d.identity ? ` GENERATED (identity ${d.identity})` : ''}${d.generated ? ' GENERATED ALWAYS (stored)' : ''}`
}

/** Compare every expected object; returns the tables that are missing or not tables (their parts are not listed). */
export function checkObjects(checks: Checks, expected: ExpectedSchema, live: Catalog, upTo: number, schema: string): Set<string> {
  const q = (name: string) => `${displayIdent(schema)}.${displayIdent(name)}`
  const wanted = expected.objects
    .map((o) => ({at: expectedAt(o, upTo), o}))
    .filter((x): x is {at: {def: ObjectDef | null; version: number}; o: ExpectedObject} => x.at !== undefined)
  const broken = new Set<string>()
  const suppressed = new Map<string, number>()

  for (const {at, o} of wanted) {
    const by = migrationLabel(expected, at.version)
    const name = o.kind === 'column' || o.kind === 'trigger' ? `${o.kind} ${o.table}.${o.name}` : `${o.kind} ${o.name}`
    const cur = live.get(o.key)

    if (at.def === null) {
      // The migration drops it.
      if (cur && o.table) checks.fail(name, messages.getMessage('dropped.still-exists.on-table', [o.kind, o.name, o.table, by]))
      else if (cur) checks.fail(name, messages.getMessage('dropped.still-exists', [o.kind, o.name, by]))
      else checks.ok(name, messages.getMessage('dropped.absent', [by]))
      continue
    }
    if (o.table && broken.has(o.table)) {
      suppressed.set(o.table, (suppressed.get(o.table) ?? 0) + 1)
      continue
    }

    switch (o.kind) {
      case 'table':
      case 'view':
      case 'matview':
      case 'sequence': {
        const def = at.def as RelationDef
        if (!cur) {
          checks.fail(name, messages.getMessage('relation.missing', [o.kind, o.name, by]))
          if (o.kind === 'table') broken.add(o.name)
          break
        }
        const have = cur.def as RelationDef
        if (have.relkind !== def.relkind) {
          const kinds = [o.kind, o.name, RELKIND_TEXT[have.relkind] ?? have.relkind, RELKIND_TEXT[def.relkind] ?? def.relkind]
          const guideMatview = o.name === 'nchat_prekey_bundles' && have.relkind === 'm'
          checks.fail(name, guideMatview ? messages.getMessage('relation.wrong-kind.guide-matview', kinds) : messages.getMessage('relation.wrong-kind', kinds))
          if (o.kind === 'table') broken.add(o.name)
          break
        }
        if (def.columns) {
          const want = def.columns.map((c) => `${c.name} ${c.type}`)
          const got = (have.columns ?? []).map((c) => `${c.name} ${c.type}`)
          if (want.join(', ') !== got.join(', ')) {
            checks.fail(name, messages.getMessage('relation.columns-differ', [o.kind, o.name, got.join(', '), want.join(', ')]))
            break
          }
          checks.ok(name, messages.getMessage('relation.columns-ok', [def.columns.length, by]))
          break
        }
        if (o.kind === 'sequence' && (have.ownedBy !== def.ownedBy || have.type !== def.type)) {
          checks.fail(
            name,
            messages.getMessage('sequence.differs', [
              o.name,
              have.type ?? '?',
              have.ownedBy ?? messages.getMessage('value.nothing'),
              def.type ?? '?',
              def.ownedBy ?? messages.getMessage('value.nothing'),
            ]),
          )
          break
        }
        checks.ok(name, messages.getMessage('exists', [by]))
        break
      }

      case 'column': {
        const def = at.def as ColumnDef
        if (!cur) {
          checks.fail(name, messages.getMessage('column.missing', [String(o.table), o.name, by, describeColumn(def)]))
          break
        }
        const have = cur.def as ColumnDef
        const diffs: string[] = []
        if (have.type !== def.type) diffs.push(messages.getMessage('column.diff.type', [have.type, def.type]))
        if (have.notNull !== def.notNull) diffs.push(def.notNull ? messages.getMessage('column.diff.nullable') : messages.getMessage('column.diff.not-null'))
        if ((have.default ?? null) !== (def.default ?? null))
          diffs.push(
            messages.getMessage('column.diff.default', [have.default ?? messages.getMessage('value.none'), def.default ?? messages.getMessage('value.none')]),
          )
        if ((have.identity ?? '') !== (def.identity ?? '') || (have.generated ?? '') !== (def.generated ?? ''))
          diffs.push(messages.getMessage('column.diff.identity'))
        if (diffs.length > 0) checks.fail(name, messages.getMessage('column.differs', [String(o.table), o.name, by, diffs.join('; ')]))
        else checks.ok(name, `${describeColumn(def)} (${by})`)
        break
      }

      case 'index': {
        const def = at.def as IndexDef
        if (!cur) {
          const twin = [...live.values()].find((x) => x.kind === 'index' && sameDef(x.def, def))
          if (twin) checks.warn(name, messages.getMessage('index.twin', [o.name, def.table, twin.name, def.definition]))
          else checks.fail(name, messages.getMessage('index.missing', [o.name, def.table, by, `${def.unique ? 'UNIQUE ' : ''}${def.definition}`]))
          break
        }
        const have = cur.def as IndexDef
        if (have.table !== def.table) {
          checks.fail(name, messages.getMessage('index.wrong-table', [o.name, have.table, def.table]))
          break
        }
        if (have.definition !== def.definition || have.unique !== def.unique || have.primary !== def.primary) {
          checks.fail(
            name,
            messages.getMessage('index.differs', [
              o.name,
              def.table,
              `${have.unique ? 'UNIQUE ' : ''}${have.definition}`,
              `${def.unique ? 'UNIQUE ' : ''}${def.definition}`,
              by,
            ]),
          )
          break
        }
        if (cur.state?.valid === false || cur.state?.ready === false) {
          checks.fail(name, messages.getMessage('index.invalid', [o.name, def.table, q(o.name)]))
          break
        }
        checks.ok(name, messages.getMessage('index.ok', [def.table, `${def.unique ? 'UNIQUE ' : ''}${def.definition}`]))
        break
      }

      case 'constraint':
        checkConstraint(checks, name, o, at.def as ConstraintDef, cur, live, by, q)
        break

      case 'function': {
        const def = at.def as FunctionDef
        if (!cur) {
          const base = o.name.replace(/\(.*$/, '')
          const other = [...live.values()].filter((x) => x.kind === 'function' && x.name.startsWith(`${base}(`)).map((x) => x.name)
          checks.fail(
            name,
            other.length
              ? messages.getMessage('function.missing.others', [o.name, by, other.join(', ')])
              : messages.getMessage('function.missing', [o.name, by]),
          )
          break
        }
        const have = cur.def as FunctionDef
        const diffs: string[] = []
        if (have.returns !== def.returns) diffs.push(messages.getMessage('function.diff.returns', [String(have.returns), String(def.returns)]))
        if (have.language !== def.language) diffs.push(messages.getMessage('function.diff.language', [have.language, def.language]))
        if (have.volatility !== def.volatility) diffs.push(messages.getMessage('function.diff.volatility', [have.volatility, def.volatility]))
        if (have.securityDefiner !== def.securityDefiner)
          diffs.push(def.securityDefiner ? messages.getMessage('function.diff.not-security-definer') : messages.getMessage('function.diff.security-definer'))
        if (canonical(have.config) !== canonical(def.config))
          diffs.push(messages.getMessage('function.diff.settings', [have.config.join(', '), def.config.join(', ')]))
        if (have.bodySha256 !== def.bodySha256) diffs.push(messages.getMessage('function.diff.body'))
        if (diffs.length > 0) checks.fail(name, messages.getMessage('function.differs', [o.name, by, diffs.join('; ')]))
        else checks.ok(name, messages.getMessage('function.ok', [by]))
        break
      }

      case 'trigger': {
        const def = at.def as TriggerDef
        if (!cur) checks.fail(name, messages.getMessage('trigger.missing', [o.name, String(o.table), by]))
        else if ((cur.def as TriggerDef).definition !== def.definition)
          checks.fail(name, messages.getMessage('trigger.differs', [o.name, String(o.table), by, (cur.def as TriggerDef).definition]))
        else checks.ok(name, messages.getMessage('exists', [by]))
        break
      }
    }
  }

  for (const [table, n] of suppressed) {
    const c = checks.list.find((x) => x.status === 'fail' && x.name === `table ${table}`)
    if (c) c.detail = c.detail.replace(/\.$/, ` ${messages.getMessage('suppressed', [n])}.`)
  }
  return broken
}

function describeFk(d: ConstraintDef): string {
  const r = d.references
  if (!r) return d.definition
  return `(${d.columns.join(', ')}) → ${r.table}(${r.columns.join(', ')}) ON DELETE ${r.onDelete}`
}

function checkConstraint(
  checks: Checks,
  name: string,
  o: ExpectedObject,
  def: ConstraintDef,
  cur: CatalogObject | undefined,
  live: Catalog,
  by: string,
  q: (name: string) => string,
): void {
  const what = CONSTRAINT_TYPE[def.type] ?? 'constraint'
  name = `${what} ${o.name}`
  let found = cur
  let renamed = false
  if (!found) {
    // Not by name: look for the same constraint under another name (table, columns → referenced table; or definition).
    const candidates = [...live.values()].filter(
      (x) => x.kind === 'constraint' && (x.def as ConstraintDef).table === def.table && (x.def as ConstraintDef).type === def.type,
    )
    const cdef = (x: CatalogObject) => x.def as ConstraintDef
    found =
      def.type === 'f'
        ? candidates.find((x) => canonical(cdef(x).columns) === canonical(def.columns) && cdef(x).references?.table === def.references?.table)
        : def.type === 'c'
          ? // A check by its definition, else a check on the same columns (compared below: the D1 variant).
            (candidates.find((x) => cdef(x).definition === def.definition)
            ?? (def.columns.length > 0 ? candidates.find((x) => canonical(cdef(x).columns) === canonical(def.columns)) : undefined))
          : candidates.find((x) => canonical(cdef(x).columns) === canonical(def.columns))
    if (!found) {
      checks.fail(name, messages.getMessage('constraint.missing', [what, o.name, def.table, by, def.type === 'f' ? describeFk(def) : def.definition]))
      return
    }
    renamed = true
  }
  const have = found.def as ConstraintDef
  const label = renamed
    ? messages.getMessage('constraint.label.renamed', [what, found.name, o.name, def.table])
    : messages.getMessage('constraint.label', [what, found.name, def.table])
  if (have.type !== def.type) {
    checks.fail(name, messages.getMessage('constraint.wrongType', [label, CONSTRAINT_TYPE[have.type] ?? have.type, what]))
    return
  }
  if (def.type === 'f' && have.references && def.references) {
    const diffs: string[] = []
    if (canonical(have.columns) !== canonical(def.columns)) {
      diffs.push(messages.getMessage('constraint.diff.columns', [have.columns.join(', '), def.columns.join(', ')]))
    }
    if (have.references.table !== def.references.table || canonical(have.references.columns) !== canonical(def.references.columns)) {
      diffs.push(
        messages.getMessage('constraint.diff.references', [
          have.references.table,
          have.references.columns.join(', '),
          def.references.table,
          def.references.columns.join(', '),
        ]),
      )
    }
    if (have.references.onDelete !== def.references.onDelete)
      diffs.push(messages.getMessage('constraint.diff.onDelete', [have.references.onDelete, def.references.onDelete]))
    if (have.references.onUpdate !== def.references.onUpdate)
      diffs.push(messages.getMessage('constraint.diff.onUpdate', [have.references.onUpdate, def.references.onUpdate]))
    if (diffs.length > 0) {
      checks.fail(name, messages.getMessage('constraint.differs', [label, by, diffs.join('; ')]))
      return
    }
  }
  if (have.definition !== def.definition) {
    const d1 = def.type === 'c' && /verification_method/.test(def.definition) && !/IS NULL/.test(have.definition)
    checks.fail(
      name,
      d1
        ? messages.getMessage('constraint.definition.d1', [label, have.definition, def.definition])
        : messages.getMessage('constraint.definition', [label, have.definition, def.definition]),
    )
    return
  }
  if (have.deferrable !== def.deferrable || have.deferred !== def.deferred) {
    const timing = have.deferrable ? 'DEFERRABLE' : 'NOT DEFERRABLE'
    checks.fail(
      name,
      have.deferred
        ? messages.getMessage('constraint.deferrable.deferred', [label, timing, by])
        : messages.getMessage('constraint.deferrable', [label, timing, by]),
    )
    return
  }
  if (found.state?.validated === false) {
    checks.fail(name, messages.getMessage('constraint.notValid', [label, q(def.table), displayIdent(found.name)]))
    return
  }
  const summary = def.type === 'f' ? messages.getMessage('constraint.fk.validated', [describeFk(def)]) : def.definition
  if (renamed) checks.warn(name, messages.getMessage('constraint.renamed', [label, summary]))
  else checks.ok(name, messages.getMessage('constraint.ok', [def.table, summary]))
}

export function checkGuideLeftovers(checks: Checks, live: Catalog): void {
  for (const f of GUIDE_LEFTOVERS.functions) {
    const found = [...live.values()].filter((x) => x.kind === 'function' && x.name.startsWith(`${f}(`))
    if (found.length > 0) checks.fail(`absent: function ${f}`, messages.getMessage('leftover.function', [found[0].name]))
    else checks.ok(`absent: function ${f}`, messages.getMessage('leftover.function.gone'))
  }
  const triggers = [...live.values()].filter((x) => x.kind === 'trigger')
  for (const t of GUIDE_LEFTOVERS.triggers) {
    const found = triggers.find((x) => x.table === t.table && x.name === t.name)
    if (found) checks.fail(`absent: trigger ${t.name}`, messages.getMessage('leftover.trigger', [t.name, t.table]))
    else checks.ok(`absent: trigger ${t.name}`, messages.getMessage('leftover.trigger.gone'))
  }
  for (const t of triggers) {
    const d = t.def as TriggerDef
    if (
      GUIDE_LEFTOVERS.functions.includes(d.function as (typeof GUIDE_LEFTOVERS.functions)[number])
      && !GUIDE_LEFTOVERS.triggers.some((g) => g.name === t.name && g.table === t.table)
    ) {
      checks.fail(`absent: trigger ${t.name}`, messages.getMessage('leftover.trigger.runs', [t.name, String(t.table), d.function]))
    }
  }
  for (const i of GUIDE_LEFTOVERS.indexes) {
    const found = live.get(`index:${i}`)
    if (found) checks.fail(`absent: index ${i}`, messages.getMessage('leftover.index', [i, String(found.table)]))
    else checks.ok(`absent: index ${i}`, messages.getMessage('leftover.index.gone'))
  }
}

/** Invalid indexes that are not ours, on the tables we touch (e.g. leftovers of REINDEX CONCURRENTLY). */
export function checkInvalidLeftovers(checks: Checks, expected: ExpectedSchema, live: Catalog, upTo: number): void {
  const tables = new Set(expected.objects.flatMap((o) => (o.since <= upTo && o.table ? [o.table] : [])))
  const ours = new Set(expected.objects.filter((o) => o.kind === 'index').map((o) => o.name))
  for (const o of live.values()) {
    if (o.kind !== 'index' || ours.has(o.name) || !o.table || !tables.has(o.table)) continue
    if (o.state?.valid === false || o.state?.ready === false) {
      checks.warn(`index ${o.name}`, messages.getMessage('leftover.invalidIndex', [o.name, String(o.table), o.name]))
    }
  }
}

export function hasColumn(live: Catalog, table: string, column: string): boolean {
  return live.has(`column:${table}.${column}`)
}
