"""Running a model over text in batches (their defaults, the pad token they need), and
watching chosen modules' inputs on calibration text."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from ppocompress.compress.ops.quantize import InputStatistics

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
    current: dict[str, torch.Tensor] = {}  # the batch's real (non-padding) tokens, as "mask"
    handles = _watch(modules, on_input, current, stop_after=list(modules)[-1] if stop_early else None)
    _forward_over(model, tokenizer, texts, batch_size, max_length, handles,
                  lambda batch: current.update(mask=batch["attention_mask"].bool()))


def input_statistics(model: nn.Module, tokenizer, texts: list[str], modules: dict[str, nn.Module],
                     stop_early: bool = False) -> dict[str, InputStatistics]:
    """What each of `modules` (Linear layers) saw as input over `texts`: per channel its
    lowest and highest value, and per passage its mean over the passage's tokens. With
    `stop_early`, as in watch_inputs."""
    low: dict[str, torch.Tensor] = {}
    high: dict[str, torch.Tensor] = {}
    means: dict[str, list[torch.Tensor]] = {name: [] for name in modules}

    def on_rows(name: str, x: torch.Tensor) -> None:
        low[name] = torch.minimum(low[name], x.amin(dim=0)) if name in low else x.amin(dim=0)
        high[name] = torch.maximum(high[name], x.amax(dim=0)) if name in high else x.amax(dim=0)

    current: dict[str, torch.Tensor] = {}
    # The per-passage hooks first: the other set ends the pass after the last module.
    handles = _watch(modules, lambda name, rows: means[name].append(rows), current, per_passage=True)
    handles += _watch(modules, on_rows, current, stop_after=list(modules)[-1] if stop_early else None)
    _forward_over(model, tokenizer, texts, BATCH_SIZE, MAX_LENGTH, handles,
                  lambda batch: current.update(mask=batch["attention_mask"].bool()))
    return {name: InputStatistics(low[name], high[name], torch.cat(means[name])) for name in modules}


def _watch(modules: dict[str, nn.Module], on_input: Callable[[str, torch.Tensor], None], current: dict[str, torch.Tensor],
           stop_after: str | None = None, per_passage: bool = False) -> list:
    """Hooks that call on_input(name, rows) with each module's input at the current batch's
    real tokens (current["mask"]), one row per token or, `per_passage`, the mean of each
    passage's, and end the pass after module `stop_after`; their handles."""
    def hook_for(name: str):
        def hook(_module, args):
            x, mask = args[0], current["mask"]
            if per_passage:
                real = mask.unsqueeze(-1).to(x.dtype)
                on_input(name, ((x * real).sum(dim=1) / real.sum(dim=1).clamp(min=1)).float())
            else:
                on_input(name, x[mask].reshape(-1, x.shape[-1]).float())
            if name == stop_after:
                raise _StopForward

        return hook

    return [module.register_forward_pre_hook(hook_for(name)) for name, module in modules.items()]


def _forward_over(model: nn.Module, tokenizer, texts: list[str], batch_size: int, max_length: int, handles: list,
                  before: Callable[[dict], None]) -> None:
    """Forward passes over `texts` in batches, shortest first (less padding; every pass
    over the same texts sees the same batches in the same order), before(batch) ahead of
    each; a hook may end a pass early (_StopForward). `handles`, the hooks, are removed
    at the end."""
    try:
        with torch.inference_mode():
            for batch in batches(tokenizer, [texts[i] for i in by_length(texts)], batch_size, max_length):
                before(batch)
                try:
                    forward(model, batch)
                except _StopForward:
                    pass
    finally:
        for handle in handles:
            handle.remove()


class _StopForward(Exception):
    """Raised from a hook to skip the layers after the ones being watched."""


class LayerCalls:
    """A model run over text one layer at a time: the first layer's input for every
    batch, and the other arguments each layer was called with (masks, position
    embeddings: per layer, since some families give layers different masks), recorded in
    one forward pass. `run` then moves the batches' hidden states through one layer, so a
    layer's inputs can be watched after the ones before it changed, without running those
    again."""

    def __init__(self, model: nn.Module, tokenizer, texts: list[str], layers: list[nn.Module], batch_size: int = BATCH_SIZE,
                 max_length: int = MAX_LENGTH):
        self.hidden: list[torch.Tensor] = []  # per batch: the input of the next layer to run
        self.masks: list[torch.Tensor] = []  # per batch: the real (non-padding) tokens
        self.arguments: list[list[tuple[tuple, dict]]] = [[] for _ in layers]  # [layer][batch]: (args after the first, kwargs)
        last = len(layers) - 1

        def hook_for(index: int):
            def hook(_module, args, kwargs):
                if index == 0:
                    self.hidden.append(args[0])
                self.arguments[index].append((args[1:], kwargs))
                if index == last:
                    raise _StopForward

            return hook

        handles = [layer.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, layer in enumerate(layers)]
        _forward_over(model, tokenizer, texts, batch_size, max_length, handles,
                      lambda batch: self.masks.append(batch["attention_mask"].bool()))

    def run(self, layer: nn.Module, index: int, on_input: Callable[[str, torch.Tensor], None] | None = None,
            modules: dict[str, nn.Module] | None = None, advance: bool = True) -> None:
        """Runs `layer`, the model's `index`-th, on every batch: on_input(name, rows) sees
        each of `modules`' inputs (one row per real token), and with `advance` its outputs
        become the next layer's inputs."""
        current: dict[str, torch.Tensor] = {}  # the batch's real tokens, as "mask"
        handles = _watch(modules or {}, on_input, current)
        try:
            with torch.inference_mode():
                for batch, (args, kwargs) in enumerate(self.arguments[index]):
                    current["mask"] = self.masks[batch]
                    output = layer(self.hidden[batch], *args, **kwargs)
                    if advance:
                        self.hidden[batch] = output if isinstance(output, torch.Tensor) else output[0]
        finally:
            for handle in handles:
                handle.remove()
