package ledger

// Insert writes entries in batches of 500 under one row lock on ledger_entries.
const batchSize = 500
