"""Access control: who is asking (identities from API keys, OIDC tokens, LDAP), what their roles let
them read, the per-user rate limits, and the audit log that records it."""
