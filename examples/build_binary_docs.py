"""Regenerate the sample knowledge base's PDF and DOCX files (run with the dev dependencies)."""

from pathlib import Path

import docx
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer

ROOT = Path(__file__).parent / "knowledge_base"

DOCUMENTS = {
    "technical_docs/pci-dss-scope.pdf": (
        "PCI DSS scope and segmentation",
        [
            (
                "Cardholder data environment",
                "Only card-vault and the acquirer connectors store, process or transmit full "
                "card numbers. They run in the dedicated namespace cde on nodes tainted for cardholder data.",
            ),
            (
                "Segmentation",
                "Network policies deny all ingress to the cde namespace except from gateway-core on port 8443. "
                "Segmentation is tested every six months by the security team.",
            ),
            (
                "Logging",
                "Card numbers are tokenised before any log line is written. Log pipelines drop fields that match "
                "a primary account number pattern.",
            ),
        ],
    ),
    "runbooks/emergency-card-block.pdf": (
        "Runbook: Emergency block of a compromised card range",
        [
            (
                "When to use",
                "A card scheme or issuer reports a compromised BIN range, or fraud-scoring shows a burst of fraud on one BIN.",
            ),
            (
                "Steps",
                "1. Add the BIN range to the hard block list with blockctl add --bin <range> --ttl 72h. "
                "2. Confirm declines with reason code 59 on the gateway dashboard. "
                "3. Notify the risk team and the affected issuers through the scheme portal.",
            ),
            ("Permissions", "Risk on-call or payments on-call lead. Time: 10 minutes."),
        ],
    ),
    "technical_docs/disaster-recovery-plan.docx": (
        "Disaster recovery plan",
        [
            (
                "Objectives",
                "Recovery time objective for payment authorisation is 30 minutes; recovery point objective "
                "for the ledger is zero: the ledger replicates synchronously to the second data centre.",
            ),
            (
                "Failover",
                "The traffic manager moves merchant traffic to the standby region after two failed health "
                "checks. Kafka uses MirrorMaker 2 to replicate payments.events to the standby cluster.",
            ),
            ("Testing", "A full failover drill runs every quarter. The last drill took 22 minutes end to end."),
        ],
    ),
    "runbooks/acquirer-outage.docx": (
        "Runbook: Acquirer outage",
        [
            (
                "Detection",
                "Alert AcquirerSuccessRateLow fires when an acquirer's approval rate falls 20 points below "
                "its seven-day baseline for 10 minutes.",
            ),
            (
                "Steps",
                "Check the acquirer status page. Shift traffic to the secondary acquirer with routingctl acquirer "
                "drain <name>. Keep at most 5 percent canary traffic on the failing acquirer to detect recovery.",
            ),
            ("Recovery", "Restore routing weights gradually over 30 minutes once the approval rate is back to baseline."),
        ],
    ),
}


def write_pdf(path: Path, title: str, sections: list[tuple[str, str]]) -> None:
    styles = getSampleStyleSheet()
    story = [Paragraph(title, styles["Title"])]
    for heading, body in sections:
        story += [Paragraph(heading, styles["Heading2"]), Paragraph(body, styles["BodyText"]), Spacer(1, 8)]
    # invariant=1 keeps the file byte-identical across runs, so content hashes stay stable.
    SimpleDocTemplate(str(path), pagesize=A4, title=title, invariant=1).build(story)


def write_docx(path: Path, title: str, sections: list[tuple[str, str]]) -> None:
    document = docx.Document()
    document.add_heading(title, level=1)
    for heading, body in sections:
        document.add_heading(heading, level=2)
        document.add_paragraph(body)
    document.save(str(path))


if __name__ == "__main__":
    for relative, (title, sections) in DOCUMENTS.items():
        target = ROOT / relative
        (write_pdf if target.suffix == ".pdf" else write_docx)(target, title, sections)
        print(target)
