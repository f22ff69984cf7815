import {faultTable} from './scenarios.js'

// The fault table (docs/reliability.md), "server restart" rows: every step of migrate and rollback, on a private
// cluster this file starts. Slow (a restart per row): run by `npm run faults`.
faultTable('server restart')
