"""Causal LMs on OpenVINO: served by OpenVINO GenAI's LLMPipeline from a stateful IR, each
layer's weights in the precision its plan gives (float, int8 or int4), compressed by NNCF.

Float layers are stored in fp16 and computed at the CPU's default inference precision
(bf16 where the CPU has it). int8 is asymmetric with a scale per output channel; int4 is
asymmetric with a scale per group of inputs, as NNCF's data-free weight compression does.
The per-layer choice is one NNCF pass per precision, every other weight in its ignored
scope."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ppocompress.errors import UserError

if TYPE_CHECKING:
    import openvino as ov

    from ppocompress.compress.models.loading import LoadedModel
    from ppocompress.compress.plan import CompressionPlan

INT4_GROUP_SIZE = 64  # inputs per int4 scale; where a width is not a multiple, NNCF takes a smaller divisor
_MIN_INT4_GROUP_SIZE = 8
# The traced graph names nodes after module paths; "__module.model" is the trace wrapper's.
_LAYER = r"__module\.model\.model\.layers\.{index}\..*"
_HEAD = (r"__module\.model\.lm_head/.*", r"__module\.model\.model\.embed_tokens/.*")


def is_llm_artifact(artifact: Path) -> bool:
    """Whether `artifact` is the model of an LLMPipeline folder (beside its tokenizer IR)."""
    from ppocompress.compress.files.openvino_genai_folder import TOKENIZER_FILE

    return (Path(artifact).parent / TOKENIZER_FILE).is_file()


def export_llm(model: LoadedModel, directory: Path) -> Path:
    """Writes `model` as an LLMPipeline folder in `directory`, its weights as its plan says."""
    from ppocompress.compress.files.openvino_genai_folder import save_openvino_genai, trace
    from ppocompress.compress.plan import CompressionPlan

    plan = model.plan or CompressionPlan.dense(model.model.config.num_hidden_layers)
    graph = compress_weights(trace(model.model), plan)
    return save_openvino_genai(model, graph, Path(directory))


def compress_weights(graph: ov.Model, plan: CompressionPlan) -> ov.Model:
    """int8 and int4 weights where `plan` puts them (the head: output head and, tied to it,
    the input embedding), the rest left in floating point."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    from ppocompress.compress.plan import Precision

    logging.getLogger("nncf").setLevel(logging.ERROR)
    kept = len(plan.kept_layers())
    passes = {Precision.INT8: dict(mode=nncf.CompressWeightsMode.INT8_ASYM),
              # all_layers: the head too when the plan says so (NNCF keeps it in int8 otherwise).
              Precision.INT4: dict(mode=nncf.CompressWeightsMode.INT4_ASYM, ratio=1.0, group_size=INT4_GROUP_SIZE,
                                   all_layers=True, backup_mode=nncf.BackupMode.NONE,
                                   advanced_parameters=AdvancedCompressionParameters(
                                       group_size_fallback_mode=GroupSizeFallbackMode.ADJUST,
                                       min_adjusted_group_size=_MIN_INT4_GROUP_SIZE))}
    for precision, settings in passes.items():
        chosen = set(plan.layers_in(precision))
        if not chosen and plan.head != precision:
            continue
        ignored = [_LAYER.format(index=i) for i in range(kept) if i not in chosen]
        if plan.head != precision:
            ignored += _HEAD
        # NNCF draws its own progress bars; ours own the terminal.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            graph = nncf.compress_weights(graph, ignored_scope=nncf.IgnoredScope(patterns=ignored, validate=False), **settings)
    return graph


class OpenVinoLlmSession:
    """An LLMPipeline folder: logits of whole sequences (the stateful model, its cache
    reset for each batch) for quality, and LLMPipeline's own timings for speed."""

    def __init__(self, artifact: Path, threads: int | None):
        import openvino as ov

        self.folder = Path(artifact).parent
        self.config = {"NUM_STREAMS": 1} | ({"INFERENCE_NUM_THREADS": threads} if threads is not None else {})
        model = ov.Core().read_model(str(artifact))
        self.vocab_size = model.output("logits").get_partial_shape()[-1].get_length()
        self.request = ov.Core().compile_model(model, "CPU", self.config).create_infer_request()
        self._pipeline = None

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Logits of every position (right padding: positions count from the first token)."""
        input_ids = np.asarray(input_ids, dtype=np.int64)
        batch, length = input_ids.shape
        self.request.reset_state()
        feeds = {"input_ids": input_ids, "attention_mask": np.asarray(attention_mask, dtype=np.int64),
                 "position_ids": np.broadcast_to(np.arange(length, dtype=np.int64), (batch, length)).copy(),
                 "beam_idx": np.arange(batch, dtype=np.int32)}
        return self.request.infer(feeds)["logits"].copy()

    def generate(self, input_ids: np.ndarray, new_tokens: int):
        """Greedy generation of exactly `new_tokens` tokens after the prompt, by LLMPipeline."""
        import openvino as ov
        import openvino_genai

        if self._pipeline is None:
            self._pipeline = openvino_genai.LLMPipeline(str(self.folder), "CPU", **self.config)
        config = openvino_genai.GenerationConfig()
        config.max_new_tokens = config.min_new_tokens = new_tokens
        config.do_sample = False
        config.apply_chat_template = False  # the prompt is token ids, not a chat
        ids = np.asarray(input_ids, dtype=np.int64)
        inputs = openvino_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        return self._pipeline.generate(inputs, config)

    def generate_timed(self, input_ids: np.ndarray, new_tokens: int) -> tuple[float, float]:
        """(prefill s, decode s) as LLMPipeline measures them: the time to the first token,
        and its time per output token after the first, times `new_tokens` (so that decode
        per token is what GenAI's users read as TPOT)."""
        if len(input_ids) != 1:
            raise UserError("LLMPipeline generation is timed at batch 1")
        metrics = self.generate(input_ids, new_tokens).perf_metrics
        return metrics.get_ttft().mean / 1000.0, metrics.get_tpot().mean * new_tokens / 1000.0
