import io

import pytest

from assets.extract import RawDocument, sha256
from assets.parse import ParseError, detect_language, parse_document, split_front_matter


def raw(doc_id: str, content: bytes) -> RawDocument:
    return RawDocument(doc_id, content, sha256(content), len(content), {"path": doc_id})


def test_markdown_sections_carry_their_heading_path() -> None:
    doc = parse_document(raw("a.md", b"# Guide\n\nIntro.\n\n## Setup\n\nRun it.\n\n### Linux\n\nUse apt.\n"), "prose", "h")
    assert [s.headings for s in doc.sections] == [("Guide",), ("Guide", "Setup"), ("Guide", "Setup", "Linux")]
    assert doc.sections[2].text == "Use apt."
    assert doc.metadata["title"] == "Guide"


def test_front_matter_becomes_metadata() -> None:
    meta, body = split_front_matter("---\nseverity: SEV1\nsystems: [a, b]\n---\n# T\n")
    assert meta == {"severity": "SEV1", "systems": "a, b"}
    assert body == "# T\n"


def test_python_is_split_into_functions_and_classes() -> None:
    source = b"import os\n\nX = 1\n\n\ndef first():\n    return 1\n\n\n@decorator\nclass Second:\n    pass\n"
    doc = parse_document(raw("m.py", source), "code", "h")
    symbols = [s.metadata.get("symbol") for s in doc.sections]
    assert symbols == [None, "first", "Second"]
    assert doc.sections[2].text.startswith("@decorator")
    assert doc.metadata["language"] == "python"


def test_go_is_split_on_declarations() -> None:
    source = b"package x\n\nfunc A() int {\n\treturn 1\n}\n\nfunc (s *S) B() {}\n"
    doc = parse_document(raw("x.go", source), "code", "h")
    assert [s.metadata.get("symbol") for s in doc.sections] == [None, "A", "B"]


def test_yaml_documents_keep_kind_namespace_and_name() -> None:
    source = b"kind: Deployment\nmetadata:\n  name: web\n  namespace: shop\n---\nkind: Service\nmetadata:\n  name: web\n"
    doc = parse_document(raw("web.yaml", source), "yaml", "h")
    assert [s.metadata for s in doc.sections] == [
        {"kind": "Deployment", "name": "web", "namespace": "shop"},
        {"kind": "Service", "name": "web", "namespace": "default"},
    ]


def test_pdf_and_docx_are_parsed() -> None:
    import docx
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer)
    pdf.drawString(72, 720, "Restart the settlement batch after the acquirer file arrives.")
    pdf.save()
    assert "settlement batch" in parse_document(raw("r.pdf", buffer.getvalue()), "prose", "h").sections[0].text

    document = docx.Document()
    document.add_heading("Plan", 1)
    document.add_paragraph("Failover takes 22 minutes.")
    out = io.BytesIO()
    document.save(out)
    parsed = parse_document(raw("p.docx", out.getvalue()), "prose", "h")
    assert parsed.sections[0].headings == ("Plan",) and "22 minutes" in parsed.sections[0].text


@pytest.mark.parametrize(
    ("doc_id", "content", "reason"),
    [
        ("broken.pdf", b"%PDF-1.4 garbage" * 10, "no text"),
        ("junk.md", b"\x00\x01\x02binary\x00junk", "binary"),
        ("latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1"), "UTF-8"),
        ("bad.yaml", b"key: [unclosed\n", "invalid YAML"),
    ],
)
def test_unparseable_files_raise_a_reason(doc_id: str, content: bytes, reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        parse_document(raw(doc_id, content), "prose", "h")


def test_language_is_detected_by_script() -> None:
    assert detect_language("Платёж отклонён банком-эквайером") == "ru"
    assert detect_language("结算批处理每天运行") == "zh"
    assert detect_language("The payment was declined") == "en"
