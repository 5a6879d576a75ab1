module gitea.paylane.example/payments/gateway-core

go 1.23

require (
	github.com/go-chi/chi/v5 v5.1.0
	github.com/prometheus/client_golang v1.20.5
)
