"""Parse raw documents into sections with unstructured (prose) or on their structure (code, YAML).

A document that cannot be parsed raises `ParseError`; the caller quarantines it and goes on.
"""

from __future__ import annotations

import ast
import io
import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import PurePosixPath
from typing import Any

import yaml

from assets.extract import ACL_FRONT_MATTER_KEY, ACL_KEY, RawDocument, parse_groups

PROSE_SUFFIXES = {".md", ".markdown", ".txt", ".rst", ".html", ".htm", ".pdf", ".docx"}
YAML_SUFFIXES = {".yaml", ".yml"}
CODE_LANGUAGES = {
    ".py": "python", ".go": "go", ".js": "javascript", ".ts": "typescript", ".java": "java", ".kt": "kotlin",
    ".sh": "bash", ".bash": "bash", ".sql": "sql", ".rb": "ruby", ".rs": "rust", ".c": "c", ".h": "c",
    ".cpp": "cpp", ".cs": "csharp", ".tf": "terraform", ".toml": "toml", ".ini": "ini", ".cfg": "ini",
    ".json": "json", ".conf": "config", ".properties": "properties", ".dockerfile": "dockerfile",
}  # fmt: skip
FRAMEWORK_MARKERS = {
    "fastapi": "fastapi", "django": "django", "flask": "flask", "sqlalchemy": "sqlalchemy", "pytest": "pytest",
    "springframework": "spring", "gin-gonic": "gin", "express": "express", "react": "react", "kafka": "kafka",
    "grpc": "grpc", "celery": "celery", "k8s.io": "kubernetes", "kubernetes": "kubernetes",
}  # fmt: skip
# Top-level declarations that start a new unit in languages without a parser here.
_DECLARATION = re.compile(
    r"^(?:export\s+)?(?:public\s+|private\s+|protected\s+)?(?:static\s+)?(?:async\s+)?"
    r"(?:func|function|def|class|interface|type|struct|impl|fn|module|resource|CREATE|create)\b[^\n]*$",
    re.MULTILINE,
)
_DECLARED_NAME = re.compile(
    r"(?:func|function|def|class|interface|type|struct|impl|fn|module|resource)\s+(?:\([^)]*\)\s*)?([\w.\"]+)"
)
# unstructured's per-document language detection (langdetect) is most of its parsing time here, and
# `detect_language` below already sets the document language the index filters on.
NO_LANGUAGE_DETECTION = [""]
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.DOTALL)


class ParseError(Exception):
    """The document cannot be turned into text; the reason is shown to operators."""


@dataclass(frozen=True)
class Section:
    """A piece of a document that chunks never cross: a heading's section, a function, a YAML document."""

    text: str
    headings: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedDocument:
    doc_id: str
    doc_hash: str
    sections: tuple[Section, ...]
    metadata: dict[str, str]


def document_kind(doc_id: str, default: str) -> str:
    """'prose', 'code' or 'yaml' from the file name; unknown text files take the collection's splitter."""
    name = PurePosixPath(doc_id.lower())
    if name.suffix in PROSE_SUFFIXES:
        return "prose"
    if name.suffix in YAML_SUFFIXES:
        return "yaml"
    if name.suffix in CODE_LANGUAGES or name.name == "dockerfile":
        return "code"
    return default


def parse_document(raw: RawDocument, default_kind: str, doc_hash: str) -> ParsedDocument:
    """Turn one raw document into sections; raise ParseError with a reason an operator can act on."""
    if raw.skipped_reason:
        raise ParseError(raw.skipped_reason)
    kind = document_kind(raw.doc_id, default_kind)
    suffix = PurePosixPath(raw.doc_id.lower()).suffix
    metadata = dict(raw.metadata)
    if suffix in {".pdf", ".docx"}:
        sections = _partition_binary(raw)
    else:
        text = decode_text(raw.content)
        front, body = split_front_matter(text)
        metadata.update(front)
        if ACL_FRONT_MATTER_KEY in front:  # the document's own access list wins over its folder's
            metadata[ACL_KEY] = ", ".join(parse_groups(metadata.pop(ACL_FRONT_MATTER_KEY)))
        if kind == "yaml":
            sections = _yaml_sections(body)
        elif kind == "code":
            language = CODE_LANGUAGES.get(suffix, "dockerfile" if suffix == "" else suffix.lstrip("."))
            metadata.update(language=language, **_framework(body))
            sections = _code_sections(body, language)
        elif suffix in {".md", ".markdown", ".html", ".htm"}:
            sections = _partition_markup(body, suffix)
        else:
            sections = _paragraph_sections(body)
    sections = tuple(s for s in sections if s.text.strip())
    if not sections:
        raise ParseError("no text could be extracted")
    full_text = "\n".join(s.text for s in sections)
    metadata.setdefault("lang", detect_language(full_text))
    if sections[0].headings:
        metadata.setdefault("title", sections[0].headings[0])
    return ParsedDocument(raw.doc_id, doc_hash, sections, metadata)


def decode_text(content: bytes) -> str:
    """UTF-8 (or UTF-16 with a BOM) text; anything else is refused rather than guessed."""
    if content.startswith((b"\xff\xfe", b"\xfe\xff")):
        return content.decode("utf-16")
    if b"\x00" in content[:8192]:
        raise ParseError("binary content (NUL bytes) in a text file")
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ParseError(f"not valid UTF-8 text (byte {exc.start})") from exc


def split_front_matter(text: str) -> tuple[dict[str, str], str]:
    """YAML front matter (`---` block at the top) as flat string metadata, and the rest of the text."""
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}, text
    if not isinstance(data, dict):
        return {}, text
    flat = {str(k): ", ".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in data.items() if v is not None}
    return flat, text[match.end() :]


def detect_language(text: str) -> str:
    """'zh', 'ru' or 'en' by script share: enough to filter and to pick a sparse analyzer."""
    cjk = sum(1 for ch in text if "\u4e00" <= ch <= "\u9fff")
    cyrillic = sum(1 for ch in text if "\u0400" <= ch <= "\u04ff")
    letters = sum(1 for ch in text if ch.isalpha()) or 1
    if cjk / letters > 0.2:
        return "zh"
    if cyrillic / letters > 0.3:
        return "ru"
    return "en"


@cache
def _offline_unstructured() -> None:
    """unstructured classifies text with spaCy and downloads a model on first use; give it a local
    multilingual sentence splitter instead, so parsing never reaches the network."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
    import spacy
    import unstructured.nlp.tokenize as tokenize

    nlp = spacy.blank("xx")
    nlp.add_pipe("sentencizer")
    tokenize._get_nlp = lambda: nlp  # type: ignore[attr-defined]


def _elements_to_sections(elements: list[Any]) -> list[Section]:
    """Group elements under their headings; a heading is a Title with a depth (md, html, docx)."""
    sections: list[Section] = []
    path: list[str] = []
    body: list[str] = []

    def flush() -> None:
        if body:
            sections.append(Section("\n\n".join(body), tuple(path)))
            body.clear()

    for element in elements:
        text = str(element).strip()
        depth = getattr(element.metadata, "category_depth", None)
        if element.category == "Title" and depth is not None:
            flush()
            del path[depth:]
            path.append(text)
        elif text:
            body.append(f"- {text}" if element.category == "ListItem" else text)
    flush()
    if not sections and path:
        sections.append(Section(" / ".join(path), tuple(path)))
    return sections


def _partition_markup(text: str, suffix: str) -> list[Section]:
    _offline_unstructured()
    if suffix in {".html", ".htm"}:
        from unstructured.partition.html import partition_html

        return _elements_to_sections(partition_html(text=text, languages=NO_LANGUAGE_DETECTION))
    from unstructured.partition.md import partition_md

    return _elements_to_sections(partition_md(text=text, languages=NO_LANGUAGE_DETECTION))


def _partition_binary(raw: RawDocument) -> list[Section]:
    _offline_unstructured()
    try:
        if raw.doc_id.lower().endswith(".pdf"):
            from unstructured.partition.pdf import partition_pdf

            elements = partition_pdf(file=io.BytesIO(raw.content), strategy="fast", languages=["eng", "rus", "chi_sim"])
        else:
            from unstructured.partition.docx import partition_docx

            elements = partition_docx(file=io.BytesIO(raw.content), languages=NO_LANGUAGE_DETECTION)
    except Exception as exc:  # every parser failure quarantines the file with its reason
        raise ParseError(f"{type(exc).__name__}: {exc}"[:500]) from exc
    return _elements_to_sections(elements)


def _paragraph_sections(text: str) -> list[Section]:
    return [Section(text.strip())]


def _framework(text: str) -> dict[str, str]:
    lowered = text.lower()
    found = sorted({name for marker, name in FRAMEWORK_MARKERS.items() if marker in lowered})
    return {"framework": ", ".join(found)} if found else {}


def _code_sections(text: str, language: str) -> list[Section]:
    """One section per top-level function or class (Python via ast, others by declaration lines)."""
    if language == "python":
        try:
            return _python_sections(text)
        except SyntaxError:
            pass  # still indexable as text, split on declaration lines below
    starts = [m.start() for m in _DECLARATION.finditer(text)]
    if not starts:
        return [Section(text)]
    bounds = [0, *starts, len(text)] if starts[0] > 0 else [*starts, len(text)]
    sections = []
    for begin, end in zip(bounds, bounds[1:], strict=False):
        piece = text[begin:end]
        name = _DECLARED_NAME.search(piece.split("\n", 1)[0])
        sections.append(Section(piece, metadata={"symbol": name.group(1).strip('"')} if name else {}))
    return sections


def _python_sections(text: str) -> list[Section]:
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    sections: list[Section] = []
    cursor = 0  # lines before the first definition (imports, constants) form their own unit
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
        end = node.end_lineno or node.lineno
        if start > cursor:
            sections.append(Section("".join(lines[cursor:start])))
        sections.append(Section("".join(lines[start:end]), metadata={"symbol": node.name}))
        cursor = end
    if cursor < len(lines):
        sections.append(Section("".join(lines[cursor:])))
    return sections


def _yaml_sections(text: str) -> list[Section]:
    """One section per YAML document, with the Kubernetes kind/namespace/name when present."""
    sections = []
    for piece in re.split(r"^---\s*$", text, flags=re.MULTILINE):
        if not piece.strip():
            continue
        try:
            data = yaml.safe_load(piece)
        except yaml.YAMLError as exc:
            raise ParseError(f"invalid YAML: {exc}"[:500]) from exc
        meta: dict[str, str] = {}
        if isinstance(data, dict):
            meta_block = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
            for key, value in (
                ("kind", data.get("kind")),
                ("name", meta_block.get("name")),
                ("namespace", meta_block.get("namespace") or "default" if data.get("kind") else None),
            ):
                if value:
                    meta[key] = str(value)
        sections.append(Section(piece.strip("\n"), metadata=meta))
    return sections
