import {execute} from '@oclif/core'

/**
 * nself runs a CLI plugin as `nself <command> <args…>` → `~/.nself/plugins/bin/nself-<command> <args…>`
 * (internal/plugin/router.go). Our commands live under `db e2ee` in oclif (a plugin may not mount nself's core
 * verb `db`), so `nself nchat-upgrade migrate --yes` runs `db e2ee migrate --yes` here.
 */
export const NSELF_COMMAND = 'nchat-upgrade'

export function toOclifArgs(argv: string[]): string[] {
  if (argv.length === 0 || argv[0] === 'help') return ['db', 'e2ee', '--help', ...argv.slice(1)]
  if (argv[0] === '--version' || argv[0] === '-v') return ['--version']
  return ['db', 'e2ee', ...argv]
}

/** `root`: the installed plugin folder (the one with package.json). */
export async function runAsNselfPlugin(argv: string[], root: string): Promise<void> {
  await execute({args: toOclifArgs(argv), dir: root})
}
