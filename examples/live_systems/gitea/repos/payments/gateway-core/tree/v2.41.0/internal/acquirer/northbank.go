package acquirer

import "time"

// Northbank calls the northbank acquirer; a call that exceeds the deadline fails with
// "context deadline exceeded" and is counted in acquirer_timeouts_total{acquirer="northbank"}.
const northbankTimeout = 2 * time.Second
