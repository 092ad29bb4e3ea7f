"""JSON forms of tasks and examples, which a saved method's fitted state holds (its chosen
demonstrations, the source task that prompts them), so that a saved method is self-contained:
it reloads and evaluates without the task data it was fitted on."""

from __future__ import annotations

from typing import Any

from ..tasks import Example, Task

__all__ = ["example_to_json", "example_from_json", "task_to_json", "task_from_json"]


def example_to_json(ex: Example) -> dict[str, Any]:
    """A JSON form of an example (saved methods are self-contained, no data needed)."""
    return {"id": ex.id, "fields": dict(ex.fields), "label": ex.label, "options": ex.options}


def example_from_json(doc: dict[str, Any]) -> Example:
    options = doc.get("options")
    return Example(
        id=doc["id"],
        fields=doc["fields"],
        label=doc["label"],
        options=None if options is None else tuple(options),
    )


def task_to_json(task: Task) -> dict[str, Any]:
    """What prompts need of a task (no splits)."""
    return {
        "name": task.name,
        "kind": task.kind,
        "labels": list(task.labels),
        "instruction": task.instruction,
        "fields": list(task.fields),
        "field_roles": dict(task.field_roles),
        "language": task.language,
    }


def task_from_json(doc: dict[str, Any]) -> Task:
    return Task(
        name=doc["name"],
        kind=doc["kind"],
        labels=tuple(doc["labels"]),
        instruction=doc["instruction"],
        fields=tuple(doc["fields"]),
        splits={},
        field_roles=doc.get("field_roles", {}),
        language=doc.get("language", "en"),
    )
