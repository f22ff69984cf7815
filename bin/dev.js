#!/usr/bin/env node
// Development entry: same as run.js, but oclif reports itself in development mode (fuller errors).
// The TypeScript is compiled by `npm run build` first; there is no on-the-fly transpiler.
import {execute} from '@oclif/core'

await execute({development: true, dir: import.meta.url})
