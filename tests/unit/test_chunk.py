from assets.chunk import Chunker, chunk_id
from assets.collections import CollectionSpec, SourceSpec
from assets.parse import ParsedDocument, Section


def spec(size: int, overlap: int, splitter: str = "prose") -> CollectionSpec:
    return CollectionSpec(name="t", chunk_tokens=size, chunk_overlap=overlap, splitter=splitter, source=SourceSpec(path="/x"))  # type: ignore[arg-type]


def test_chunks_respect_the_token_budget_and_overlap(embedder) -> None:  # type: ignore[no-untyped-def]
    sentences = " ".join(f"Sentence number {i} describes how the gateway retries acquirer calls." for i in range(200))
    doc = ParsedDocument("d.md", "h", (Section(sentences, ("Guide", "Retries")),), {"path": "d.md"})
    chunks = Chunker(spec(128, 16), embedder).chunk(doc)
    assert len(chunks) > 10
    assert all(c.token_count <= 128 for c in chunks)
    assert all(c.text.startswith("Guide > Retries\n\n") for c in chunks)
    assert all(c.metadata["section"] == "Retries" and c.metadata["headings"] == "Guide > Retries" for c in chunks)
    # Overlap: each chunk starts with text the previous one ended with.
    tail = chunks[0].text.split()[-3:]
    assert " ".join(tail) in chunks[1].text


def test_chunk_ids_are_deterministic_and_distinct_per_collection() -> None:
    assert chunk_id("docs", "a.md", 0) == chunk_id("docs", "a.md", 0)
    assert chunk_id("docs", "a.md", 0) != chunk_id("code", "a.md", 0)
    assert chunk_id("docs", "a.md", 0) != chunk_id("docs", "a.md", 1)


def test_code_units_stay_whole_and_imports_join_the_next_unit(embedder) -> None:  # type: ignore[no-untyped-def]
    doc = ParsedDocument(
        "m.py", "h",
        (Section("import os\n"), Section("def a():\n    return 1\n", metadata={"symbol": "a"}),
         Section("def b():\n    return 2\n", metadata={"symbol": "b"})),
        {"language": "python"},
    )  # fmt: skip
    chunks = Chunker(spec(256, 25, "code"), embedder).chunk(doc)
    assert [c.metadata.get("symbol") for c in chunks] == ["a", "b"]
    assert chunks[0].text.startswith("m.py\n\nimport os")
