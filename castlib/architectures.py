"""Per-family architecture names: where castlib finds the parts of a decoder language model.

One row per family layout (`ARCHITECTURES`): the attribute path of the decoder blocks (whose
outputs are the residual stream h_l), and inside a block the self-attention module, its output
projection (whose *input* is the concatenation of the heads' outputs), the MLP, and the linear
modules LoRA/KaSA adapt by default (attention query/value projections, or the fused QKV
projection where a family has one).

The lookup tuples the rest of castlib uses are derived from the table, in table order (first
match wins): `BLOCK_PATHS` (`castlib.models.find_blocks`), `ATTENTION_NAMES`,
`OUT_PROJ_NAMES` and `MLP_NAMES` (`castlib.methods.function_vector`), and `LORA_TARGETS`
(`castlib.methods.adapters.layers.target_modules`). A family not listed here works when its names match a
listed one, or with an explicit ``blocks_path=`` / adapter ``targets=``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Architecture",
    "ARCHITECTURES",
    "BLOCK_PATHS",
    "ATTENTION_NAMES",
    "OUT_PROJ_NAMES",
    "MLP_NAMES",
    "LORA_TARGETS",
]


@dataclass(frozen=True)
class Architecture:
    """The module names of one family layout.

    Attributes:
        families: the model families (``config.model_type`` style) with this layout.
        blocks: attribute path of the decoder blocks on the causal LM.
        attention: attribute of a block holding its self-attention.
        out_proj: attribute of the attention holding its output projection.
        mlp: attribute of a block holding its MLP (OPT has none: its second feed-forward
            linear ``fc2``).
        lora_targets: last name components of the linear modules adapted by default.
    """

    families: tuple[str, ...]
    blocks: str
    attention: str
    out_proj: str
    mlp: str
    lora_targets: tuple[str, ...]


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"),
        "model.layers",
        "self_attn",
        "o_proj",
        "mlp",
        ("q_proj", "v_proj"),
    ),
    Architecture(("phi3",), "model.layers", "self_attn", "o_proj", "mlp", ("qkv_proj",)),
    Architecture(
        ("gemma3",),  # the multimodal Gemma 3 (and Llava-style) text stack
        "model.language_model.layers",
        "self_attn",
        "o_proj",
        "mlp",
        ("q_proj", "v_proj"),
    ),
    Architecture(
        ("llama4_text",),
        "model.layers",
        "self_attn",
        "o_proj",
        "feed_forward",
        ("q_proj", "v_proj"),
    ),
    Architecture(
        ("opt",), "model.decoder.layers", "self_attn", "out_proj", "fc2", ("q_proj", "v_proj")
    ),
    Architecture(("gpt2",), "transformer.h", "attn", "c_proj", "mlp", ("c_attn",)),
    Architecture(("mpt",), "transformer.blocks", "attn", "out_proj", "ffn", ("Wqkv",)),
    Architecture(
        ("gpt_neox",), "gpt_neox.layers", "attention", "dense", "mlp", ("query_key_value",)
    ),
    Architecture(
        ("falcon", "bloom"), "transformer.h", "self_attention", "dense", "mlp", ("query_key_value",)
    ),
    Architecture(("gptj",), "transformer.h", "attn", "out_proj", "mlp", ("q_proj", "v_proj")),
)

#: Further block paths tried after the table's: other layouts and wrapped models (a causal LM
#: inside a ``language_model`` attribute, or a PEFT-style ``model.model``).
EXTRA_BLOCK_PATHS: tuple[str, ...] = (
    "transformer.layers",
    "language_model.model.layers",
    "model.model.layers",
)


def _names(attr: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(getattr(a, attr) for a in ARCHITECTURES))


#: Attribute paths tried, in order, to find the decoder blocks of a causal LM.
BLOCK_PATHS: tuple[str, ...] = tuple(dict.fromkeys(_names("blocks") + EXTRA_BLOCK_PATHS))
#: Self-attention attribute names of a block, tried in order.
ATTENTION_NAMES: tuple[str, ...] = _names("attention")
#: Output-projection attribute names of an attention module, tried in order.
OUT_PROJ_NAMES: tuple[str, ...] = _names("out_proj")
#: MLP attribute names of a block, tried in order.
MLP_NAMES: tuple[str, ...] = _names("mlp")
#: Last name components of the modules LoRA and KaSA adapt by default.
LORA_TARGETS: tuple[str, ...] = tuple(
    dict.fromkeys(t for a in ARCHITECTURES for t in a.lora_targets)
)
