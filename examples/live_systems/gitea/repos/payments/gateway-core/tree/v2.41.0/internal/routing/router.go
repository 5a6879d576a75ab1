package routing

import "context"

// Router picks the acquirer for a payment from the merchant's routing table.
type Router struct {
	cache *routingCache
}

func NewRouter(source TableSource) *Router {
	return &Router{cache: newRoutingCache(source)}
}

// Route returns the acquirer for a payment: the merchant's table, then the card's category code.
func (r *Router) Route(ctx context.Context, p Payment) (Acquirer, error) {
	table, err := r.cache.Get(ctx, p.MerchantID)
	if err != nil {
		return Acquirer{}, err
	}
	return table.Pick(p.MCC, p.Amount), nil
}
