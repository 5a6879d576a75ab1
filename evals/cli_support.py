"""What `kb eval` needs beyond the runner: result files with the commit and date."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def current_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=RESULTS_DIR.parent).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_result(kind: str, label: str, result: dict[str, Any], tags: tuple[str, ...] = ()) -> Path:
    """evals/results/<kind>-<set>[-<tags>]-<date>-<commit>.json; tags name a non-default configuration."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC)
    commit = current_commit()
    name = "-".join([kind, label.replace(":", "-").replace(">", ""), *tags, f"{stamp:%Y%m%d}", commit]) + ".json"
    path = RESULTS_DIR / name
    path.write_text(
        json.dumps({"commit": commit, "date": stamp.isoformat(timespec="seconds"), **result}, indent=2, ensure_ascii=False)
    )
    return path
