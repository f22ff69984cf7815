// The statistics of bench/run.js's report (median, min–max, percentiles, ours/guide ratios), its numbers and sizes
// as text, and its markdown tables.

import {fmtBytes} from '../../dist/text.js'

export function stats(values) {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b)
  if (v.length === 0) return {median: NaN, min: NaN, max: NaN, n: 0}
  const mid = Math.floor(v.length / 2)
  const median = v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2
  return {median, min: v[0], max: v.at(-1), n: v.length}
}

export const median = (values) => stats(values).median

export function percentile(values, p) {
  if (values.length === 0) return NaN
  const v = [...values].sort((a, b) => a - b)
  return v[Math.min(v.length - 1, Math.ceil((p / 100) * v.length) - 1)]
}

/** A number as the report prints it: 'ms' as ms or s, 'B' as the project's sizes (fmtBytes), else a count. */
export function fmtNum(x, unit = '') {
  if (!Number.isFinite(x)) return 'n/a'
  if (unit === 'ms') {
    if (x >= 10_000) return `${(x / 1000).toFixed(1)} s`
    if (x >= 1000) return `${(x / 1000).toFixed(2)} s`
    if (x >= 100) return `${Math.round(x)} ms`
    if (x >= 10) return `${x.toFixed(1)} ms`
    return `${x.toFixed(2)} ms`
  }
  if (unit === 'B') return fmtBytes(x)
  return Number.isInteger(x) ? x.toLocaleString('en-US') : x.toFixed(1)
}

/** The median of the runs, and their min–max when there is more than one. */
export function cell(values, unit) {
  const s = stats(values)
  if (s.n === 0) return 'n/a'
  if (s.n === 1) return fmtNum(s.median, unit)
  return `${fmtNum(s.median, unit)} (${fmtNum(s.min, unit)}–${fmtNum(s.max, unit)})`
}

export function ratio(ours, guide) {
  const a = median(ours)
  const b = median(guide)
  if (!Number.isFinite(a) || !Number.isFinite(b)) return 'n/a'
  if (b === 0) return a === 0 ? '1 (both 0)' : '∞'
  const r = a / b
  if (r === 0) return '0'
  return r >= 10 ? `${r.toFixed(0)}×` : r >= 0.1 ? `${r.toFixed(2)}×` : r >= 0.001 ? `${r.toFixed(3)}×` : '< 0.001×'
}

/** The cell of one field of each run's row. */
export const cellOf = (rows, key, unit) =>
  cell(
    rows.map((x) => x[key]),
    unit,
  )

/** The guide's cell, ours and ours/guide for one field of each run's row. */
export function sideBySide(res, key, unit) {
  const ratioOf = ratio(
    res.ours.map((x) => x[key]),
    res.guide.map((x) => x[key]),
  )
  return [cellOf(res.guide, key, unit), cellOf(res.ours, key, unit), ratioOf]
}

/** A markdown table: header row then rows of cells. */
export function table(header, rows, {left = false} = {}) {
  const lines = [`| ${header.join(' | ')} |`, `|${header.map((_, i) => (i === 0 || left ? '---' : '---:')).join('|')}|`]
  for (const r of rows) lines.push(`| ${r.join(' | ')} |`)
  return lines.join('\n')
}
