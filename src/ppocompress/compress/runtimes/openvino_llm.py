"""Causal LMs on OpenVINO: served by OpenVINO GenAI's LLMPipeline from a stateful IR, each
layer's weights in the precision its plan gives (float, int8 or int4), compressed by NNCF.

Float layers are stored in fp16 and computed at the CPU's default inference precision
(bf16 where the CPU has it). int8 is asymmetric with a scale per output channel; int4 is
asymmetric with a scale per group of inputs, fitted to calibration text where there is
some (AWQ, scale estimation; ops/weight_compression.py computes the same in float).
The per-layer choice is one NNCF pass per precision, every other weight in its ignored
scope."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ppocompress.errors import UserError

if TYPE_CHECKING:
    import openvino as ov

    from ppocompress.compress.models.loading import LoadedModel
    from ppocompress.compress.plan import CompressionPlan

# The traced graph names nodes after module paths; "__module.model" is the trace wrapper's.
_LAYER = r"__module\.model\.model\.layers\.{index}\..*"
_HEAD = (r"__module\.model\.lm_head/.*", r"__module\.model\.model\.embed_tokens/.*")


@contextlib.contextmanager
def quiet_nncf() -> Iterator[None]:
    """NNCF's log lines (one for every node it skips) and its progress bars kept off the
    terminal, which ours own."""
    logging.getLogger("nncf").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def store_floats_in_fp16(graph: ov.Model) -> None:
    """Marks `graph`'s float weights to be stored in fp16, before NNCF compresses any:
    ov.save_model does it only in a graph with no compressed or quantized weights, so a
    mixed plan would keep its float layers in fp32, twice the bytes priced and read."""
    from openvino._offline_transformations import compress_model_transformation

    compress_model_transformation(graph)


def export_llm(model: LoadedModel, directory: Path, calibration: list[str]) -> Path:
    """Writes `model` as an LLMPipeline folder in `directory`, its weights as its plan says
    (int4 data-aware on `calibration` when there is text: AWQ and scale estimation)."""
    from ppocompress.compress.plan import CompressionPlan

    plan = model.plan or CompressionPlan.dense(model.model.config.num_hidden_layers)
    return _export(model, directory, calibration, lambda graph, dataset: compress_weights(graph, plan, dataset))


def _export(model: LoadedModel, directory: Path, calibration: list[str], compress) -> Path:
    """The one way to an LLMPipeline folder: traced, weights compressed by
    `compress(graph, calibration dataset)` while the cache is still explicit (data-aware
    compression runs the graph), made stateful, saved with tokenizers and configs."""
    from ppocompress.compress.files.openvino_genai_folder import make_stateful, save_openvino_genai, trace

    graph = trace(model.model)
    store_floats_in_fp16(graph)
    graph = compress(graph, calibration_dataset(graph, model.tokenizer, calibration))
    make_stateful(graph)
    return save_openvino_genai(model, graph, Path(directory))


def calibration_dataset(graph: ov.Model, tokenizer, texts: list[str]):
    """NNCF's dataset of calibration passages for a traced (not yet stateful) graph; None
    without text."""
    import nncf

    from ppocompress.compress.data.calibration import MAX_LENGTH
    from ppocompress.compress.files.openvino_genai_folder import step_feeds
    from ppocompress.compress.ops.weight_compression import AWQ_PASSAGES

    if not texts:
        return None
    samples = [tokenizer(text, truncation=True, max_length=MAX_LENGTH, return_tensors="np")["input_ids"]
               for text in texts[:AWQ_PASSAGES]]
    return nncf.Dataset(samples, lambda ids: step_feeds(graph, ids))


def compress_weights(graph: ov.Model, plan: CompressionPlan, dataset=None) -> ov.Model:
    """int8 and int4 weights where `plan` puts them (the head: output head and, tied to it,
    the input embedding), the rest left in floating point; int4 data-aware (AWQ, scale
    estimation) with a dataset."""
    import nncf

    from ppocompress.compress.plan import Precision

    kept = len(plan.kept_layers())
    passes = {Precision.INT8: dict(mode=nncf.CompressWeightsMode.INT8_ASYM),
              # all_layers: the head too when the plan says so (NNCF keeps it in int8 otherwise);
              # a width no group of at least MIN_INT4_GROUP_SIZE divides stays in floating point.
              Precision.INT4: dict(_int4_settings(dataset), ratio=1.0, all_layers=True, backup_mode=nncf.BackupMode.NONE)}
    for precision, settings in passes.items():
        chosen = set(plan.layers_in(precision))
        if not chosen and plan.head != precision:
            continue
        ignored = [_LAYER.format(index=i) for i in range(kept) if i not in chosen]
        if plan.head != precision:
            ignored += _HEAD
        with quiet_nncf():
            graph = nncf.compress_weights(graph, ignored_scope=nncf.IgnoredScope(patterns=ignored, validate=False), **settings)
    return graph


def _int4_settings(dataset) -> dict:
    """NNCF's int4 as ppocompress asks for it: asymmetric in groups of INT4_GROUP_SIZE inputs
    (smaller where a width needs it, see weight_compression.int4_group_size), data-aware with a dataset."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    from ppocompress.compress.ops.weight_compression import AWQ_PASSAGES, INT4_GROUP_SIZE, MIN_INT4_GROUP_SIZE

    settings = dict(mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=INT4_GROUP_SIZE,
                    advanced_parameters=AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST,
                                                                      min_adjusted_group_size=MIN_INT4_GROUP_SIZE))
    if dataset is not None:
        settings.update(dataset=dataset, awq=True, scale_estimation=True, subset_size=AWQ_PASSAGES)
    return settings


class OpenVinoLlmSession:
    """An LLMPipeline folder: logits of whole sequences (the stateful model, its cache
    reset for each batch) for quality, and LLMPipeline's own timings for speed."""

    def __init__(self, artifact: Path, threads: int | None):
        import openvino as ov

        self.folder = Path(artifact).parent
        self.config = {"NUM_STREAMS": 1} | ({"INFERENCE_NUM_THREADS": threads} if threads is not None else {})
        self._model = ov.Core().read_model(str(artifact))
        self.vocab_size = self._model.output("logits").get_partial_shape()[-1].get_length()
        # Each compiled on first use: a timing needs only the pipeline, a quality only the
        # request, and compiling the one not used would double a timing process's start.
        self._request = None
        self._pipeline = None

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Logits of every position (right padding: positions count from the first token)."""
        input_ids = np.asarray(input_ids, dtype=np.int64)
        batch, length = input_ids.shape
        if self._request is None:
            import openvino as ov

            self._request = ov.Core().compile_model(self._model, "CPU", self.config).create_infer_request()
        self._request.reset_state()
        feeds = {"input_ids": input_ids, "attention_mask": np.asarray(attention_mask, dtype=np.int64),
                 "position_ids": np.broadcast_to(np.arange(length, dtype=np.int64), (batch, length)).copy(),
                 "beam_idx": np.arange(batch, dtype=np.int32)}
        return self._request.infer(feeds)["logits"].copy()

    def generate(self, input_ids: np.ndarray, new_tokens: int, exactly: bool = False):
        """Greedy generation of up to (exactly: exactly) `new_tokens` tokens after the
        prompt, by LLMPipeline."""
        import openvino as ov
        import openvino_genai

        if self._pipeline is None:
            self._pipeline = openvino_genai.LLMPipeline(str(self.folder), "CPU", **self.config)
        config = openvino_genai.GenerationConfig()
        config.max_new_tokens = new_tokens
        if exactly:  # past the end-of-sequence token, as a timing needs
            config.min_new_tokens = new_tokens
        config.do_sample = False
        config.apply_chat_template = False  # the prompt is token ids, not a chat
        ids = np.asarray(input_ids, dtype=np.int64)
        inputs = openvino_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        return self._pipeline.generate(inputs, config)

    def greedy_tokens(self, input_ids: np.ndarray, new_tokens: int) -> list[int]:
        """Up to `new_tokens` greedy tokens after the prompt (one sequence)."""
        return list(self.generate(input_ids, new_tokens).tokens[0])

    def generate_timed(self, input_ids: np.ndarray, new_tokens: int) -> tuple[float, float]:
        """(prefill s, decode s) as LLMPipeline measures them: the time to the first token,
        and its time per output token after the first, times `new_tokens` (so that decode
        per token is what GenAI's users read as TPOT)."""
        if len(input_ids) != 1:
            raise UserError("LLMPipeline generation is timed at batch 1")
        metrics = self.generate(input_ids, new_tokens, exactly=True).perf_metrics
        return metrics.get_ttft().mean / 1000.0, metrics.get_tpot().mean * new_tokens / 1000.0


def export_nncf_mixed(model: LoadedModel, directory: Path, ratio: float, calibration: list[str]) -> Path:
    """NNCF's own mixed precision, the alternative a searched plan is measured against:
    int4 on the share `ratio` of the layers' weights that its data-aware sensitivity ranks
    least sensitive, int8 on the rest and on the embedding and head, AWQ and scale
    estimation on `calibration`."""
    import nncf

    if model.plan is not None:
        raise UserError("NNCF's mixed precision is applied to the dense model")

    def mixed(graph, dataset):
        with quiet_nncf():
            if ratio > 0:
                return nncf.compress_weights(graph, ratio=ratio, **_int4_settings(dataset),
                                             sensitivity_metric=nncf.SensitivityMetric.HESSIAN_INPUT_ACTIVATION)
            return nncf.compress_weights(graph, mode=nncf.CompressWeightsMode.INT8_ASYM)  # NNCF reads ratio 0 as 1

    return _export(model, directory, calibration, mixed)
