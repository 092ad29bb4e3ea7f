"""Tiny random-initialised models and an in-memory tokenizer, for tests and examples.

Nothing here downloads anything: the tokenizer is a word-level vocabulary built on the fly
(with byte fallback characters so that any text tokenises), and each model is built from a
config of its family with a few narrow layers.
"""

from __future__ import annotations

import string

import torch

from .models import LanguageModel, wrap_model

__all__ = ["FAMILIES", "tiny_tokenizer", "tiny_model"]

FAMILIES = (
    "llama",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3",
    "gpt2",
    "gpt_neox",
    "mistral",
    "opt",
    "falcon",
    "phi3",
)

_WORDS = (
    "the a an of to and is was in it that for on with as at by this movie review film good bad "
    "great terrible positive negative neutral sentiment classify question answer text passage "
    "true false yes no premise hypothesis entailment contradiction which what who where when "
    "science travel politics sports health entertainment geography option choose correct news "
    "sentence financial profit loss company market stock rose fell very not"
).split()


def tiny_tokenizer(extra_words: tuple[str, ...] = ()) -> object:
    """A word-level fast tokenizer: common words, then single characters as a fallback.

    Special tokens: ``<pad>`` (0), ``<bos>`` (1, prepended to every encoding), ``<eos>`` (2),
    ``<unk>`` (3). Spaces are kept as their own token so continuations like " positive" map to
    a stable token sequence.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    for tok in [" " + w for w in (*_WORDS, *extra_words)] + list(
        string.ascii_letters + string.digits + string.punctuation + " \n"
    ):
        vocab.setdefault(tok, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # split into " word" chunks (space attached in front) and single characters otherwise
    words = "|".join(sorted((" " + w for w in (*_WORDS, *extra_words)), key=len, reverse=True))
    pattern = Regex(f"(?:{words})(?![A-Za-z])|.|\\n")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern, behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
    )


def _config(family: str, vocab: int, hidden: int, layers: int) -> object:
    import transformers as tf

    heads, kv = 4, 2
    common = {"vocab_size": vocab, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    llama_like = {
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "max_position_embeddings": 512,
        **common,
    }
    if family == "llama":
        return tf.LlamaConfig(**llama_like)
    if family == "mistral":
        return tf.MistralConfig(**llama_like, sliding_window=None)
    if family == "qwen2":
        return tf.Qwen2Config(**llama_like)
    if family == "qwen3":
        return tf.Qwen3Config(**llama_like, head_dim=hidden // heads)
    if family == "gemma2":
        return tf.Gemma2Config(
            **llama_like,
            head_dim=hidden // heads,
            query_pre_attn_scalar=hidden // heads,
            sliding_window=8,
        )
    if family == "phi3":
        return tf.Phi3Config(**llama_like)
    if family == "gemma3":
        return tf.Gemma3TextConfig(
            **llama_like,
            head_dim=hidden // heads,
            query_pre_attn_scalar=hidden // heads,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"] * (layers // 2)
            + ["sliding_attention"] * (layers % 2),
        )
    if family == "gpt2":
        return tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=512, **common)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=512,
            **common,
        )
    if family == "opt":
        return tf.OPTConfig(
            hidden_size=hidden,
            ffn_dim=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=512,
            word_embed_proj_dim=hidden,
            **common,
        )
    if family == "falcon":
        return tf.FalconConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            new_decoder_architecture=False,
            multi_query=True,
            alibi=False,
            **common,
        )
    raise ValueError(f"unknown tiny family {family!r}; choose from {FAMILIES}")


def tiny_model(
    family: str = "llama",
    hidden: int = 64,
    layers: int = 4,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    tokenizer: object | None = None,
) -> LanguageModel:
    """A random-initialised causal LM of ``family`` wrapped as a `LanguageModel`."""
    from transformers import AutoModelForCausalLM

    tok = tokenizer if tokenizer is not None else tiny_tokenizer()
    config = _config(family, len(tok), hidden, layers)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return wrap_model(model, tok, name=f"tiny-{family}")
