import {faultTable} from './scenarios.js'

// The fault table (docs/reliability.md), SIGTERM rows: every step of migrate and rollback, on a private cluster.
faultTable('SIGTERM')
