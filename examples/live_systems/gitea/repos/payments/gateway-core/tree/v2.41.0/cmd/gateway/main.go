package main

import "gitea.paylane.example/payments/gateway-core/internal/server"

func main() {
	server.Run()
}
