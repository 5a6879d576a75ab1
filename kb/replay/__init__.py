"""Recorded API payloads of the systems that cannot run on one machine (Kubernetes, Loki, Gitea, ArgoCD),
served by a real HTTP server on loopback in their documented response shapes.

`kb up` serves the sample company's systems this way (the `replay` key of a connector in
`connectors.yaml`), and the tests use the same server. Each system has a module here with
`route(root, path, query) -> Reply`, reading payload files under `examples/live_systems/<system>/`.
Only GET is answered (405 otherwise), as a real read-only token would be.
"""
