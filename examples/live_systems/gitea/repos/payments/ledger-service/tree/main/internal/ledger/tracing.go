package ledger

// Spans carry the caller's trace id (W3C traceparent) from gateway-core.
