"""A distillation's checkpoints: the student, the best weights so far, the optimizer's
moments and the run's report, saved so that a kill at any moment leaves one whole
checkpoint, and resumed only by the same plan, settings and data (its fingerprint)."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ppocompress.fileio import atomic_write_text

POINTER = "latest.json"


def fingerprint_of(plan: dict, config, passages: int) -> str:
    """What a checkpoint must have been made with to be resumed: the plan, the settings (a
    dataclass) and the data."""
    described = json.dumps([plan, asdict(config), passages], sort_keys=True)
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def save_checkpoint(directory: Path, fingerprint: str, model: nn.Module, optimizer, best: dict, report: dict,
                    step: int) -> None:
    """A complete checkpoint in a new folder, then the pointer to it replaced atomically,
    then older folders removed: a kill at any point leaves one whole checkpoint."""
    directory.mkdir(parents=True, exist_ok=True)
    folder = directory / f"step-{step}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "student.safetensors")
    save_file({k: v.contiguous() for k, v in best.items()}, folder / "best.safetensors")
    moments = {}
    for i, p in enumerate(optimizer.param_groups[0]["params"]):
        for key, value in optimizer.state.get(p, {}).items():
            moments[f"{i}.{key}"] = torch.as_tensor(value).contiguous()
    save_file(moments, folder / "optimizer.safetensors")
    pointer = {"folder": folder.name, "fingerprint": fingerprint, "report": report}
    atomic_write_text(directory / POINTER, json.dumps(pointer))
    for old in directory.glob("step-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(directory: Path, fingerprint: str, model: nn.Module, optimizer, best: dict) -> dict | None:
    """Restores the checkpoint in `directory` if it was made with the same fingerprint, and
    returns its report; None if there is none (another plan's or settings' is removed)."""
    pointer = directory / POINTER
    if not pointer.exists():
        return None
    saved = json.loads(pointer.read_text())
    if saved.get("fingerprint") != fingerprint:
        shutil.rmtree(directory, ignore_errors=True)
        return None
    folder = directory / saved["folder"]
    model.load_state_dict(load_file(folder / "student.safetensors"))
    best.update(load_file(folder / "best.safetensors"))
    moments = load_file(folder / "optimizer.safetensors")
    for i, p in enumerate(optimizer.param_groups[0]["params"]):
        state = {key.split(".", 1)[1]: value for key, value in moments.items() if key.split(".", 1)[0] == str(i)}
        if state:
            optimizer.state[p] = state
    return saved["report"]
