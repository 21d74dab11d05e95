"""ONNX Runtime: the fp32 graph, dynamic int8 (per-channel weights) in the planned layers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ppocompress.compress.runtimes.base import Runtime, graph_feeds, int8_layers
from ppocompress.errors import UserError

if TYPE_CHECKING:
    import onnxruntime as ort

    from ppocompress.compress.models.loading import LoadedModel


def onnx_session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with intra-op threads that sleep when idle.

    Spinning threads (ORT's default) take CPU from whatever runs next, which distorts
    interleaved timings of other runtimes.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(_check_onnx(Path(path))), options, providers=["CPUExecutionProvider"])


def _check_onnx(path: Path) -> Path:
    if not path.is_file() or path.suffix != ".onnx":
        raise UserError(f"{path} is not an .onnx file; the onnxruntime runtime runs a file exported by ppocompress")
    return path


def onnx_outputs(session_or_path: object, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Runs the graph's single output; token_type_ids are zeros if the graph takes them.

    Pass a session from onnx_session to run many batches without reloading the file.
    """
    session = onnx_session(session_or_path) if isinstance(session_or_path, (str, Path)) else session_or_path
    return session.run(None, graph_feeds(input_ids, attention_mask, {i.name for i in session.get_inputs()}))[0]


class OnnxSession:
    def __init__(self, artifact: Path, threads: int | None):
        self.session = onnx_session(artifact, threads)
        vocab_size = self.session.get_modelmeta().custom_metadata_map.get("vocab_size")
        if vocab_size is None:
            raise UserError(f"{artifact} has no vocab_size metadata; export it with ppocompress")
        self.vocab_size = int(vocab_size)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return onnx_outputs(self.session, input_ids, attention_mask)


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    package = "onnxruntime"
    install_hint = "pip install onnxruntime"
    int8_kind = "dynamic"  # input ranges measured on every call
    artifact_name = "model.onnx"

    def weights_as_served_(self, layer, precision, dense, input_statistics):
        from ppocompress.compress.ops.quantize import simulate_int8_
        from ppocompress.compress.plan import Precision

        if precision != Precision.INT8:
            raise UserError(f"the onnxruntime runtime serves int8 weights, not {precision.value}")
        return simulate_int8_(layer)

    def export(self, model: LoadedModel, directory: Path, calibration: list[str]) -> Path:
        from ppocompress.compress.files.onnx_export import export_onnx, quantize_onnx_int8

        self.check_plan(model)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        layers = int8_layers(model)
        if not layers:
            return export_onnx(model.model, model.tokenizer, directory / self.artifact_name)
        fp32 = export_onnx(model.model, model.tokenizer, directory / "fp32.onnx")
        quantized = quantize_onnx_int8(fp32, directory / self.artifact_name, layers, model.model_type)
        fp32.unlink()
        return quantized

    def check_artifact(self, path: Path) -> Path:
        return _check_onnx(path)

    def session(self, artifact: Path, threads: int | None = None) -> OnnxSession:
        return OnnxSession(self.check_artifact(Path(artifact)), threads)
