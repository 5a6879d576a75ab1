"""OpenAI-style citations: `url_citation` annotations for clients that render them (Open WebUI, the `openai` SDK).

Open WebUI turns each annotation into a source, merges those with the same URL, and opens marker `[n]` as the n-th
distinct source in the order the annotations came. So the list is ordered by source number: every marker of a
cited source in turn (its position in the text), and a source no marker names but that numbers below a cited one
gets one empty-range entry at the end of the text, so that `[3]` still opens source 3 when `[2]` is absent.
Each URL opens our own page on the cited chunk (collection, path, section): a link that works in a browser.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

_MARKER = re.compile(r"\[(\d{1,3})\]")


def chunk_url(base_url: str, source: dict[str, Any]) -> str:
    """Our chat page, opened on the source's chunk; the fragment keeps path and section out of server logs."""
    query = {"collection": source["collection"], "path": source["path"], "n": source["n"]}
    if source.get("section"):
        query["section"] = source["section"]
    return f"{base_url.rstrip('/')}/#source?{urlencode(query)}"


def citation_title(source: dict[str, Any]) -> str:
    where = f"{source['collection']}/{source['path']}"
    return f"{where} § {source['section']}" if source.get("section") else where


def url_citations(content: str, sources: list[dict[str, Any]], base_url: str) -> list[dict[str, Any]]:
    """One `url_citation` per marker of a listed source, ordered by source number (see the module's note)."""
    positions: dict[int, list[tuple[int, int]]] = {}
    for match in _MARKER.finditer(content):
        positions.setdefault(int(match.group(1)), []).append(match.span())
    by_number = {int(s["n"]): s for s in sources}
    cited = [n for n in positions if n in by_number]
    if not cited:
        return []
    last, annotations = max(cited), []
    for n in sorted(by_number):
        if n > last:
            break
        source = by_number[n]
        url, title = chunk_url(base_url, source), citation_title(source)
        for start, end in positions.get(n) or [(len(content), len(content))]:
            citation = {"url": url, "title": title, "start_index": start, "end_index": end}
            annotations.append({"type": "url_citation", "url_citation": citation})
    return annotations
