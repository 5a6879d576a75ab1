package routing

import "context"

// routingCache asks the routing service for a merchant's acquirer routing table on every
// payment; it keeps nothing in memory.
type routingCache struct {
	source TableSource
}

func newRoutingCache(source TableSource) *routingCache {
	return &routingCache{source: source}
}

// Get loads the merchant's table from the routing service.
func (c *routingCache) Get(ctx context.Context, merchantID string) (*Table, error) {
	return c.source.Load(ctx, merchantID)
}
