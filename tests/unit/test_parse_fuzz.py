"""Fuzzing parse → mask → chunk with generated documents in every format the parsers take (Markdown with
front matter, YAML, JSON, HTML, code, plain text) and with raw bytes under any file name.

Properties: parsing raises nothing but ParseError (with a known kind and a reason that quotes no
secret of the document); what masking leaves holds no secret the detector finds, masks to itself, and
none of the secrets written into the document; the chunks made of it hold none either. Chunks are
sized in the real English model's tokens, by its tokenizer alone (the `tokenizers` library on the
model's tokenizer.json, as FlagEmbedding counts them), without loading the model.

Every input that ever crashed the parser is kept in tests/fixtures/crashers/ and replayed here.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from assets.chunk import Chunk, Chunker
from assets.collections import CollectionSpec, SourceSpec
from assets.embed import Embedder
from assets.extract import RawDocument, sha256
from assets.mask import find_secrets, mask_secrets
from assets.parse import ParseError, parse_document
from assets.stages import mask

# Hypothesis's caches go to a folder removed at exit, not to .hypothesis/ in the repo.
_HYPOTHESIS_HOME = tempfile.TemporaryDirectory(prefix="kb-parse-fuzz-hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME.name)
# The same examples on every run and machine, no example database; bounded so the file runs in well under
# a minute on a busy runner (the first Markdown or HTML example pays unstructured's import).
FUZZ = settings(max_examples=50, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
CRASHERS = Path(__file__).parent.parent / "fixtures" / "crashers"
PARSE_KINDS = {"invalid_encoding", "unparseable", "zip_bomb"}
WORDS = (
    "payment gateway acquirer ledger settlement refund merchant fraud kafka consumer redis failover retry "
    "certificate deployment replica namespace runbook incident rollback latency batch webhook the of and to"
).split()
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


class TokenizerOnly(Embedder):
    """What the Chunker needs of an embedder: the English model's token ids and an id, nothing else."""

    dimension = 384
    model_id = "all-MiniLM-L6-v2-tokenizer"

    def __init__(self) -> None:
        import tokenizers

        from kb.settings import EmbeddingSettings

        self.tokenizer = tokenizers.Tokenizer.from_file(str(EmbeddingSettings().model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    def count_tokens(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def embed_passages(self, texts: list[str]) -> np.ndarray:  # type: ignore[type-arg]
        raise NotImplementedError("chunking only")

    def embed_queries(self, texts: list[str]) -> np.ndarray:  # type: ignore[type-arg]
        raise NotImplementedError("chunking only")


@cache
def chunker(splitter: str) -> Chunker:
    spec = CollectionSpec(name="fuzz", chunk_tokens=48, chunk_overlap=8, splitter=splitter, source=SourceSpec(path="/x"))  # type: ignore[arg-type]
    return Chunker(spec, TokenizerOnly())


@dataclass
class Doc:
    """A generated document: its text and the secret strings written into it."""

    text: str
    secrets: list[str] = field(default_factory=list)


def _chars(alphabet: str, size: int) -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(alphabet), min_size=size, max_size=size)


def _luhn(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits + "0")):
        n = int(ch) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return digits + str((10 - total % 10) % 10)


# Secrets whose whole text must not survive: (what goes into the document, the part that must go).
SECRETS = st.one_of(
    _chars("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16).map(lambda s: ("AKIA" + s,) * 2),
    _chars(ALNUM, 36).map(lambda s: ("ghp_" + s,) * 2),
    st.tuples(st.sampled_from(["DB_PASSWORD", "api_key", "client_secret"]), _chars(ALNUM, 14)).map(
        lambda kv: (f"{kv[0]}={kv[1]}9x", f"{kv[1]}9x")
    ),
    _chars("0123456789", 11)
    .map(lambda d: _luhn("4111" + d))
    .map(lambda n: (" ".join(n[i : i + 4] for i in range(0, 16, 4)),) * 2),
)
# Text between the secrets: words, markup characters, and any printable Unicode.
PIECES = st.one_of(
    st.sampled_from(WORDS),
    st.sampled_from(["**", "`", "_", "<", ">", "&amp;", "&#0;", "&#x110000;", "[x](y)", "|", "#", "---", "\t", "\\", "{{", "%"]),
    st.text(st.characters(codec="utf-8"), max_size=12),
)


@st.composite
def inline(draw: st.DrawFn, secrets: list[str]) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.integers(0, 6)) == 0:
            text, secret = draw(SECRETS)
            secrets.append(secret)
            parts.append(text)
        else:
            parts.append(draw(PIECES))
    return " ".join(parts)


@st.composite
def front_matter(draw: st.DrawFn, secrets: list[str]) -> str:
    values = st.one_of(
        inline(secrets).map(json.dumps),
        st.sampled_from(
            ["[sre, payments]", "2020-13-45", "2024-01-15T10:00:00Z", "&a x", "*a", "{x: 1}", "[unclosed", "!!int 0b"]
        ),
    )
    keys = st.sampled_from(["title", "severity", "allowed_groups", "systems", "date", "owner", "a"])
    lines = [f"{draw(keys)}: {draw(values)}" for _ in range(draw(st.integers(0, 4)))]
    return "---\n" + "\n".join(lines) + "\n---\n"


@st.composite
def markdown(draw: st.DrawFn) -> Doc:
    secrets: list[str] = []
    blocks = [draw(front_matter(secrets))] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 8))):
        text = draw(inline(secrets))
        blocks.append(
            draw(
                st.sampled_from(
                    [
                        f"{'#' * draw(st.integers(1, 7))} {text}",
                        text,
                        f"- {text}\n  - {text}",
                        f"1. {text}",
                        f"```\n{text}\n```",
                        f"> {text}",
                        f"| {text} | x |\n|---|---|",
                        f"<div>{text}</div>",
                        "---",
                    ]
                )
            )
        )
    return Doc(draw(st.sampled_from(["\n\n", "\n"])).join(blocks), secrets)


@st.composite
def html(draw: st.DrawFn) -> Doc:
    secrets: list[str] = []
    tags = st.sampled_from(["div", "p", "h1", "h2", "h3", "ul", "li", "table", "tr", "td", "pre", "code", "span", "script", "b"])

    def element(depth: int) -> str:
        tag = draw(tags)
        children = [
            draw(inline(secrets)) if depth > 3 or draw(st.booleans()) else element(depth + 1)
            for _ in range(draw(st.integers(0, 3)))
        ]
        closing = f"</{tag}>" if draw(st.integers(0, 5)) else ""  # now and then left open
        # Siblings apart: text glued to a word ("payment" + "AKIA…") is a boundary question for the masker,
        # not the parser, and is reported to it.
        return f'<{tag} class="{draw(st.sampled_from(WORDS))}">{" ".join(children)}{closing}'

    body = " ".join(element(0) for _ in range(draw(st.integers(1, 4))))
    return Doc(f"<html><head><title>{draw(inline(secrets))}</title></head><body>{body}</body></html>", secrets)


@st.composite
def yaml_documents(draw: st.DrawFn) -> Doc:
    secrets: list[str] = []
    docs = []
    for _ in range(draw(st.integers(1, 3))):
        lines = [f"kind: {draw(st.sampled_from(['Deployment', 'Secret', 'ConfigMap', '[x]', '{a: b}', '*a', '&a Service']))}"]
        name = draw(st.sampled_from(WORDS))
        if draw(st.booleans()):  # a secret as the object's name: it becomes section (and chunk) metadata
            name, secret = draw(SECRETS)
            secrets.append(secret)
        lines.append(f"metadata:\n  name: {json.dumps(name)}\n  namespace: {draw(st.sampled_from(WORDS))}")
        for _ in range(draw(st.integers(0, 5))):
            key = draw(st.sampled_from(WORDS))
            value = draw(inline(secrets))
            lines.append(
                draw(
                    st.sampled_from(
                        [
                            f"{key}: {json.dumps(value)}",
                            f"{key}: {value}",
                            f"{key}: |\n  {value}",
                            f"- {json.dumps(value)}",
                            f"  {key}: [{json.dumps(value)}, 1]",
                            f"{key}: 2020-13-45",
                        ]
                    )
                )
            )
        docs.append("\n".join(lines))
    return Doc("\n---\n".join(docs) + "\n", secrets)


@st.composite
def json_text(draw: st.DrawFn) -> Doc:
    secrets: list[str] = []
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), inline(secrets)
    )
    value = draw(
        st.recursive(
            scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(WORDS), c, max_size=3), max_leaves=12
        )
    )
    text = json.dumps(value, indent=draw(st.sampled_from([None, 2])), ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 4)) == 0:  # cut off: still indexable text
        text = text[: draw(st.integers(0, len(text)))]
    return Doc(text, secrets)


@st.composite
def code(draw: st.DrawFn) -> Doc:
    secrets: list[str] = []
    lines = []
    for n in range(draw(st.integers(1, 8))):
        text = draw(inline(secrets))
        lines.append(
            draw(
                st.sampled_from(
                    [
                        f"def f{n}(a):\n    # {text}\n    return a",
                        f"class C{n}:\n    x = {json.dumps(text)}",
                        f"@decorator\ndef g{n}():\n    pass",
                        f"func F{n}() {{\n\t// {text}\n}}",
                        f"API_TOKEN = {json.dumps(text)}",
                        f"# {text}",
                        text,
                        "x = (" * 5,
                    ]
                )
            )
        )
    return Doc("\n\n".join(lines) + "\n", secrets)


def pipeline(doc_id: str, content: bytes, secrets: list[str], splitter: str = "prose") -> list[Chunk]:
    """Parse, mask and chunk one document; check every property on the way. [] when it did not parse."""
    raw = RawDocument(doc_id, content, sha256(content), len(content), {"path": doc_id})
    try:
        parsed = parse_document(raw, splitter, "h")
    except ParseError as exc:
        assert exc.kind in PARSE_KINDS, exc.kind
        assert not any(s in str(exc) for s in secrets), "a quarantine reason quotes the document"
        return []
    masked = mask([parsed])
    assert masked.quarantined == [], masked.quarantined  # the masker failed, or left a secret it finds itself
    (doc,) = masked.documents
    texts = [s.text for s in doc.sections] + list(doc.metadata.values())
    for text in texts:
        assert find_secrets(text) == [], text
        assert mask_secrets(text).text == text  # masked text masks to itself
        assert not any(s in text for s in secrets), text
    chunks = chunker(splitter).chunk(doc)
    for piece in chunks:
        for text in (piece.text, *piece.metadata.values()):
            assert find_secrets(text) == [], text
            assert not any(s in text for s in secrets), text
    return chunks


@FUZZ
@given(markdown(), st.sampled_from(["a.md", "a.markdown", "a.txt", "a.rst"]))
def test_markdown_and_prose(doc: Doc, name: str) -> None:
    pipeline(name, doc.text.encode(), doc.secrets)


@FUZZ
@given(html())
def test_html(doc: Doc) -> None:
    pipeline("page.html", doc.text.encode(), doc.secrets)


@FUZZ
@given(yaml_documents(), st.sampled_from(["k8s.yaml", "values.yml"]))
def test_yaml(doc: Doc, name: str) -> None:
    pipeline(name, doc.text.encode(), doc.secrets, "yaml")


@FUZZ
@given(json_text())
def test_json(doc: Doc) -> None:
    pipeline("config.json", doc.text.encode(), doc.secrets, "code")


@FUZZ
@given(code(), st.sampled_from(["m.py", "m.go", "m.ts", "run.sh", "main.tf", "Dockerfile", "notes"]))
def test_code(doc: Doc, name: str) -> None:
    pipeline(name, doc.text.encode(), doc.secrets, "code")


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=2000),
        markdown().map(lambda d: d.text.encode("utf-16")),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    ),
    st.sampled_from(["a.md", "a.html", "a.yaml", "a.json", "a.py", "a.txt", "a.docx", "a.pdf", "a", "a.go"]),
)
def test_any_bytes_under_any_name_raise_only_parse_error(content: bytes, name: str) -> None:
    pipeline(name, content, [])


@pytest.mark.parametrize("path", sorted(CRASHERS.iterdir()), ids=lambda p: p.name)
def test_inputs_that_once_crashed_the_parser_now_parse_or_are_refused(path: Path) -> None:
    splitter = {".yaml": "yaml", ".py": "code"}.get(path.suffix, "prose")
    pipeline(path.name, path.read_bytes(), [], splitter)
