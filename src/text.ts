/** Words and numbers as the operator reads them, and text put into patterns. */
/** "1 row", "2 rows", "1 index", "3 indexes": a count with its noun in the right number. */
export function plural(n: number, word: string, many = `${word}s`): string {
  return `${n} ${n === 1 ? word : many}`
}

/** "512 B", "1.5 kB", "3.2 MB", "1.1 GB": a size in the unit that keeps it short (powers of 1024). */
export function fmtBytes(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB']
  let i = 0
  let v = n
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++ }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`
}

/** Text to match literally inside a RegExp. */
export function escapeRegExp(s: string): string {
  return s.replaceAll(/[.*+?^${}()|[\]\\]/g, '\\$&')
}
