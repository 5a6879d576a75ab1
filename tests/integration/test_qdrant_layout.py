"""A Qdrant server cannot run here: the collection layout from collections.yaml is checked on the requests the real
`qdrant-client` sends to a loopback HTTP server that answers in the REST API's documented shape and records them."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from assets.collections import QdrantSpec, load_specs
from assets.index import QdrantIndex


class _Recorder(BaseHTTPRequestHandler):
    requests: list[tuple[str, str, Any]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, result: Any) -> None:
        body = json.dumps({"result": result, "status": "ok", "time": 0.001}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.requests.append((method, self.path.split("?")[0], body))
        if self.path == "/":
            body = json.dumps({"title": "qdrant - vector search engine", "version": "1.15.0"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path.startswith("/collections/") and self.path.split("?")[0].endswith("/exists"):
            self._reply({"exists": False})
        elif "/index" in self.path:
            self._reply({"operation_id": 1, "status": "completed"})
        else:
            self._reply(True)

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")


@pytest.fixture
def server() -> Iterator[str]:
    _Recorder.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_collection_is_created_with_the_shards_and_replicas_of_collections_yaml(server: str, tmp_path: Path) -> None:
    config = tmp_path / "collections.yaml"
    config.write_text(
        "collections:\n"
        "  runbooks:\n    chunk_tokens: 512\n    chunk_overlap: 50\n    source: {path: docs}\n"
        "    qdrant: {shard_number: 3, replication_factor: 2}\n"
        "  incidents:\n    chunk_tokens: 512\n    chunk_overlap: 50\n    source: {path: docs}\n"
    )
    specs = {s.name: s for s in load_specs(config)}
    assert specs["runbooks"].qdrant == QdrantSpec(shard_number=3, replication_factor=2)
    index = QdrantIndex(url=server, layouts={name: s.qdrant for name, s in specs.items()})
    index.ensure_collection("runbooks", 896)
    index.ensure_collection("incidents", 896)
    created = {path: body for method, path, body in _Recorder.requests if method == "PUT" and path.count("/") == 2}
    runbooks, incidents = created["/collections/runbooks"], created["/collections/incidents"]
    assert runbooks["shard_number"] == 3 and runbooks["replication_factor"] == 2
    assert runbooks["vectors"]["dense"]["size"] == 896 and runbooks["sparse_vectors"]["bm25"]["modifier"] == "idf"
    assert incidents.get("shard_number") is None and incidents.get("replication_factor") is None, "the server's defaults"


def test_a_layout_below_one_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="shard_number"):
        QdrantSpec(shard_number=0)
