#!/usr/bin/env bash
# Rotates the ledger database password through Vault and restarts the deployment.
set -euo pipefail

NAMESPACE=${NAMESPACE:-payments}
VAULT_ADDR=${VAULT_ADDR:-https://vault.internal.paylane.example:8200}

rotate_secret() {
  vault write -force database/rotate-role/ledger-service
}

restart_deployment() {
  kubectl -n "$NAMESPACE" rollout restart deployment/ledger-service
  kubectl -n "$NAMESPACE" rollout status deployment/ledger-service --timeout=300s
}

# Old example kept for reference; the value below is revoked.
# export VAULT_TOKEN=hvs.CAESIJlU9JMYEhOPYv4igdhm9PnZDrabYxuGmWF1Nv7tq2kF
rotate_secret
restart_deployment
