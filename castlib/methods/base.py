"""The protocol every method follows, and the result record it produces.

    method = castlib.methods.get(name)(**params)
    method.fit(lm, sources, target, seed=0)     # never reads the target's test split
    record = method.evaluate(lm, target, split="test", limit=None)
    method.save(folder); castlib.methods.load(folder).evaluate(lm, target)

A method's parameters are a frozen dataclass (``Params``) of plain values; ``fit`` stores its
state (a steering vector, chosen demonstrations, ...) on the method; ``evaluate`` runs
`castlib.evaluate` on the target with the method applied and returns a flat, JSON-ready
result record (see `castlib.methods.shared_eval.RESULT_FIELDS`).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, ClassVar

import torch

from .._version import __version__
from ..models import LanguageModel
from ..prompts import check_prompt_format, format_prompts
from ..scoring import EvalResult, build_prompts
from ..stats.seeds import top_label_share
from ..tasks import Example, Task, load_task
from ..validate import check_params, check_save_folder, check_seed
from ..vectors import SteeringVector
from .fit_store import fit_store_for
from .shared_eval import compact_predictions, evaluate_methods, measure

__all__ = [
    "Method",
    "TaskRef",
    "resolve_task",
    "resolve_tasks",
]

TaskRef = str | Task

VECTOR_FILE = "vector.safetensors"
#: Keys `Method._restore` reads from ``method.json``.
RESTORE_KEYS = ("params", "seed", "sources", "target", "model_id", "info", "fit_stats", "state")


def resolve_task(task: TaskRef, data_dir: str | Path | None = None) -> Task:
    """A loaded task, from a name or a `Task`."""
    if isinstance(task, Task):
        return task
    if not isinstance(task, str):
        raise TypeError(f"a task must be a Task or a task name, got {task!r}")
    return load_task(task, data_dir)


def resolve_tasks(
    tasks: TaskRef | Sequence[TaskRef], data_dir: str | Path | None = None
) -> list[Task]:
    if isinstance(tasks, (str, Task)):
        tasks = [tasks]
    out = [resolve_task(t, data_dir) for t in tasks]
    if not out:
        raise ValueError("at least one source task is needed")
    return out


class Method:
    """Base class: parameters, fit/evaluate protocol, result records, save/load."""

    name: ClassVar[str] = ""
    #: parameters of ``Params`` the method does not use (see the notebooks' `nbtools.build_method`)
    unused_params: ClassVar[tuple[str, ...]] = ()
    #: whether fitting reads the source tasks' labelled rows (a target among the sources then
    #: means the target's labels were used)
    uses_sources: ClassVar[bool] = True
    #: whether a fit takes exactly one source task (a run over several sources fits it once
    #: per source: `castlib.methods.cross_task_icl`)
    one_source: ClassVar[bool] = False
    #: whether ``_fit`` reads the target task at all; a fit that reads only the source tasks
    #: (their definition and train split), the model and the seed is the same for every
    #: target, and a batch with an on-disk store fits it once (`castlib.methods.fit_store`)
    fit_reads_target: ClassVar[bool] = True
    #: while a stored fit runs, a folder of its own where ``_fit`` may keep checkpoints (None
    #: otherwise); removed once the fit is saved
    fit_scratch: Path | None = None

    @dataclasses.dataclass(frozen=True)
    class Params:
        batch_size: int = 16
        data_dir: str | None = None
        prompt_format: str = "plain"  # castlib.prompts.PROMPT_FORMATS: "plain" or "chat"

    def __init__(self, **params: Any) -> None:
        fields = {f.name for f in dataclasses.fields(self.Params)}
        unknown = sorted(set(params) - fields)
        if unknown:
            raise TypeError(f"{self.name}: unknown parameter(s) {unknown}; valid: {sorted(fields)}")
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        self.params = check_params(self.Params(**params), self.name)
        check_prompt_format(self.params.prompt_format)
        self.check_params()
        self.fitted = False
        self.seed: int | None = None
        self.sources: list[str] = []
        self.target: str | None = None
        self.model_id: str | None = None
        self.info: dict[str, Any] = {}  # fitted facts reported in the record (layer, alpha, ...)
        self.fit_stats: dict[str, float] = {"seconds": 0.0, "peak_memory_mb": 0.0}

    # -- to override ------------------------------------------------------------------------
    def check_params(self) -> None:
        """Validate ``self.params`` (raise ValueError with a clear message)."""

    def _fit(self, lm: LanguageModel, sources: list[Task], target: Task, seed: int) -> None:
        """Compute the method's state. Must not read ``target.split("test")``."""

    def applied(self, lm: LanguageModel) -> AbstractContextManager[Any]:
        """Context in which ``lm`` runs with the method applied (steering hooks, adapters)."""
        return nullcontext()

    def prompt_builder(self, lm: LanguageModel, target: Task) -> Any:
        """The prompt builder for the target (None: zero-shot)."""
        return None

    def prompts(self, lm: LanguageModel, target: Task, examples: Sequence[Example]) -> Any:
        """The prompts of ``examples`` (a builder or a list); default: `prompt_builder`."""
        return self.prompt_builder(lm, target)

    @property
    def uses_target_labels(self) -> bool:
        """Whether fitting reads gold labels of the *target* task (its train pool): such a
        method is a labelled reference, not a label-free competitor of CAST."""
        return False

    @property
    def uses_labels_of_target(self) -> bool:
        """What the record says: `uses_target_labels`, or the target was one of the sources
        (its train labels were then read as a source's)."""
        return self.uses_target_labels or (self.uses_sources and self.target in self.sources)

    def prefix_cache(self) -> bool:
        """Whether every evaluation prompt shares a demonstration prefix whose key/value cache
        `castlib.evaluate` should reuse (`castlib.scoring.prefix_cache`)."""
        return False

    def eval_scoring(self) -> str:
        """How `evaluate` scores the target: ``"full"``, or `castlib.scoring.last_token.SCORING_CACHED`
        where that is exact for the method (last-position steering)."""
        return "full"

    def state(self) -> dict[str, Any]:
        """JSON-serialisable fitted state besides the steering vector."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of `state`."""

    vector: SteeringVector | None = None
    #: the `EvalResult` of the last evaluation (per-example scores included)
    last_result: EvalResult | None = None
    #: whether the fitted state includes a steering vector (``vector.safetensors`` on save)
    needs_vector: ClassVar[bool] = False

    # -- protocol ---------------------------------------------------------------------------
    def fit(
        self,
        lm: LanguageModel,
        sources: TaskRef | Sequence[TaskRef],
        target: TaskRef,
        seed: int = 0,
    ) -> Method:
        """Fit on (model, source tasks, target task, seed); the target's test split is never
        read. A target given among the sources is allowed (with a warning), and the record
        then says ``uses_target_labels=True``."""
        seed = check_seed(seed, f"{self.name}: seed")
        src = resolve_tasks(sources, self.params.data_dir)
        tgt = resolve_task(target, self.params.data_dir)
        names = [t.name for t in src]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"{self.name}: source tasks {repeated} given more than once")
        if self.one_source and len(names) != 1:
            raise ValueError(
                f"{self.name} takes one source task per fit, got {len(names)} ({names}); fit "
                f"it once per source and pool the runs (the notebooks report each source and "
                f"their mean)"
            )
        if self.uses_sources and tgt.name in names:
            warnings.warn(
                f"{self.name}: the target {tgt.name!r} is among the sources {names}; its train "
                f"labels are used, and the record says uses_target_labels=True",
                stacklevel=2,
            )
        self.info = {}
        torch.manual_seed(seed)
        store = None if self.fit_reads_target else fit_store_for(lm)
        key = store.key(self, lm, src, seed) if store is not None else None
        if key is None:  # no disk store, or weights that cannot be read: no reuse
            store = None
        reused = store.load(key, type(self)) if store is not None else None
        if reused is not None and reused.model_id == lm.name and reused.seed == seed:
            self._adopt(reused)
            self.info["fit_reused_from"] = reused.target
        else:
            # a long fit may checkpoint its progress here, and resume from it after an
            # interruption (a batch stopped with its session): `castlib.methods.fit_store`
            self.fit_scratch = store.scratch(key) if store is not None else None
            try:
                with measure(lm.device) as stats:
                    self._fit(lm, src, tgt, seed)
            finally:
                self.fit_scratch = None
            # a fit resumed from a checkpoint: its cost includes the interrupted runs'
            stats["seconds"] += float(self.info.pop("resumed_seconds", 0.0))
            self.fit_stats = stats
        self.fitted = True
        self.seed = seed
        self.sources = [t.name for t in src]
        self.target = tgt.name
        self.model_id = lm.name
        if store is not None and reused is None:
            store.save(key, self)
        return self

    def _adopt(self, other: Method) -> None:
        """Take ``other``'s fitted state (a reloaded fit of the same method, parameters,
        sources, seed and model: `castlib.methods.fit_store`); the parameters stay this method's."""
        params = self.params
        self.__dict__.update(other.__dict__)
        self.params = params

    def check_evaluable(self, lm: LanguageModel, target: TaskRef) -> Task:
        """The resolved target, after checking that the method was fitted for it and for
        ``lm`` (ValueError/RuntimeError otherwise)."""
        if not self.fitted:
            raise RuntimeError(f"{self.name}: call fit(...) before evaluate(...)")
        tgt = resolve_task(target, self.params.data_dir)
        if self.target is not None and tgt.name != self.target:
            raise ValueError(f"{self.name} was fitted for target {self.target!r}, not {tgt.name!r}")
        if self.model_id is not None and self.model_id != lm.name:
            raise ValueError(
                f"{self.name} was fitted on model {self.model_id!r}; it cannot be evaluated on "
                f"model {lm.name!r} (refit it on that model)"
            )
        if self.vector is not None:
            self.vector.check_compatible(lm)
        return tgt

    def eval_prompts(self, lm: LanguageModel, target: Task, examples: Sequence[Example]) -> Any:
        """The evaluation prompts of ``examples`` in the method's ``prompt_format``: a builder
        or a list of strings (`castlib.scoring.evaluation.build_prompts` accepts both)."""
        prompt = self.prompts(lm, target, examples)
        if self.params.prompt_format != "plain":
            prompt = format_prompts(
                build_prompts(target, examples, prompt), lm.tokenizer, self.params.prompt_format
            )
        return prompt

    def evaluate(
        self,
        lm: LanguageModel,
        target: TaskRef,
        split: str = "test",
        limit: int | None = None,
        progress: bool | None = None,
        sample: int | None = None,
        sample_seed: int = 0,
    ) -> dict[str, Any]:
        """Evaluate the fitted method on ``target``'s ``split``; returns the result record.
        The one evaluation path: `castlib.methods.evaluate_methods` for this method alone.

        ``limit``: the split's first rows (file order); ``sample``: a seeded uniform sample of
        that many rows (`castlib.scoring.evaluation.select_examples`), the same for every method.
        """
        (rec,) = evaluate_methods(
            lm, [self], target, split, limit, progress, sample, sample_seed, count_shared=False
        )
        return rec

    def record(
        self,
        lm: LanguageModel,
        result: EvalResult,
        stats: dict[str, float],
        labels: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """The flat result record (`castlib.methods.shared_eval.RESULT_FIELDS`); ``labels`` (the target's label list)
        turns the per-example predictions into indices (`compact_predictions`)."""
        params = json.loads(json.dumps(dataclasses.asdict(self.params)))  # tuples -> lists
        params.pop("data_dir", None)
        rec: dict[str, Any] = {
            "model": lm.name,
            "dtype": str(lm.dtype).removeprefix("torch."),
            "method": self.name,
            "params": params,
            "seed": self.seed,
            "sources": list(self.sources),
            "target": result.task,
            "split": result.split,
            "accuracy": result.accuracy,
            "macro_f1": result.macro_f1,
            "n": result.n,
            "layer": self.info.get("layer"),
            "alpha": self.info.get("alpha"),
            "selected_ids": list(self.info.get("selected_ids", [])),
            "prompt_tokens_per_query": result.prompt_tokens_per_query,
            "fit_seconds": self.fit_stats["seconds"],
            "eval_seconds": stats["seconds"],
            "peak_memory_mb": max(self.fit_stats["peak_memory_mb"], stats["peak_memory_mb"]),
            "trainable_params": self.info.get("trainable_params", 0),
            "uses_target_labels": self.uses_labels_of_target,
            "scoring": result.scoring,
            "ties": getattr(result, "ties", 0),  # rows whose best labels tied (EvalResult.ties)
            "castlib_version": __version__,
            "prompt_format": self.params.prompt_format,
            "predictions": compact_predictions(result.predictions, labels),
        }
        rec["top_label_share"] = top_label_share(rec["predictions"]["pred"])
        for key, value in self.info.items():
            rec.setdefault(key, value)
        return rec

    # -- persistence ------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``method.json`` (name, parameters, fitted state) and, if any, the steering
        vector as ``vector.safetensors``."""
        if not self.fitted:
            raise RuntimeError(f"{self.name}: nothing to save before fit(...)")
        folder = check_save_folder(folder, [VECTOR_FILE, "method.json"], f"{self.name}.save")
        doc = {
            "method": self.name,
            "vector": VECTOR_FILE if self.vector is not None else None,
            "params": dataclasses.asdict(self.params),
            "seed": self.seed,
            "sources": self.sources,
            "target": self.target,
            "model_id": self.model_id,
            "info": self.info,
            "fit_stats": self.fit_stats,
            "state": self.state(),
            "castlib_version": __version__,
        }
        text = json.dumps(doc, indent=1)  # a record that cannot be written fails before any file
        vector = folder / VECTOR_FILE
        existed = vector.exists()
        try:
            if self.vector is not None:
                self.vector.save(vector)
            tmp = folder / ".method.json.tmp"
            tmp.write_text(text)
            tmp.replace(folder / "method.json")
        except OSError:
            if self.vector is not None and not existed:
                vector.unlink(missing_ok=True)  # no half-written save left behind
            raise
        return folder

    @classmethod
    def _restore(cls, folder: Path, doc: dict[str, Any]) -> Method:
        where = folder / "method.json"
        missing = [key for key in RESTORE_KEYS if key not in doc]
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing}; was it written by method.save?")
        if not isinstance(doc["params"], dict) or not isinstance(doc["info"], dict):
            raise ValueError(f"{where}: 'params' and 'info' must be JSON objects")
        method = cls(**doc["params"])
        vec = folder / VECTOR_FILE
        # saves before the "vector" key: a steering vector was written when the file exists
        wants_vector = doc.get("vector", VECTOR_FILE if vec.is_file() else None) is not None
        if wants_vector and not vec.is_file():
            raise FileNotFoundError(
                f"{where} names a steering vector but {vec} is missing; the save is incomplete"
            )
        method.vector = SteeringVector.load(vec) if wants_vector else None
        method.seed = doc["seed"]
        method.sources = list(doc["sources"])
        method.target = doc["target"]
        method.model_id = doc["model_id"]
        method.info = dict(doc["info"])
        method.fit_stats = dict(doc["fit_stats"])
        try:
            method.load_state(doc["state"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"{where}: invalid fitted state ({type(err).__name__}: {err})"
            ) from err
        if method.needs_vector and method.vector is None:
            raise FileNotFoundError(f"{cls.name} needs its steering vector: {vec} is missing")
        method.fitted = True
        return method

    def __repr__(self) -> str:
        state = f"fitted for {self.sources}->{self.target}" if self.fitted else "not fitted"
        return f"{type(self).__name__}({self.params}, {state})"
