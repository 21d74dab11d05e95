"""PyTorch eager: the reference every speedup is measured against (fp32), and torch's own
int8 (dynamic for encoders, int8 weights only for causal LMs; see ops/quantize.py)."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ppocompress.compress.files.description import is_saved_model
from ppocompress.compress.runtimes.base import Runtime
from ppocompress.errors import UserError

if TYPE_CHECKING:
    from ppocompress.compress.models.loading import LoadedModel


class TorchSession:
    def __init__(self, artifact: Path, threads: int | None):
        import torch

        from ppocompress.compress.files.saved import load
        from ppocompress.compress.models.loading import load_model

        if threads is not None:
            torch.set_num_threads(threads)
        self._use(load(artifact) if is_saved_model(artifact) else load_model(str(artifact)))

    @classmethod
    def of(cls, loaded: LoadedModel) -> "TorchSession":
        """A session on a model in memory."""
        session = cls.__new__(cls)
        session._use(loaded)
        return session

    def _use(self, loaded: LoadedModel) -> None:
        from ppocompress.compress.files.onnx_export import takes_token_type_ids

        self.loaded = loaded
        self.model = loaded.model.eval()
        self.vocab_size = int(self.model.config.vocab_size)
        self._token_types = takes_token_type_ids(self.model)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch

        inputs: dict = {"input_ids": torch.from_numpy(np.asarray(input_ids, dtype=np.int64)),
                        "attention_mask": torch.from_numpy(np.asarray(attention_mask, dtype=np.int64))}
        if self._token_types:
            inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        with torch.inference_mode():
            if self.loaded.is_causal:
                return self.model(**inputs, use_cache=False).logits.float().numpy()
            return self.model(**inputs).last_hidden_state.float().numpy()

    def greedy_tokens(self, input_ids: np.ndarray, new_tokens: int) -> list[int]:
        """Up to `new_tokens` greedy tokens after the prompt (one sequence), by HF generate."""
        import torch

        ids = torch.from_numpy(np.asarray(input_ids, dtype=np.int64))
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                                      pad_token_id=self.loaded.tokenizer.pad_token_id)
        return out[0, ids.shape[1]:].tolist()

    def generate_timed(self, input_ids: np.ndarray, new_tokens: int) -> tuple[float, float]:
        """(prefill s, decode s): the prompt in one pass, then `new_tokens` greedy tokens one
        at a time through the KV cache, as a generation loop runs them."""
        import torch

        ids = torch.from_numpy(np.asarray(input_ids, dtype=np.int64))
        with torch.inference_mode():
            start = time.perf_counter()
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
            prefilled = time.perf_counter()
            for _ in range(new_tokens):
                out = self.model(input_ids=out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values, use_cache=True)
            end = time.perf_counter()
        return prefilled - start, end - prefilled


class TorchRuntime(Runtime):
    name = "torch"
    package = "torch"
    install_hint = "pip install torch==2.13.0"
    int8_kind = "torch"  # torch's own dynamic int8 kernels
    generates = True
    artifact_name = "model"

    def weights_as_served_(self, layer, precision, dense, input_statistics):
        from ppocompress.compress.ops.apply import torch_int8_for
        from ppocompress.compress.plan import Precision

        if precision != Precision.INT8:
            raise UserError(f"the torch runtime serves int8 weights, not {precision.value}")
        return torch_int8_for(dense)(layer)

    def export(self, model: LoadedModel, directory: Path, calibration: list[str]) -> Path:
        from ppocompress.compress.files.saved import save
        from ppocompress.compress.ops.apply import quantize_planned_layers
        from ppocompress.compress.plan import Precision

        # No check_plan: this folder is also the reloadable copy of a plan served elsewhere,
        # and holds its int4 layers in fp32 (restructure).
        if model.plan is not None and model.plan.uses(Precision.INT8):
            model = copy.copy(model)
            model.model = copy.deepcopy(model.model)
            quantize_planned_layers(model.model, model.plan)
        return save(model, Path(directory) / self.artifact_name)

    def check_artifact(self, path: Path) -> Path:
        if not path.is_dir():
            raise UserError(f"{path} is not a model directory; "
                            "the torch runtime runs a directory saved by ppocompress or save_pretrained")
        return path

    def session(self, artifact: Path, threads: int | None = None) -> TorchSession:
        return TorchSession(self.check_artifact(Path(artifact)), threads)

    def size_bytes(self, artifact: Path) -> int:
        return (Path(artifact) / "model.safetensors").stat().st_size
