// Who may import whom inside src/ (README, "Architecture"): commands → pipeline → steps → library folders.
// A step never imports another step (what two steps share lives in a library folder), and a library folder
// never imports steps, pipeline or commands. Read from the import statements of src/**/*.ts.
import fs from 'node:fs'
import path from 'node:path'
import {fileURLToPath} from 'node:url'
import {describe, expect, it} from 'vitest'

const SRC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src')

/** Folders of src/ that are not library folders: the orchestration above the libraries, and nself's entry point. */
const NOT_LIBRARY = new Set(['commands', 'pipeline', 'steps', 'nself'])
const ABOVE_LIBRARIES = ['steps', 'pipeline', 'commands']

/** Every module specifier a file imports or re-exports (static, type-only, dynamic and side-effect imports). */
function specifiers(source: string): string[] {
  const code = source.replaceAll(/\/\*[\s\S]*?\*\//g, '').replaceAll(/^\s*\/\/.*$/gm, '')
  const found: string[] = []
  for (const m of code.matchAll(/\b(?:import|export)\s[^;'"]*?\bfrom\s*['"]([^'"]+)['"]/g)) found.push(m[1])
  for (const m of code.matchAll(/\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/g)) found.push(m[1])
  for (const m of code.matchAll(/^\s*import\s*['"]([^'"]+)['"]/gm)) found.push(m[1])
  return found
}

/** The top folder of a src-relative path ('' for a file directly in src/). */
function folderOf(rel: string): string {
  const parts = rel.split('/')
  return parts.length > 1 ? parts[0] : ''
}

/** Imports that break the rule, as "importer → imported" (src-relative), from a map of src-relative path → source. */
function layeringViolations(files: Map<string, string>): string[] {
  const out: string[] = []
  for (const [rel, source] of files) {
    const from = folderOf(rel)
    for (const spec of specifiers(source)) {
      if (!spec.startsWith('.')) continue
      const target = path.posix.normalize(path.posix.join(path.posix.dirname(rel), spec)).replace(/\.js$/, '.ts')
      if (target.startsWith('..')) continue
      const to = folderOf(target)
      if (from === 'steps' && to === 'steps') out.push(`${rel} → ${target} (a step imports another step)`)
      else if (from !== '' && !NOT_LIBRARY.has(from) && ABOVE_LIBRARIES.includes(to)) {
        out.push(`${rel} → ${target} (library folder ${from}/ imports ${to}/)`)
      }
    }
  }
  return out
}

function readSrc(): Map<string, string> {
  const files = new Map<string, string>()
  for (const entry of fs.readdirSync(SRC, {recursive: true, withFileTypes: true})) {
    if (!entry.isFile() || !entry.name.endsWith('.ts')) continue
    const full = path.join(entry.parentPath, entry.name)
    files.set(path.relative(SRC, full).split(path.sep).join('/'), fs.readFileSync(full, 'utf8'))
  }
  return files
}

describe('layering of src/', () => {
  it('no step imports another step, and no library folder imports steps, pipeline or commands', () => {
    const files = readSrc()
    expect(files.size).toBeGreaterThan(50)
    expect([...files.keys()].filter((f) => f.startsWith('steps/')).length).toBeGreaterThan(3)
    expect(layeringViolations(files)).toEqual([])
  })

  it('finds each kind of forbidden import, however it is written', () => {
    const files = new Map<string, string>([
      ['steps/a.ts', "import {b} from './b.js'\n"],
      ['steps/c.ts', "import type {X} from '../steps/b.js'\n"],
      ['archive/d.ts', "import {\n  run,\n} from '../pipeline/migrate.js'\n"],
      ['verify/e.ts', "export {f} from '../steps/b.js'\n"],
      ['pg/g.ts', "const m = await import('../commands/db/e2ee/migrate.js')\n"],
      ['nchat/h.ts', "// import {x} from '../steps/b.js'\nimport {plural} from '../text.js'\n"],
      ['steps/b.ts', "import {readToc} from '../archive/toc.js'\nimport {plural} from '../text.js'\n"],
      ['pipeline/p.ts', "import {a} from '../steps/a.js'\n"],
      ['index.ts', "export {a} from './steps/a.js'\n"],
    ])
    expect(layeringViolations(files)).toEqual([
      'steps/a.ts → steps/b.ts (a step imports another step)',
      'steps/c.ts → steps/b.ts (a step imports another step)',
      'archive/d.ts → pipeline/migrate.ts (library folder archive/ imports pipeline/)',
      'verify/e.ts → steps/b.ts (library folder verify/ imports steps/)',
      'pg/g.ts → commands/db/e2ee/migrate.ts (library folder pg/ imports commands/)',
    ])
  })
})
