import {faultTable} from './scenarios.js'

// The fault table (docs/reliability.md), kill -9 rows: every step of migrate and rollback, on a private cluster.
faultTable('kill -9')
