"""Quality gates run with great-expectations on each stage's output.

Each function turns a stage's records into a frame, validates an expectation suite and returns
an outcome the asset reports as an asset check; blocking checks stop bad batches before the index.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from assets.chunk import Chunk
from assets.mask import find_secrets
from assets.parse import ParsedDocument


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    metadata: dict[str, Any] = field(default_factory=dict)


@cache
def _batch_definition() -> Any:
    os.environ.setdefault("TQDM_DISABLE", "1")
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("kb")
    return source.add_dataframe_asset("records").add_batch_definition_whole_dataframe("all")


def _validate(rows: dict[str, Sequence[Any]], expectations: Sequence[Any]) -> CheckOutcome:
    import great_expectations as gx
    import pandas as pd

    frame = pd.DataFrame(rows)
    if frame.empty:
        return CheckOutcome(True, {"rows": 0})
    suite = gx.ExpectationSuite(name="stage", expectations=list(expectations))
    result = _batch_definition().get_batch(batch_parameters={"dataframe": frame}).validate(suite)
    failures = {
        r.expectation_config.type + ":" + str(r.expectation_config.kwargs.get("column", "")): {
            "unexpected_count": r.result.get("unexpected_count"),
            "examples": [str(v)[:80] for v in (r.result.get("partial_unexpected_list") or [])[:5]],
        }
        for r in result.results
        if not r.success
    }
    return CheckOutcome(bool(result.success), {"rows": len(frame), "failures": failures})


def check_parsed_text(documents: Sequence[ParsedDocument]) -> CheckOutcome:
    """Every parsed document has text."""
    import great_expectations as gx

    lengths = [sum(len(s.text.strip()) for s in d.sections) for d in documents]
    return _validate(
        {"doc_id": [d.doc_id for d in documents], "chars": lengths},
        [gx.expectations.ExpectColumnValuesToBeBetween(column="chars", min_value=1)],
    )


def check_no_secrets(documents: Sequence[ParsedDocument]) -> CheckOutcome:
    """Masked text holds no pattern the masker recognises."""
    import great_expectations as gx

    found = [len(find_secrets("\n".join(s.text for s in d.sections))) for d in documents]
    return _validate(
        {"doc_id": [d.doc_id for d in documents], "secrets": found},
        [gx.expectations.ExpectColumnValuesToBeBetween(column="secrets", min_value=0, max_value=0)],
    )


def check_chunks(chunks: Sequence[Chunk], max_tokens: int) -> CheckOutcome:
    """Chunks are non-empty, within the token bound, with unique ids; duplicate texts are reported."""
    import great_expectations as gx

    outcome = _validate(
        {
            "chunk_id": [c.chunk_id for c in chunks],
            "tokens": [c.token_count for c in chunks],
            "chars": [len(c.text.strip()) for c in chunks],
        },
        [
            gx.expectations.ExpectColumnValuesToBeUnique(column="chunk_id"),
            gx.expectations.ExpectColumnValuesToBeBetween(column="tokens", min_value=1, max_value=max_tokens),
            gx.expectations.ExpectColumnValuesToBeBetween(column="chars", min_value=1),
        ],
    )
    hashes = [c.chunk_hash for c in chunks]
    outcome.metadata["duplicate_chunks"] = len(hashes) - len(set(hashes))
    return outcome


def check_duplicates(chunks: Sequence[Chunk]) -> CheckOutcome:
    """Identical chunk texts (boilerplate copied between documents): a warning, not a gate."""
    import great_expectations as gx

    return _validate(
        {"chunk_hash": [c.chunk_hash for c in chunks]},
        [gx.expectations.ExpectColumnValuesToBeUnique(column="chunk_hash")],
    )


def check_embeddings(vectors: NDArray[np.float32], dimension: int) -> CheckOutcome:
    """Vectors have the model's dimension, no NaN or infinity, and unit norm."""
    import great_expectations as gx

    if vectors.size and vectors.shape[1] != dimension:
        return CheckOutcome(False, {"dimension": int(vectors.shape[1]), "expected": dimension})
    finite = np.isfinite(vectors).all(axis=1) if vectors.size else np.zeros(0, dtype=bool)
    norms = np.nan_to_num(np.linalg.norm(vectors, axis=1)) if vectors.size else np.zeros(0)
    outcome = _validate(
        {"finite": finite.tolist(), "norm": norms.tolist()},
        [
            gx.expectations.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
            gx.expectations.ExpectColumnValuesToBeBetween(column="norm", min_value=0.98, max_value=1.02),
        ],
    )
    outcome.metadata["dimension"] = dimension
    return outcome
