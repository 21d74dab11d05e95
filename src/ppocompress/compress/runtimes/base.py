"""What a runtime does for us: export a pruned, recovered model (int8 where its plan says),
load it, and run it; one implementation per runtime (PyTorch, ONNX Runtime, OpenVINO)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ppocompress.errors import UserError

if TYPE_CHECKING:
    from torch import nn

    from ppocompress.compress.models.loading import LoadedModel
    from ppocompress.compress.ops.quantize import InputStatistics
    from ppocompress.compress.plan import Precision


class Session(Protocol):
    """A loaded model: token ids and mask in, last hidden state (encoders) or logits out."""

    vocab_size: int

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


class Runtime:
    name: str
    package: str  # the module that must be importable
    install_hint: str
    int8_kind: str  # names how its int8 computes (weights_as_served_) in a search's identity
    generates = False  # runs a causal LM with a KV cache (its Session has generate_timed)
    serves_int4 = False  # int4 weights, in a causal LM's layers and head
    float_bits = 32  # a floating-point weight as it is stored
    artifact_name: str  # what export writes in its directory, and session loads

    def missing(self) -> str | None:
        """Why this runtime cannot run here, in one line; None when it can."""
        if importlib.util.find_spec(self.package) is None:
            return f"{self.name} is not installed ({self.install_hint})"
        return None

    def require(self) -> None:
        reason = self.missing()
        if reason is not None:
            raise UserError(reason)

    def check_plan(self, model: LoadedModel) -> None:
        """A UserError when this runtime cannot serve `model`'s plan as it says."""
        from ppocompress.compress.plan import Precision

        if model.plan is not None and model.plan.uses(Precision.INT4) and not (self.serves_int4 and model.is_causal):
            raise UserError(f"{self.name} does not serve int4 weights; int4 is for decoders on openvino (--runtime openvino)")

    def export(self, model: LoadedModel, directory: Path, calibration: list[str]) -> Path:
        """Writes `model` (fp32, pruned and recovered) for this runtime into `directory`,
        int8 in the layers its plan marks; returns the artifact that `session` loads.
        Static int8 calibrates its activation ranges on `calibration`."""
        raise NotImplementedError

    def weights_as_served_(self, layer: nn.Module, precision: Precision, dense: nn.Module,
                           input_statistics: Callable[[nn.Module], dict[str, InputStatistics]]) -> nn.Module:
        """Makes `layer`'s Linear layers compute in `precision` (int8 or int4) as this
        runtime does, in place, so that a search scores a plan as it will be served;
        returns `layer` (a new module when `layer` is itself a Linear). `dense` is the model the layer
        belongs to; `input_statistics(layer)` gives calibrated input ranges, for runtimes
        that calibrate them."""
        raise NotImplementedError

    def check_artifact(self, path: Path) -> Path:
        """`path` if it looks like this runtime's artifact, else a UserError."""
        raise NotImplementedError

    def session(self, artifact: Path, threads: int | None = None) -> Session:
        raise NotImplementedError

    def size_bytes(self, artifact: Path) -> int:
        """Bytes of the served weights (tokenizer and descriptions not counted)."""
        return Path(artifact).stat().st_size


def int8_layers(model: LoadedModel) -> list[int]:
    """Indices, among the kept layers, of the layers the model's plan marks int8."""
    return [] if model.plan is None else model.plan.int8_layers()


def graph_feeds(input_ids: np.ndarray, attention_mask: np.ndarray, input_names: set[str]) -> dict[str, np.ndarray]:
    """An exported graph's inputs: ids and mask as int64, and zero token types when the
    graph takes them (encoders with segment embeddings)."""
    input_ids = np.asarray(input_ids, dtype=np.int64)
    feeds = {"input_ids": input_ids, "attention_mask": np.asarray(attention_mask, dtype=np.int64)}
    if "token_type_ids" in input_names:
        feeds["token_type_ids"] = np.zeros_like(input_ids)
    return feeds
