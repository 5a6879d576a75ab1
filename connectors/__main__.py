"""`python -m connectors NAME`: run one connector as an MCP server (stdio, or streamable HTTP with --port)."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from connectors.config import load_connectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=["gitea", "kubernetes", "swarm", "loki", "cicd"])
    parser.add_argument("--config", type=Path, default=None, help="connectors.yaml (default: KB_CONNECTORS_FILE or the repo's)")
    parser.add_argument("--port", type=int, default=None, help="serve streamable HTTP on 127.0.0.1:PORT/mcp instead of stdio")
    args = parser.parse_args()
    config = load_connectors(args.config)
    module = importlib.import_module(f"connectors.{args.name}")
    server = module.build_server(config)
    if args.port is None:
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
