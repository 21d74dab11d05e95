"""Running a model over text in batches (their defaults, the pad token they need), and
watching chosen modules' inputs on calibration text."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

BATCH_SIZE = 32  # passages a forward pass over text takes at once, unless told otherwise
MAX_LENGTH = 128  # tokens of a passage that a model sees; the rest is cut


def by_length(texts: list[str]) -> list[int]:
    """Indices of `texts`, shortest first: batches of similar lengths pad little, which
    matters when the sources mix short sentences and long passages."""
    return sorted(range(len(texts)), key=lambda i: len(texts[i]))


def ensure_pad_token(tokenizer) -> None:
    """Causal LM tokenizers (GPT-2, Llama) often have no pad token; batching needs one, and eos is the usual stand-in."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def batches(tokenizer, texts: list[str], batch_size: int, max_length: int) -> Iterator[dict]:
    for start in range(0, len(texts), batch_size):
        yield tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True,
                        max_length=max_length)


def forward(model: nn.Module, batch: dict, **options):
    """The model's forward on input ids and mask only (no token types, no cache), with
    `options` such as output_hidden_states."""
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], **options}
    if getattr(model.config, "is_decoder", False) or hasattr(model, "lm_head"):
        kwargs["use_cache"] = False
    return model(**kwargs)


def watch_inputs(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    modules: dict[str, nn.Module],
    on_input: Callable[[str, torch.Tensor], None],
    batch_size: int = BATCH_SIZE,
    max_length: int = MAX_LENGTH,
    stop_early: bool = False,
) -> None:
    """Calls on_input(name, rows) with each watched module's input, one row per real
    (non-padding) token, for every calibration batch.

    stop_early: modules are given in forward order; once the last one has been seen,
    the rest of the forward pass is skipped.
    """
    current_mask: list[torch.Tensor] = []
    last = list(modules)[-1]

    def hook_for(name: str):
        def hook(_module, args):
            x = args[0]
            on_input(name, x[current_mask[0]].reshape(-1, x.shape[-1]).float())
            if stop_early and name == last:
                raise _StopForward

        return hook

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in modules.items()]
    try:
        with torch.inference_mode():
            # Shortest first (less padding); every pass over the same texts sees the same order.
            for batch in batches(tokenizer, [texts[i] for i in by_length(texts)], batch_size, max_length):
                current_mask[:] = [batch["attention_mask"].bool()]
                try:
                    forward(model, batch)
                except _StopForward:
                    pass
    finally:
        for handle in handles:
            handle.remove()


class _StopForward(Exception):
    """Raised from a hook to skip the layers after the ones being watched."""
