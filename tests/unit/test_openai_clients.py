"""What OpenAI-compatible chat clients get: `url_citation` annotations in the shape the `openai` SDK types and
Open WebUI reads, and a client's housekeeping prompts told from questions."""

from __future__ import annotations

from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

from openai.types.chat import ChatCompletion

from api.citations import chunk_url, url_citations
from api.housekeeping import housekeeping_kind

SOURCES = [
    {"n": 1, "collection": "runbooks", "path": "kafka/lag.md", "section": "Scaling consumers", "cited": True},
    {"n": 2, "collection": "technical_docs", "path": "adr-0007.md", "section": None, "cited": False},
    {"n": 3, "collection": "incidents", "path": "2024-03 lag.md", "section": "Timeline", "cited": True},
]
BASE = "https://kb.example.internal/"


def open_webui_source_ids(annotations: list[dict]) -> list[str]:
    """The order Open WebUI opens markers in: one source per distinct URL, in the order the annotations came
    (its middleware emits a source per url_citation; getSourceIds in ContentRenderer.svelte keeps first sightings)."""
    seen: list[str] = []
    for annotation in annotations:
        if annotation.get("type") == "url_citation" and "url_citation" in annotation:
            url = annotation["url_citation"]["url"]
            if url not in seen:
                seen.append(url)
    return seen


def test_each_marker_gets_an_annotation_at_its_position_and_n_opens_source_n() -> None:
    text = "Scale the consumer group [1]. The March incident [3] shows the lag; see also [1]."
    annotations = url_citations(text, SOURCES, BASE)
    spans = [(a["url_citation"]["start_index"], a["url_citation"]["end_index"]) for a in annotations]
    for start, end in spans:
        assert text[start:end] in {"[1]", "[2]", "[3]", ""}
    assert [text[s:e] for s, e in spans] == ["[1]", "[1]", "", "[3]"]  # source 2 is uncited: an empty range at the end
    ids = open_webui_source_ids(annotations)
    assert ids == [chunk_url(BASE, s) for s in SOURCES]  # marker [3] opens the third distinct source: source 3
    assert annotations[3]["url_citation"]["title"] == "incidents/2024-03 lag.md § Timeline"


def test_sources_after_the_last_cited_one_and_answers_without_markers_get_none() -> None:
    assert len(url_citations("Only the first [1].", SOURCES, BASE)) == 1
    assert url_citations("I could not find this in the knowledge base.", SOURCES, BASE) == []
    assert url_citations("A marker with no source [9].", SOURCES, BASE) == []


def test_the_url_opens_the_chunk_on_our_page_with_collection_path_and_section() -> None:
    url = chunk_url(BASE, SOURCES[2])
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path, parts.query) == ("https", "kb.example.internal", "/", "")
    assert parts.fragment.startswith("source?")
    query = parse_qs(parts.fragment.removeprefix("source?"))
    assert query == {"collection": ["incidents"], "path": ["2024-03 lag.md"], "n": ["3"], "section": ["Timeline"]}


def test_a_completion_with_annotations_is_a_valid_openai_chat_completion() -> None:
    text = "Scale the consumer group [1]."
    completion = ChatCompletion.model_validate({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "default",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": text, "annotations": url_citations(text, SOURCES, BASE)}}],
    })  # fmt: skip
    annotation = completion.choices[0].message.annotations[0]  # type: ignore[index]
    assert annotation.type == "url_citation"
    assert text[annotation.url_citation.start_index : annotation.url_citation.end_index] == "[1]"
    assert annotation.url_citation.url.startswith(BASE)


def message(role: str, content: str) -> SimpleNamespace:
    return SimpleNamespace(role=role, text=lambda: content)


def test_housekeeping_prompts_are_told_from_questions() -> None:
    title = (
        "### Task:\n"
        "Generate a concise, 3-5 word title with an emoji summarizing the chat history.\n"
        "### Output:\n"
        'JSON format: { "title": "..." }\n'
        "<chat_history>\n"
        "USER: hi\n"
        "</chat_history>"
    )
    tags = (
        "### Task:\n"
        "Generate 1-3 broad tags categorizing the main themes of the chat history.\n"
        "### Output:\n"
        'JSON format: { "tags": [] }\n'
        "<chat_history>\n"
        "</chat_history>"
    )
    follow = (
        "### Task:\n"
        "Suggest 3-5 relevant follow-up questions or prompts.\n"
        "### Output:\n"
        'JSON format: { "follow_ups": [] }\n'
        "<chat_history>\n"
        "</chat_history>"
    )
    assert housekeeping_kind([message("user", title)]) == "title"
    assert housekeeping_kind([message("user", tags)]) == "tags"
    assert housekeeping_kind([message("user", follow)]) == "follow_up"
    assert housekeeping_kind([message("user", "### Task:\nSomething new\n### Output:\nJSON")]) == "other"
    # Questions, also one that opens like a task and one that talks about titles, are questions.
    assert housekeeping_kind([message("user", "How do I generate a concise title for a runbook?")]) is None
    assert housekeeping_kind([message("user", "### Task: rotate the Kafka TLS certificate\nWhat are the steps?")]) is None
    assert housekeeping_kind([message("user", title), message("assistant", "{}"), message("user", "And the retention?")]) is None
