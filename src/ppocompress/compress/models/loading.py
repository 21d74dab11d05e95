"""Loading a transformer: the embedded default, a local directory or a Hugging Face id.

Weights are read from safetensors only (never pickle), and remote code runs only when
the caller passes trust_remote_code=True.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from ppocompress.compress.data.calibration import ensure_pad_token
from ppocompress.compress.files.description import is_saved_model, saved_source
from ppocompress.compress.models.embedded import ENCODER_DEFAULT, embedded_dir
from ppocompress.compress.models.families import FAMILIES, family
from ppocompress.errors import UserError, first_line

EMBEDDED_DEFAULT = ENCODER_DEFAULT
HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # the characters the Hugging Face hub allows in an id


@dataclass
class LoadedModel:
    """A model, its tokenizer, and what kind of model it is."""

    model: nn.Module
    tokenizer: object
    model_type: str  # config.model_type: "bert", "gpt2", "llama", ...
    source: str  # what the user named, or the embedded default's name
    base_config: dict[str, Any] = field(default_factory=dict)  # the dense model's config
    plan: Any = None  # the CompressionPlan applied to the dense model, if any
    distillation: Any = None  # the DistillReport of its recovery, if it was distilled

    @property
    def is_causal(self) -> bool:
        return family(self.model_type).causal

    def config_scalars(self) -> dict[str, Any]:
        """The dense config's plain values, in key order: what identifies the architecture
        in a cache key or fingerprint (nested and object values left out)."""
        return {k: v for k, v in sorted(self.base_config.items()) if isinstance(v, (int, float, str, bool))}


def resolve_source(name: str | None) -> tuple[str, str]:
    """(what to pass to from_pretrained, a display name) for a user's --model value:
    an embedded default's name (none: the encoder), a local folder, or a Hugging Face id."""
    folder = embedded_dir(name or EMBEDDED_DEFAULT)
    if folder is not None:
        return str(folder), name or EMBEDDED_DEFAULT
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} has no config.json; pass a model directory saved with save_pretrained")
        if is_saved_model(path):
            raise UserError(f"{path} is a model ppocompress compressed; judge it with ppocompress evaluate --model {path}, "
                            f"or compress the dense model it came from ({saved_source(path)})")
        return str(path), name
    if _looks_like_a_path(name):  # not worth a lookup on the hub, which is slow to fail offline
        raise UserError(f"model path {name} does not exist; pass an existing directory or a Hugging Face id")
    return name, name


def _looks_like_a_path(name: str) -> bool:
    """A --model value that cannot be a Hugging Face id ("name" or "org/name"): it starts
    like a path, has more than one slash or a character ids never have, or its first part is
    a local folder ("runs/ou" for "runs/out")."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or not HUB_ID.fullmatch(name):
        return True
    return "/" in name and Path(name.split("/")[0]).is_dir()


def _config(source: str, display: str, trust_remote_code: bool):
    """The model's config, of a supported family (else one UserError line)."""
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model {display!r}: {first_line(exc)}; "
                        "check the id/path, or that it is cached when offline") from None
    model_type = getattr(config, "model_type", "?")
    if model_type not in FAMILIES:
        supported = ", ".join(sorted(FAMILIES))
        raise UserError(f"model {display!r} is a {model_type!r} model; supported architectures: {supported}")
    return config


def model_is_causal(name: str | None, trust_remote_code: bool = False) -> bool:
    """Whether --model names a causal LM, from its config alone."""
    return family(_config(*resolve_source(name), trust_remote_code).model_type).causal


def load_model(name: str | None = None, trust_remote_code: bool = False) -> LoadedModel:
    """Loads model + tokenizer in eval mode, fp32, on the CPU."""
    hf_logging.disable_progress_bar()  # our own progress display owns the terminal
    source, display = resolve_source(name)
    config = _config(source, display, trust_remote_code)
    model_type = config.model_type
    auto_class = AutoModelForCausalLM if family(model_type).causal else AutoModel
    if Path(source).is_dir():
        _check_safetensors(Path(source))
    try:
        model, loading = auto_class.from_pretrained(
            source, config=config, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=torch.float32,
            output_loading_info=True,
        )
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, EnvironmentError, SafetensorError) as exc:
        raise UserError(f"cannot load model {display!r}: {first_line(exc)} (only safetensors weights are accepted)") from None
    missing = sorted(loading["missing_keys"])
    if missing:  # transformers would fill them with random values and only warn
        raise UserError(f"model {display!r} lacks {len(missing)} of the weights its architecture needs (such as "
                        f"{missing[0]!r}); it would run with random ones, so save the whole model again")
    ensure_pad_token(tokenizer)
    model.eval()
    return LoadedModel(model, tokenizer, model_type, display, base_config=model.config.to_dict())


def _check_safetensors(folder: Path) -> None:
    """Every safetensors file of a local model folder opens (a truncated or garbled one
    fails here in one line, not as a traceback from inside transformers)."""
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{file} is not a readable safetensors file ({first_line(exc)}); "
                            "save the model again with save_pretrained") from None
