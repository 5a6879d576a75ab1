package acquirer

// Retries use full jitter: sleep rand(0, base*2^attempt), at most 3 attempts.
const maxAttempts = 3
