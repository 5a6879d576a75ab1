"""Parse raw documents into sections with unstructured (prose) or on their structure (code, YAML).

A document that cannot be parsed raises `ParseError` (with a short `kind` code and a reason that never
quotes the document); the caller quarantines it and goes on. Anything else raised here is a bug, but for
MemoryError, which the parse budget (assets/budget.py) reports as over its memory limit.
"""

from __future__ import annotations

import ast
import io
import os
import re
import reprlib
import traceback
import zipfile
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
# A DOCX is a zip: one that says (in its central directory, read before anything is unpacked) it unpacks
# to more than this, or any part of which unpacks to more than MAX_ZIP_RATIO times its packed size, is
# refused. Real documents are far below both; a zip bomb is far above.
MAX_UNPACKED_BYTES = 200 * 1024 * 1024
MAX_ZIP_RATIO = 200
# What YAML values become metadata through: bounded, since a few aliases can make a value whose
# plain str() is exponentially long (a "billion laughs" document).
_BOUNDED = reprlib.Repr()
_BOUNDED.maxlevel, _BOUNDED.maxlist, _BOUNDED.maxdict, _BOUNDED.maxstring, _BOUNDED.maxother = 3, 20, 20, 200, 200
# Errors YAML loading raises on bad input: YAMLError, but also ValueError (a date like 2020-13-45),
# RecursionError (deep nesting) and OverflowError or TypeError from value constructors.
_YAML_FAILURES = (yaml.YAMLError, ValueError, RecursionError, OverflowError, TypeError)


class ParseError(Exception):
    """The document cannot be turned into text; the message is shown to operators and `kind` is a short
    code ("invalid_encoding", "unparseable", "zip_bomb", or the source's skipped kind) to count them by."""

    def __init__(self, message: str, kind: str = "unparseable") -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> tuple[type[ParseError], tuple[str, str]]:
        # Keeps the kind when the error crosses a process boundary (the parse workers).
        return (ParseError, (str(self), self.kind))


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
        raise ParseError(raw.skipped_reason, raw.skipped_kind or "skipped")
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
    kept = tuple(s for s in sections if s.text.strip())
    if not kept:
        raise ParseError("no text could be extracted")
    full_text = "\n".join(s.text for s in kept)
    metadata.setdefault("lang", detect_language(full_text))
    if kept[0].headings:
        metadata.setdefault("title", kept[0].headings[0])
    return ParsedDocument(raw.doc_id, doc_hash, kept, metadata)


def decode_text(content: bytes) -> str:
    """UTF-8 (or UTF-16 with a BOM) text; anything else is refused rather than guessed."""
    if content.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = content.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise ParseError(f"not valid UTF-16 text (byte {exc.start})", "invalid_encoding") from exc
    else:
        if b"\x00" in content[:8192]:
            raise ParseError("binary content (NUL bytes) in a text file", "invalid_encoding")
        try:
            text = content.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ParseError(f"not valid UTF-8 text (byte {exc.start})", "invalid_encoding") from exc
    # Past the first 8 KiB, or in UTF-16: no text format here holds NUL, nor can PostgreSQL's text type.
    if "\x00" in text:
        raise ParseError("binary content (NUL characters) in a text file", "invalid_encoding")
    return text


def split_front_matter(text: str) -> tuple[dict[str, str], str]:
    """YAML front matter (`---` block at the top) as flat string metadata, and the rest of the text.

    A block that is not YAML is taken as text (two rules around a paragraph look alike), unless it names
    the document's access list: that document is refused rather than indexed readable by everyone."""
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    try:
        data = _load_yaml(match.group(1))
    except _YAML_FAILURES as exc:
        if ACL_FRONT_MATTER_KEY in match.group(1):
            raise ParseError(f"front matter names `{ACL_FRONT_MATTER_KEY}` but is not valid YAML ({_yaml_problem(exc)})") from exc
        return {}, text
    if not isinstance(data, dict):
        return {}, text
    flat = {_metadata_text(k): _metadata_text(v) for k, v in data.items() if v is not None}
    return flat, text[match.end() :]


class _PlainDatesLoader(yaml.SafeLoader):
    """The safe loader, but an unquoted date stays text: YAML 1.1's timestamp rule makes `2020-13-45`
    an error, where Kubernetes (YAML 1.2) and most writers see a string."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


def _load_yaml(text: str) -> Any:
    """YAML as the safe loader reads it; on a value it cannot construct (an impossible date) once more
    with dates as text."""
    try:
        return yaml.safe_load(text)
    except ValueError:
        return yaml.load(text, Loader=_PlainDatesLoader)  # a SafeLoader subclass: as safe


def _metadata_text(value: object) -> str:
    """A YAML value as one metadata string: a list's items joined by commas. Nested lists and mappings
    are written bounded (their plain str() can be exponentially long); scalars as str() writes them."""
    if isinstance(value, list):
        return ", ".join(map(_scalar_text, value))
    return _scalar_text(value)


def _scalar_text(value: object) -> str:
    if isinstance(value, str):
        return value
    try:
        return _BOUNDED.repr(value) if isinstance(value, dict | list | set | tuple) else str(value)
    except ValueError:  # an integer too long to print (YAML reads `!!int 0x…` of any length)
        return f"<{type(value).__name__}>"


def _yaml_problem(exc: BaseException) -> str:
    """What is wrong with a YAML text and where, without quoting it: YAML's own messages include a
    snippet of the document, and quarantine reasons must not carry its text."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"a value that cannot be loaded ({type(exc).__name__})"
    # Quoted pieces longer than a token are document text.
    problem = re.sub(r"'[^']{13,}'", "'…'", exc.problem or "malformed")
    mark = exc.problem_mark
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


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
    tokenize._get_nlp = lambda: nlp  # type: ignore[attr-defined,assignment]


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
    try:
        if suffix in {".html", ".htm"}:
            from unstructured.partition.html import partition_html

            elements = partition_html(text=text, languages=NO_LANGUAGE_DETECTION)
        else:
            from unstructured.partition.md import partition_md

            elements = partition_md(text=text, languages=NO_LANGUAGE_DETECTION)
    except Exception as exc:  # every parser failure quarantines the file with its reason
        _reraise_out_of_memory(exc)
        raise ParseError(_parser_failure("HTML" if suffix in {".html", ".htm"} else "Markdown", exc)) from exc
    return _elements_to_sections(elements)


def _partition_binary(raw: RawDocument) -> list[Section]:
    is_pdf = raw.doc_id.lower().endswith(".pdf")
    if not is_pdf:
        _refuse_zip_bomb(raw.content)
    _offline_unstructured()
    try:
        if is_pdf:
            from unstructured.partition.pdf import partition_pdf

            elements = partition_pdf(file=io.BytesIO(raw.content), strategy="fast", languages=["eng", "rus", "chi_sim"])
        else:
            from unstructured.partition.docx import partition_docx

            elements = partition_docx(file=io.BytesIO(raw.content), languages=NO_LANGUAGE_DETECTION)
    except Exception as exc:  # every parser failure quarantines the file with its reason
        _reraise_out_of_memory(exc)
        raise ParseError(_parser_failure("PDF" if is_pdf else "DOCX", exc)) from exc
    return _elements_to_sections(elements)


def _reraise_out_of_memory(exc: Exception) -> None:
    """Out of memory is the parse budget's to report (assets/budget.py), also where libxml2 reports it
    through lxml as a syntax or XPath error ("Memory allocation failed", ERR_NO_MEMORY)."""
    if isinstance(exc, MemoryError):
        raise exc
    log = getattr(exc, "error_log", None) or ()
    signs = [str(exc), *(f"{getattr(e, 'type_name', '')} {getattr(e, 'message', '')}" for e in log)]
    if any("memory allocation failed" in sign.lower() or "NO_MEMORY" in sign for sign in signs):
        raise MemoryError from exc


def _parser_failure(what: str, exc: BaseException) -> str:
    return f"the {what} parser failed: {failure_without_message(exc)}"


def failure_without_message(exc: BaseException) -> str:
    """An exception by its type and the line that raised it, for operators: its message may quote the
    document, which a quarantine reason must not."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" in {'/'.join(frames[-1].filename.split('/')[-2:])}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}{where}"


def _refuse_zip_bomb(content: bytes) -> None:
    """Refuse a zip whose central directory says it unpacks far beyond its size, before unpacking it.
    Python's zipfile never inflates a part past the size its directory entry declares, so the
    declared sizes bound what parsing it can unpack."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            parts = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        return  # not a readable zip: the DOCX parser says so
    total = sum(part.file_size for part in parts)
    if total > MAX_UNPACKED_BYTES:
        raise ParseError(f"the DOCX unpacks to {total} bytes, over the {MAX_UNPACKED_BYTES}-byte limit (a zip bomb?)", "zip_bomb")
    for part in parts:
        if part.file_size > 1_000_000 and part.file_size > MAX_ZIP_RATIO * max(part.compress_size, 1):
            ratio = part.file_size // max(part.compress_size, 1)
            raise ParseError(f"a part of the DOCX unpacks {ratio} times its packed size (a zip bomb?)", "zip_bomb")


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
        # Still indexable as text, split on declaration lines below. CPython's parser reports nesting
        # too deep for it as RecursionError or, for long unary chains, MemoryError.
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            pass
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
            data = _load_yaml(piece)
        except _YAML_FAILURES as exc:
            raise ParseError(f"invalid YAML: {_yaml_problem(exc)}") from exc
        meta: dict[str, str] = {}
        if isinstance(data, dict):
            meta_block: dict[Any, Any] = data["metadata"] if isinstance(data.get("metadata"), dict) else {}
            for key, value in (
                ("kind", data.get("kind")),
                ("name", meta_block.get("name")),
                ("namespace", meta_block.get("namespace") or "default" if data.get("kind") else None),
            ):
                if value:
                    meta[key] = _metadata_text(value)
        sections.append(Section(piece.strip("\n"), metadata=meta))
    return sections
