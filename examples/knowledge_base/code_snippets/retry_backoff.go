package acquirer

import (
	"context"
	"math/rand"
	"time"
)

// Backoff returns the delay before retry attempt n: exponential with full jitter, capped.
func Backoff(n int, base, max time.Duration) time.Duration {
	d := base << n
	if d > max || d <= 0 {
		d = max
	}
	return time.Duration(rand.Int63n(int64(d)))
}

// CallWithRetry calls fn until it succeeds, returns a non-retryable error, or attempts run out.
func CallWithRetry(ctx context.Context, attempts int, fn func(context.Context) error) error {
	var err error
	for n := 0; n < attempts; n++ {
		if err = fn(ctx); err == nil || !IsRetryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(Backoff(n, 100*time.Millisecond, 2*time.Second)):
		}
	}
	return err
}

// IsRetryable reports whether an acquirer error may be retried: timeouts and 5xx only, never declines.
func IsRetryable(err error) bool {
	var t interface{ Temporary() bool }
	if e, ok := err.(interface{ Temporary() bool }); ok {
		t = e
		return t.Temporary()
	}
	return false
}
