"""Prompt builders (CAST_SPEC "Prompts").

    zero-shot   P0(x)    = "{instruction}\\n\\n{input block}\\nAnswer:"
    k-shot      Pk(x; D) = "{instruction}\\n\\n" + demos + "\\n\\n{input block}\\nAnswer:"
    cross-task  = "{source instruction}\\n\\n" + source demos + "\\n\\n{target instruction}\\n\\n"
                  "{input block}\\nAnswer:"

where each demonstration is "{input block}\\nAnswer: {answer}" and demonstrations are separated
by blank lines. The answer a prompt is scored on is its continuation " {answer}" (a label word,
or an option letter for multiple choice).

A prompt builder is any callable ``(task, example) -> str``; `ZeroShot`, `FewShot`,
`CrossTask` and `PerQuery` are the ones castlib uses, and `ChatTemplate` wraps any of them in a
tokenizer's chat template for instruct models. Methods take ``prompt_format`` (`PROMPT_FORMATS`:
``"plain"``, the default, or ``"chat"``), applied to their evaluated prompts with
`format_prompts`; records say which was used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .tasks import Example, Task

__all__ = [
    "ANSWER_PREFIX",
    "PromptBuilder",
    "input_block",
    "demonstration",
    "continuation",
    "zero_shot",
    "k_shot",
    "cross_task",
    "ZeroShot",
    "FewShot",
    "CrossTask",
    "PerQuery",
    "ChatTemplate",
    "PROMPT_FORMATS",
    "chat_prompt",
    "check_prompt_format",
    "format_prompts",
]

ANSWER_PREFIX = "Answer:"

#: How prompts are presented to the model: ``"plain"`` (the spec's text, the default) or
#: ``"chat"`` (the plain prompt as the user turn of the tokenizer's chat template).
PROMPT_FORMATS = ("plain", "chat")

_DEFAULT_ROLES = {"text": "text", "passage": "passage", "question": "question"}


class PromptBuilder(Protocol):
    def __call__(self, task: Task, example: Example) -> str: ...


def _role(task: Task, field: str) -> str:
    role = task.field_roles.get(field, _DEFAULT_ROLES.get(field, field))
    return role[:1].upper() + role[1:]


def input_block(task: Task, example: Example) -> str:
    """The input block of an example: its fields as ``Role: text`` lines; for multiple choice
    ``Question: ...`` followed by ``A. ...`` option lines (after the passage, if any)."""
    lines = []
    if task.kind == "multiple_choice":
        for field in task.fields:
            if field != "question":
                lines.append(f"{_role(task, field)}: {example.fields[field]}")
        lines.append(f"Question: {example.fields['question']}")
        for letter, option in zip(task.labels, example.options or (), strict=False):
            lines.append(f"{letter}. {option}")
    else:
        for field in task.fields:
            lines.append(f"{_role(task, field)}: {example.fields[field]}")
    return "\n".join(lines)


def continuation(answer: str) -> str:
    """The text scored after a prompt for ``answer``."""
    return " " + answer


def demonstration(task: Task, example: Example) -> str:
    """One solved example: input block, answer prefix and gold answer."""
    return f"{input_block(task, example)}\n{ANSWER_PREFIX}{continuation(task.answer(example))}"


def zero_shot(task: Task, example: Example) -> str:
    """P0(x)."""
    return f"{task.instruction}\n\n{input_block(task, example)}\n{ANSWER_PREFIX}"


def k_shot(task: Task, example: Example, demos: Sequence[Example]) -> str:
    """Pk(x; D): in-task demonstrations ``demos`` of ``task`` before the query."""
    shots = "\n\n".join(demonstration(task, d) for d in demos)
    body = f"{input_block(task, example)}\n{ANSWER_PREFIX}"
    return f"{task.instruction}\n\n{shots}\n\n{body}" if shots else zero_shot(task, example)


def cross_task(source: Task, demos: Sequence[Example], target: Task, example: Example) -> str:
    """Source demonstrations under the source instruction, then the target's zero-shot prompt."""
    if not demos:
        return zero_shot(target, example)
    shots = "\n\n".join(demonstration(source, d) for d in demos)
    return f"{source.instruction}\n\n{shots}\n\n{zero_shot(target, example)}"


@dataclass(frozen=True)
class ZeroShot:
    """Builder of P0."""

    def __call__(self, task: Task, example: Example) -> str:
        return zero_shot(task, example)


@dataclass(frozen=True)
class FewShot:
    """Builder of Pk with a fixed in-task demonstration list."""

    demos: tuple[Example, ...]

    def __call__(self, task: Task, example: Example) -> str:
        return k_shot(task, example, [d for d in self.demos if d.id != example.id])


@dataclass(frozen=True)
class CrossTask:
    """Builder of the cross-task k-shot prompt with fixed source demonstrations."""

    source: Task
    demos: tuple[Example, ...]

    def __call__(self, task: Task, example: Example) -> str:
        return cross_task(self.source, self.demos, task, example)


@dataclass(frozen=True)
class PerQuery:
    """Builder whose source demonstrations depend on the query (e.g. the most similar ones).

    ``choose(example) -> (source task, demos)``.
    """

    choose: Callable[[Example], tuple[Task, Sequence[Example]]]

    def __call__(self, task: Task, example: Example) -> str:
        source, demos = self.choose(example)
        return cross_task(source, demos, task, example)


def chat_prompt(tokenizer: object, text: str) -> str:
    """``text`` (a plain prompt ending in the answer prefix) in the tokenizer's chat template:
    the prompt minus its answer prefix is the user turn, and the answer prefix opens the
    assistant turn. The template's leading BOS text is dropped because castlib's tokenisation
    adds the special tokens itself."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            f"the tokenizer {type(tokenizer).__name__} has no chat template; use "
            f"prompt_format='plain' with this model"
        )
    if text.endswith(ANSWER_PREFIX):
        text = text[: -len(ANSWER_PREFIX)].rstrip("\n")
    rendered = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    bos = getattr(tokenizer, "bos_token", None)
    if bos and rendered.startswith(bos):
        rendered = rendered[len(bos) :]
    return f"{rendered}{ANSWER_PREFIX}"


def check_prompt_format(prompt_format: str) -> str:
    """``prompt_format`` if it is one of `PROMPT_FORMATS`, else a ValueError naming them."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(
            f"prompt_format must be one of {list(PROMPT_FORMATS)}, got {prompt_format!r}"
        )
    return prompt_format


def format_prompts(prompts: Sequence[str], tokenizer: object, prompt_format: str) -> list[str]:
    """The prompts in ``prompt_format``: ``"plain"`` leaves them as built (the spec's
    prompts), ``"chat"`` wraps each with `chat_prompt`."""
    if check_prompt_format(prompt_format) == "plain":
        return list(prompts)
    return [chat_prompt(tokenizer, p) for p in prompts]


@dataclass(frozen=True)
class ChatTemplate:
    """Wrap a builder's prompt with `chat_prompt` (the tokenizer's chat template)."""

    builder: Callable[[Task, Example], str]
    tokenizer: object

    def __call__(self, task: Task, example: Example) -> str:
        return chat_prompt(self.tokenizer, self.builder(task, example))
