package routing

import (
	"context"
	"sync"
)

// routingCache keeps each merchant's acquirer routing table in memory so a payment no
// longer waits for the routing service (#318).
//
// Entries are added on first use and never removed: one table per merchant ID.
type routingCache struct {
	mu      sync.RWMutex
	entries map[string]*Table // merchant ID -> routing table; unbounded
	source  TableSource
}

func newRoutingCache(source TableSource) *routingCache {
	return &routingCache{entries: make(map[string]*Table), source: source}
}

// Get returns the merchant's table, loading it once from the routing service.
func (c *routingCache) Get(ctx context.Context, merchantID string) (*Table, error) {
	c.mu.RLock()
	table, ok := c.entries[merchantID]
	c.mu.RUnlock()
	if ok {
		return table, nil
	}
	table, err := c.source.Load(ctx, merchantID)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.entries[merchantID] = table
	size := len(c.entries)
	c.mu.Unlock()
	if size%1000 == 0 {
		logger.Info("routing cache grew", "entries", size, "heap_mb", heapMB())
	}
	return table, nil
}
