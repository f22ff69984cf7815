import {faultTable} from './scenarios.js'

// The fault table (docs/reliability.md), Ctrl+C rows: every step of migrate and rollback, on a private cluster.
faultTable('Ctrl+C')
