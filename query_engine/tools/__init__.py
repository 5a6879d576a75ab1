"""The agent's tools: MCP connectors loaded through llama-index-tools-mcp, each call through one guard."""
