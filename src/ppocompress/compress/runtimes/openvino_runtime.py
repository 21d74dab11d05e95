"""OpenVINO. An encoder: the exported graph converted to OpenVINO IR; layers not marked int8
run at the CPU's default inference precision (bf16 where the CPU has it, else fp32), int8
layers are NNCF static int8 (transformer preset) with activation ranges calibrated on text.
The per-layer choice goes through NNCF's ignored scope: the nodes of every layer the plan
keeps in floating point are ignored, found by the family's graph layer names.

A causal LM: a folder OpenVINO GenAI's LLMPipeline generates from, each layer's weights
int8 or int4 where its plan says (openvino_llm.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ppocompress.compress.files.genai_layout import is_llm_artifact
from ppocompress.compress.runtimes.base import Runtime, graph_feeds, int8_layers
from ppocompress.compress.runtimes.openvino_llm import OpenVinoLlmSession, export_llm, quiet_nncf, store_floats_in_fp16
from ppocompress.errors import UserError

if TYPE_CHECKING:
    from ppocompress.compress.models.loading import LoadedModel

STATIC_CALIBRATION_PASSAGES = 300  # NNCF's default subset size
_VOCAB_KEY = ["ppocompress", "vocab_size"]


class OpenVinoSession:
    def __init__(self, artifact: Path, threads: int | None):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(artifact))
        if not model.has_rt_info(_VOCAB_KEY):
            raise UserError(f"{artifact} has no vocab_size information; export it with ppocompress")
        self.vocab_size = int(model.get_rt_info(_VOCAB_KEY).astype(str))
        config = {"NUM_STREAMS": 1}  # one batch at a time, all threads on it
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.input_names = {i.get_any_name() for i in self.compiled.inputs}

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.request.infer(graph_feeds(input_ids, attention_mask, self.input_names))[0].copy()


class OpenVinoRuntime(Runtime):
    name = "openvino"
    package = "openvino"
    install_hint = "pip install openvino openvino-genai nncf"
    int8_kind = "static"  # input ranges calibrated on text (an encoder's; a decoder's int8 is weights only)
    generates = True  # a causal LM through OpenVINO GenAI
    serves_int4 = True
    float_bits = 16  # IR weights are saved in fp16
    artifact_name = "openvino_model.xml"  # what sentence-transformers and optimum-intel look for

    def missing(self) -> str | None:
        reason = super().missing()
        if reason is None:
            import openvino as ov

            if "CPU" not in ov.Core().available_devices:
                return "openvino has no CPU device on this machine"
        return reason

    def weights_as_served_(self, layer, precision, dense, input_statistics):
        from ppocompress.compress.models.families import adapter_for, family_of
        from ppocompress.compress.ops.quantize import simulate_int8_
        from ppocompress.compress.ops.weight_compression import simulate_weight_compression_
        from ppocompress.compress.plan import Precision

        if family_of(dense).causal:  # weights only, as NNCF compresses an LLM's; int4 data-aware
            if precision == Precision.INT8:
                return simulate_weight_compression_(layer, bits=8)
            ffn_output = adapter_for(dense).ffn_output(layer)
            awq = frozenset(name for name, module in layer.named_modules() if module is ffn_output)
            return simulate_weight_compression_(layer, 4, input_statistics(layer), awq)
        if precision != Precision.INT8:
            raise UserError(f"the openvino runtime serves an encoder's weights in int8, not {precision.value}")
        return simulate_int8_(layer, input_statistics(layer))

    def export(self, model: LoadedModel, directory: Path, calibration: list[str]) -> Path:
        import openvino as ov

        from ppocompress.compress.files.onnx_export import export_onnx

        self.check_plan(model)
        if model.is_causal:
            return export_llm(model, Path(directory), calibration)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        onnx_path = export_onnx(model.model, model.tokenizer, directory / "graph.onnx")
        graph = ov.convert_model(str(onnx_path))
        onnx_path.unlink()
        store_floats_in_fp16(graph)
        layers = int8_layers(model)
        if layers:
            graph = _quantize(graph, model, layers, calibration)
        graph.set_rt_info(str(model.model.config.vocab_size), _VOCAB_KEY)
        path = directory / self.artifact_name
        ov.save_model(graph, str(path))
        return path

    def check_artifact(self, path: Path) -> Path:
        if not path.is_file() or path.suffix != ".xml" or not path.with_suffix(".bin").is_file():
            raise UserError(f"{path} is not an OpenVINO IR (.xml beside its .bin); "
                            "the openvino runtime runs one exported by ppocompress")
        return path

    def session(self, artifact: Path, threads: int | None = None) -> OpenVinoSession | OpenVinoLlmSession:
        artifact = self.check_artifact(Path(artifact))
        if is_llm_artifact(artifact):
            return OpenVinoLlmSession(artifact, threads)
        return OpenVinoSession(artifact, threads)

    def size_bytes(self, artifact: Path) -> int:
        return Path(artifact).with_suffix(".bin").stat().st_size  # the .xml describes the graph


def _quantize(graph, model: LoadedModel, layers: list[int], calibration: list[str]):
    """NNCF static int8 of `layers` (indices among the kept layers), calibrated on text."""
    import nncf

    from ppocompress.compress.data.calibration import MAX_LENGTH
    from ppocompress.compress.models.families import family

    if not calibration:
        raise UserError("static int8 needs calibration text to set its activation ranges")
    floating = [i for i in range(len(model.plan.kept_layers())) if i not in set(layers)]
    graph_family = family(model.model_type)
    ignored = nncf.IgnoredScope(patterns=[f".*{graph_family.graph_layer_pattern(i).pattern}.*" for i in floating], validate=False)
    texts = calibration[:STATIC_CALIBRATION_PASSAGES]
    samples = [model.tokenizer(text, truncation=True, max_length=MAX_LENGTH, return_tensors="np") for text in texts]
    inputs = {i.get_any_name() for i in graph.inputs}

    def feeds(sample) -> dict:
        return {name: np.asarray(sample.get(name, np.zeros_like(sample["input_ids"])), dtype=np.int64) for name in inputs}

    with quiet_nncf():
        return nncf.quantize(graph, nncf.Dataset(samples, feeds), model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(samples), ignored_scope=ignored)

