"""Argument checks shared by the public functions: refuse bad input at the call that got it.

Each check raises `TypeError` (wrong kind of value) or `ValueError` (right kind, invalid value)
with a message naming the argument, the offending value and what would be valid. They are
cheap and run before any forward pass, so nothing is computed on input that could have been
refused.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import types
import typing
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "check_positive_int",
    "check_optional_positive_int",
    "check_finite_number",
    "check_prompts",
    "check_token_lengths",
    "check_prompt_sizes",
    "check_answers",
    "check_seed",
    "check_save_folder",
    "check_params",
]


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as an int >= 1 (bools and floats such as ``2.5`` or ``2.0`` are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def check_optional_positive_int(value: Any, name: str) -> int | None:
    """None, or `check_positive_int`."""
    return None if value is None else check_positive_int(value, name)


def check_seed(value: Any, name: str = "seed") -> int:
    """``value`` as an int seed in ``0 .. 2**63 - 1`` (numpy integers too; bools, floats and
    seeds beyond 64 bits, which torch's generator cannot take, are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} (valid: 0 .. 2**63 - 1)")
    if not 0 <= int(value) < 2**63:
        raise ValueError(f"{name} must be an int in 0 .. 2**63 - 1, got {value!r}")
    return int(value)


def check_save_folder(folder: Any, files: Sequence[str], owner: str) -> Path:
    """``folder`` as a `Path`, created if needed, ready to receive ``files``: refused, naming
    the path, when it is a file, lies below a file, or holds one of ``files`` as a folder."""
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"{owner}: the folder must be a path, got {folder!r}")
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"{owner}: {path} is a file; give a folder path ({', '.join(files)} are written "
            f"inside it)"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise NotADirectoryError(
            f"{owner}: cannot create the folder {path}: a part of it is a file, not a folder"
        ) from err
    for name in files:
        if (path / name).is_dir():
            raise IsADirectoryError(
                f"{owner}: {path / name} is a folder; it must be free for the file {name} "
                f"(remove it, or save elsewhere)"
            )
    return path


def check_finite_number(value: Any, name: str) -> float:
    """``value`` as a finite float (NaN, +-inf, bools and non-numbers are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return out


def check_prompts(prompts: Any, name: str = "prompts") -> list[str]:
    """A non-empty list of non-blank strings (a single string is refused: wrap it in a list).

    A blank prompt would be scored as the tokenizer's special tokens alone (e.g. BOS), which is
    not an answer to anything."""
    if isinstance(prompts, (str, bytes)):
        raise TypeError(f"{name} must be a list of strings, not a single string (use [{name}])")
    if not isinstance(prompts, Sequence):
        raise TypeError(f"{name} must be a list of strings, got {type(prompts).__name__}")
    out = list(prompts)
    if not out:
        raise ValueError(f"empty prompt list: {name} needs at least one entry")
    for i, p in enumerate(out):
        if not isinstance(p, str):
            raise TypeError(f"{name}[{i}] is {type(p).__name__}, expected str")
        if not visible(p):
            raise ValueError(
                f"{name}[{i}] is blank ({p[:40]!r}: only whitespace or invisible format "
                f"characters such as zero-width spaces); every entry needs visible text"
            )
    return out


def visible(text: str) -> bool:
    """Whether ``text`` has a character that is neither whitespace nor an invisible format
    character (Unicode category Cf: zero-width space, joiners, BOM, ...)."""
    return any(not c.isspace() and unicodedata.category(c) != "Cf" for c in text)


def check_answers(answers: Sequence[str], answer_ids: Sequence[Sequence[int]]) -> None:
    """Refuse answer lists that cannot be told apart: a repeated answer, two answers equal up
    to surrounding whitespace (``'positive'`` and ``' positive'`` are scored as the same
    continuation), and two answers whose continuations tokenise identically (e.g. both to
    ``<unk>``): every row would tie and get the first of them."""
    seen: dict[str, int] = {}
    for i, answer in enumerate(answers):
        key = answer.strip()
        if key in seen:
            j = seen[key]
            same = "repeated" if answers[j] == answer else "equal up to surrounding whitespace"
            raise ValueError(
                f"answers {j} ({answers[j]!r}) and {i} ({answer!r}) are {same}; every answer "
                f"must be a distinct label"
            )
        seen[key] = i
    rows: dict[tuple[int, ...], int] = {}
    for i, row in enumerate(answer_ids):
        j = rows.setdefault(tuple(row), i)
        if j != i:
            raise ValueError(
                f"answers {answers[j]!r} and {answers[i]!r} tokenise identically ({list(row)}) "
                f"with this model's tokenizer, so no score can tell them apart; choose label "
                f"words the tokenizer distinguishes"
            )


def check_token_lengths(
    lengths: Sequence[int], limit: int | None, model: str, what: str = "prompt"
) -> None:
    """Refuse a token sequence longer than the model's context ``limit`` (None: no limit
    known), naming the first offender, its length and the limit."""
    if limit is None:
        return
    for i, n in enumerate(lengths):
        if n > limit:
            raise ValueError(
                f"{what} {i} is {n} tokens long, longer than the context of {model} "
                f"({limit} tokens); shorten it (fewer demonstrations, a shorter text)"
            )


#: Characters per token beyond which a prompt is measured on a prefix first.
CHARS_PER_TOKEN = 16


def check_prompt_sizes(
    tokenizer: Any, prompts: Sequence[str], limit: int | None, model: str
) -> None:
    """Refuse, before tokenising it whole, a prompt far longer than the model's context
    ``limit``: one of more than ``CHARS_PER_TOKEN * limit`` characters is refused when its
    first that many characters alone are more than ``limit`` tokens (a 50 MB row costs one
    short tokenisation, not seconds). Shorter prompts are left to `check_token_lengths`."""
    if limit is None:
        return
    cut = CHARS_PER_TOKEN * limit
    for i, text in enumerate(prompts):
        if len(text) <= cut:
            continue
        n = len(tokenizer(text[:cut], add_special_tokens=False)["input_ids"])
        if n > limit:
            raise ValueError(
                f"prompt {i} ({len(text):,} characters) is longer than the context of {model} "
                f"({limit} tokens): its first {cut:,} characters alone are {n:,} tokens; "
                f"shorten it (fewer demonstrations, a shorter text)"
            )


# -- method parameters ---------------------------------------------------------------------------


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """``value`` checked against the annotation ``tp`` (int, float, bool, str, None, unions and
    ``tuple[T, ...]``); a scalar given for a tuple becomes a 1-tuple. Raises TypeError/
    ValueError naming ``name``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except (TypeError, ValueError) as err:
                errors.append(err)
        if any(isinstance(e, ValueError) for e in errors):
            raise next(e for e in errors if isinstance(e, ValueError))
        raise TypeError(f"{name} must be {_describe(tp)}, got {value!r}")
    if origin is tuple:
        (elem, *_rest) = typing.get_args(tp)
        if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, set, frozenset)):
            try:
                return (_coerce(value, elem, name),)
            except (TypeError, ValueError):
                raise TypeError(f"{name} must be {_describe(tp)}, got {value!r}") from None
        return tuple(_coerce(v, elem, f"{name}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {value!r}")
        return int(value)
    if tp is float:
        return check_finite_number(value, name)
    if tp is str:
        if isinstance(value, os.PathLike):
            return os.fspath(value)  # data_dir=Path(...)
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string, got {value!r}")
        return value
    return value  # other annotations are left to the method's own checks


def check_params(params: Any, owner: str) -> Any:
    """A copy of the frozen dataclass ``params`` whose fields match their annotations (see
    `_coerce`), with ``batch_size`` >= 1; errors name ``owner`` and the field."""
    try:
        hints = typing.get_type_hints(type(params))
    except Exception:  # noqa: BLE001 - unresolvable annotations of a user's class: not checked
        hints = {}
    changes = {}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        checked = _coerce(value, hints.get(f.name, Any), f"{owner}: {f.name}")
        if checked is not value:
            changes[f.name] = checked
    out = dataclasses.replace(params, **changes) if changes else params
    if hasattr(out, "batch_size"):
        check_positive_int(out.batch_size, f"{owner}: batch_size")
    return out


def check_layer_vector(vec: Any, layer: int, hidden_size: int) -> torch.Tensor:
    """One layer's direction checked and copied: the one validator of per-layer vectors, used
    by `castlib.vectors.SteeringVector` and by `castlib.steer` for every accepted vector form.

    Accepted: a real-valued tensor (or array, or list of numbers) of shape ``(hidden_size,)``
    with values (not on the meta device) that are finite in float32. Returned as a float32
    CPU *copy*, so later edits of the caller's tensor change nothing."""
    if not isinstance(vec, torch.Tensor):
        try:
            vec = torch.as_tensor(vec)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"layer {layer}: a vector must be a tensor of shape ({hidden_size},), got "
                f"{type(vec).__name__} ({err})"
            ) from err
    if vec.is_complex() or vec.dtype == torch.bool:
        raise TypeError(
            f"layer {layer}: vector of dtype {vec.dtype}; expected a real floating-point "
            f"tensor (float32, bfloat16, float16 or float64; stored as float32)"
        )
    if vec.device.type == "meta":
        raise ValueError(
            f"layer {layer}: vector on the meta device has no values; expected a float tensor "
            f"on the cpu or an accelerator (load or compute its values first)"
        )
    if tuple(vec.shape) != (hidden_size,):
        raise ValueError(
            f"layer {layer}: vector of shape {tuple(vec.shape)} does not match the hidden size "
            f"{hidden_size}: expected ({hidden_size},)"
        )
    out = vec.detach().to(device="cpu", dtype=torch.float32, copy=True)
    if not torch.isfinite(out).all():
        raise ValueError(
            f"layer {layer}: vector has non-finite values (NaN, or beyond float32's range "
            f"of +-3.4e38); expected finite float32 values"
        )
    return out
