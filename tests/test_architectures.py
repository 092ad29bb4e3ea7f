"""castlib.architectures: the one table of per-family module names, checked on tiny models."""

from __future__ import annotations

import pytest

from castlib import architectures as arch
from castlib.methods.adapters.layers import DEFAULT_TARGETS, target_modules
from castlib.methods.function_vector import attention_module, mlp_module, out_projection
from castlib.models import BLOCK_PATHS
from castlib.testing import FAMILIES, tiny_model


def _row(model_type: str) -> arch.Architecture:
    rows = [a for a in arch.ARCHITECTURES if model_type in a.families]
    assert len(rows) == 1, model_type
    return rows[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_tiny_family_has_a_row_that_names_its_modules(family, tokenizer):
    lm = tiny_model(family, tokenizer=tokenizer)
    row = _row(lm.model.config.model_type)
    assert lm.blocks_path == row.blocks
    block = lm.blocks[0]
    assert attention_module(block) is getattr(block, row.attention)
    assert out_projection(block) is getattr(getattr(block, row.attention), row.out_proj)
    assert mlp_module(block) is getattr(block, row.mlp)
    names = target_modules(lm)
    assert names and {n.rpartition(".")[2] for n in names} <= set(row.lora_targets)


def test_lookup_tuples_come_from_the_table():
    assert BLOCK_PATHS is arch.BLOCK_PATHS and DEFAULT_TARGETS is arch.LORA_TARGETS
    assert BLOCK_PATHS[0] == "model.layers" and len(set(BLOCK_PATHS)) == len(BLOCK_PATHS)
    for a in arch.ARCHITECTURES:
        assert a.blocks in BLOCK_PATHS and a.attention in arch.ATTENTION_NAMES
        assert a.out_proj in arch.OUT_PROJ_NAMES and a.mlp in arch.MLP_NAMES
        assert set(a.lora_targets) <= set(arch.LORA_TARGETS)
