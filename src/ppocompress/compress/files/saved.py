"""Saving a compressed model as safetensors + its plan, and rebuilding it exactly.

A directory holds model.safetensors (the pruned weights: int8 layers as int8 values plus
per-channel scales; sparse layers as a bitmask plus the non-zero values), compression.json
(format, the dense model's config, the plan) and the tokenizer files. Loading builds the
dense architecture from the config, cuts it to the plan's shapes, then loads the weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
from transformers.initialization import no_init_weights

from ppocompress.compress.data.calibration import ensure_pad_token
from ppocompress.compress.files.description import DESCRIPTION, FORMAT, read_description
from ppocompress.compress.models.families import family
from ppocompress.compress.models.loading import LoadedModel
from ppocompress.compress.ops.apply import restructure
from ppocompress.compress.ops.quantize import (
    int8_tensors,
    is_int8_linear,
    is_packed_int8_linear,
    load_int8_tensors,
)
from ppocompress.compress.plan import CompressionPlan, Precision
from ppocompress.errors import UserError
from ppocompress.fileio import move_into_place, staging_dir


def save(loaded: LoadedModel, directory: str | Path) -> Path:
    """Writes the model to directory atomically: a staging folder renamed into place."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    plan = loaded.plan if loaded.plan is not None else CompressionPlan.dense(loaded.model.config.num_hidden_layers)
    if plan.uses(Precision.INT8) and not any(is_int8_linear(m) for m in loaded.model.modules()):
        # load() quantizes the int8-marked layers before reading the weights back.
        raise ValueError("the plan marks int8 layers but the model holds none; quantize it first "
                         "(apply_plan(quantize=True), or the torch runtime's export)")
    staging = staging_dir(directory.parent, directory.name)
    try:
        save_file(state_tensors(loaded.model), str(staging / "model.safetensors"), metadata={"format": FORMAT})
        meta = {
            "format": FORMAT,
            "model_type": loaded.model_type,
            "source": loaded.source,
            "base_config": loaded.base_config,
            "plan": plan.to_dict(),
        }
        (staging / DESCRIPTION).write_text(json.dumps(meta, indent=1, default=str))
        loaded.tokenizer.save_pretrained(str(staging))
        _replace_directory(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def load(directory: str | Path) -> LoadedModel:
    """Rebuilds a model written by save(); its outputs equal the saved model's."""
    directory = Path(directory)
    meta = read_description(directory)
    base_config = dict(meta["base_config"])
    config = AutoConfig.for_model(**base_config)
    auto_class = AutoModelForCausalLM if family(meta["model_type"]).causal else AutoModel
    with no_init_weights():  # every weight is read back below, and random init would be most of the load's time
        model = auto_class.from_config(config)
    model.tie_weights()  # tied weights (GPT-2's lm_head and wte) are stored once
    plan = CompressionPlan.from_dict(meta["plan"])
    restructure(model, plan)
    load_state_tensors(model, load_file(str(directory / "model.safetensors")))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    ensure_pad_token(tokenizer)
    return LoadedModel(model, tokenizer, meta["model_type"], meta["source"], base_config, plan)


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight as a plain tensor, tied weights once, in the compact forms above."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    int8_names = [name for name, m in model.named_modules() if is_packed_int8_linear(m)]
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if is_packed_int8_linear(module):
            tensors.update({prefix + k: v.contiguous() for k, v in int8_tensors(module).items()})
            continue
        if any(name.startswith(q + ".") for q in int8_names):
            continue  # the packed-parameter holder inside an int8 Linear
        for key, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if tensor.data_ptr() in seen:
                continue  # tied to a tensor already stored (e.g. GPT-2's lm_head and wte)
            seen.add(tensor.data_ptr())
            tensor = tensor.detach().contiguous()
            if _is_sparse(tensor):
                mask = tensor != 0
                tensors[prefix + key + ".sparse_mask"] = torch.from_numpy(np.packbits(mask.numpy().reshape(-1)))
                tensors[prefix + key + ".sparse_values"] = tensor[mask]
            else:
                tensors[prefix + key] = tensor
    return tensors


def load_state_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of state_tensors; fails loudly on anything missing or mis-shaped."""
    remaining = dict(tensors)
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if is_packed_int8_linear(module):
            keys = [k for k in remaining if k.startswith(prefix) and "." not in k[len(prefix):]]
            load_int8_tensors(module, {k[len(prefix):]: remaining.pop(k) for k in keys})
            continue
        for key, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            full = prefix + key
            if full in remaining:
                value = remaining.pop(full)
            elif full + ".sparse_mask" in remaining:
                mask_bits = remaining.pop(full + ".sparse_mask").numpy()
                mask = torch.from_numpy(np.unpackbits(mask_bits)[: tensor.numel()].astype(bool)).reshape(tensor.shape)
                value = torch.zeros_like(tensor).masked_scatter_(mask, remaining.pop(full + ".sparse_values"))
            else:
                continue  # tied to a tensor loaded under another name
            if value.shape != tensor.shape:
                raise UserError(f"saved weight {full} has shape {tuple(value.shape)}, the plan gives {tuple(tensor.shape)}: "
                                "the files do not match")
            with torch.no_grad():
                tensor.copy_(value)
    if remaining:
        raise UserError(f"saved model has weights the plan does not explain ({sorted(remaining)[:3]}...); the files do not match")


def _is_sparse(tensor: torch.Tensor) -> bool:
    """Worth the bitmask form: a float matrix that is at least a quarter zeros."""
    return tensor.dim() == 2 and tensor.is_floating_point() and (tensor == 0).float().mean().item() >= 0.25


def _replace_directory(staging: Path, directory: Path) -> None:
    if directory.exists() and not (directory / DESCRIPTION).exists() and any(directory.iterdir()):
        raise UserError(f"{directory} exists and is not a saved model; choose an empty or new directory")
    move_into_place(staging, directory)
