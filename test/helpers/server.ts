// The PostgreSQL server the tests use: the standard PG* variables, default 127.0.0.1:5432 user postgres.
// `.ci/run` points the same tests at servers 14, 16, 17 and 18 by setting PGPORT (see scripts/pg-servers.sh).
export const SERVER = {
  host: process.env.PGHOST || '127.0.0.1',
  port: Number(process.env.PGPORT || 5432),
  user: process.env.PGUSER || 'postgres',
} as const

/** `-h HOST -p PORT -U USER` for a client tool run by a test itself. */
export const SERVER_ARGS = ['-h', SERVER.host, '-p', String(SERVER.port), '-U', SERVER.user]
