"""Read-only MCP connectors to the team's live systems, one MCP server per system.

Each connector is built from the same small pieces: a settings model parsed from its
`connectors.yaml` entry (`connectors.config`), a GET-only HTTP client (`connectors.http`), masking of
every output (`connectors.masking`) and tool functions with typed, described parameters registered
with a read-only hint (`connectors.base`). Write tools do not exist. Connectors know nothing of the
API or the query engine; the agent's guard (`query_engine.tools.guard`) wraps every call on top.
"""

CONNECTORS = ("gitea", "kubernetes", "swarm", "loki", "cicd", "docs")
