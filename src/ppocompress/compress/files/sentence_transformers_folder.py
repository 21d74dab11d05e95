"""A delivered encoder folder that sentence-transformers loads in one line:
`SentenceTransformer(path, backend="onnx")` or `backend="openvino"`.

Beside ppocompress's own files (model.safetensors, compression.json, tokenizer) it holds
config.json (the dense model's config, which optimum reads for the model type),
modules.json with the Transformer -> mean Pooling -> Normalize modules (the pooling the
tool measures quality with), onnx/model.onnx (ONNX Runtime, dynamic int8 where the plan
says) and openvino/openvino_model.xml (OpenVINO, static int8 where the plan says). The
pruned PyTorch weights have per-layer shapes that a plain Hugging Face config cannot
describe, so the PyTorch backend is for `ppocompress.load`, not for sentence-transformers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ppocompress.compress.measure.quality import usable_positions
from ppocompress.compress.models.loading import LoadedModel
from ppocompress.compress.runtimes import get_runtime

ST_MAX_SEQ_LENGTH = 256  # what all-MiniLM-L6-v2's own sentence-transformers config says
FOLDERS = {"onnxruntime": "onnx", "openvino": "openvino"}  # runtime -> sub-folder sentence-transformers reads


def write_sentence_transformers_files(model: LoadedModel, directory: Path, calibration: list[str],
                                      served: tuple[str, Path] | None = None) -> None:
    """Adds the sentence-transformers files and the ONNX and OpenVINO models to a saved
    model's `directory`. `model` is the fp32 pruned, recovered model (int8 where its plan
    says is applied by each runtime's export); served=(runtime, artifact) reuses an
    artifact already exported for that runtime instead of exporting it again."""
    if model.is_causal:
        return  # sentence embeddings are for encoders
    directory = Path(directory)
    hidden = model.model.config.hidden_size
    _write(directory / "config.json", {**model.base_config, "architectures": [type(model.model).__name__]})
    _write(directory / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    _write(directory / "sentence_bert_config.json",
           {"max_seq_length": min(ST_MAX_SEQ_LENGTH, usable_positions(model.model)), "do_lower_case": False})
    _write(directory / "1_Pooling" / "config.json", {"word_embedding_dimension": hidden, "pooling_mode_cls_token": False,
                                                     "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
                                                     "pooling_mode_mean_sqrt_len_tokens": False})
    (directory / "2_Normalize").mkdir(exist_ok=True)
    for runtime, folder in FOLDERS.items():
        target = directory / folder
        if served is not None and served[0] == runtime:
            target.mkdir(exist_ok=True)
            for file in served[1].parent.iterdir():
                shutil.copy2(file, target / file.name)
        elif get_runtime(runtime).missing() is None:
            get_runtime(runtime).export(model, target, calibration)


def served_artifact(directory: Path, runtime: str) -> Path:
    """What a delivered folder serves `runtime` from: the folder itself for PyTorch (the
    exact pruned model), its onnx/ or openvino/ model otherwise."""
    if runtime not in FOLDERS:
        return Path(directory)
    return Path(directory) / FOLDERS[runtime] / get_runtime(runtime).artifact_name


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
