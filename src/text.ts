import {setTimeout as sleep} from 'node:timers/promises'

/** Words and numbers as the operator reads them, text put into patterns, times in names, secrets kept out. */

/** "1 row", "2 rows", "1 index", "3 indexes": a count with its noun in the right number. */
export function plural(n: number, word: string, many = `${word}s`): string {
  return `${n} ${n === 1 ? word : many}`
}

/** "512 B", "1.5 kB", "3.2 MB", "1.1 GB": a size in the unit that keeps it short (powers of 1024). */
export function fmtBytes(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB']
  let i = 0
  let v = n
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`
}

/** Text to match literally inside a RegExp. */
export function escapeRegExp(s: string): string {
  return s.replaceAll(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

const pad = (n: number, w = 2) => String(n).padStart(w, '0')

/** Local time as nself's `date +%Y%m%d_%H%M%S` prints it; `sep` '' gives YYYYMMDDHHMMSS. */
export function timestamp(date = new Date(), sep = '_'): string {
  return `${date.getFullYear()}${pad(date.getMonth() + 1)}${pad(date.getDate())}${sep}${pad(date.getHours())}${pad(date.getMinutes())}${pad(date.getSeconds())}`
}

/** Wait for the next wall-clock second (names carry second resolution). */
export async function nextSecond(): Promise<void> {
  await sleep(1000 - (Date.now() % 1000) + 5)
}

/** Removes a secret from text that may reach the operator. */
export function redact(text: string, secret?: string): string {
  return secret ? text.split(secret).join('***') : text
}
