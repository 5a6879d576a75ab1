"""Sources as the API returns them, each with a link to its document."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from query_engine.engine import SourceRef


def source_dicts(sources: list[SourceRef]) -> list[dict[str, Any]]:
    return [{**s.as_dict(), "url": f"/v1/documents/{s.collection}/{quote(s.doc_id)}"} for s in sources]
