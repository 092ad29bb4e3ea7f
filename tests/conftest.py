"""Shared fixtures: tiny random models (no downloads), a synthetic task, the embedded model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from castlib.tasks import Example, Task
from castlib.testing import FAMILIES, tiny_model, tiny_tokenizer

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"  # the task data the repository ships

CORE_FAMILIES = FAMILIES  # every family castlib knows


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session", params=CORE_FAMILIES)
def family_lm(request, tokenizer):
    return tiny_model(request.param, tokenizer=tokenizer)


@pytest.fixture(scope="session")
def lm(tokenizer):
    return tiny_model("llama", tokenizer=tokenizer)


PROMPTS = [
    "the movie was good",
    "a",
    "bad film , not great at all and the review was terrible",
    "which answer is correct ?",
]


@pytest.fixture()
def prompts():
    return list(PROMPTS)


def make_task(name: str = "toy", n_train: int = 12, n_test: int = 8, seed: int = 0) -> Task:
    """A small sentiment-like classification task."""
    g = torch.Generator().manual_seed(seed)
    words = ["good", "great", "bad", "terrible", "film", "movie", "not", "very"]
    rows = []
    for i in range(n_train + n_test):
        picks = torch.randint(len(words), (5,), generator=g).tolist()
        text = " ".join(words[j] for j in picks)
        label = int(sum(1 if words[j] in ("good", "great") else 0 for j in picks) >= 2)
        rows.append(Example(id=f"{name}-{i}", fields={"text": text}, label=label))
    return Task(
        name=name,
        kind="classification",
        labels=("negative", "positive"),
        instruction="Classify the sentiment of the movie review as negative or positive.",
        fields=("text",),
        splits={"train": rows[:n_train], "test": rows[n_train:]},
    )


@pytest.fixture()
def toy_task() -> Task:
    return make_task()


def write_task(root: Path, name: str, meta: dict, splits: dict[str, list[dict]]) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").write_text(json.dumps({"name": name, **meta}))
    for split, rows in splits.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="session")
def gemma():
    """The embedded Gemma 3 270M (built into the castlib cache on first use)."""
    import castlib

    return castlib.load_model(device="cpu")


@pytest.fixture(scope="session")
def repo_data() -> Path:
    """The repository's own data/ folder (every task the notebooks and configs use)."""
    assert (DATA / "FORMAT.md").is_file(), f"{DATA} is missing: the repository ships its data"
    return DATA


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
