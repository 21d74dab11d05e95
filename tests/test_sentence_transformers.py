"""The delivered folder loads in sentence-transformers with one line, on ONNX Runtime and
on OpenVINO, and encodes as ppocompress's own runtimes do; ppocompress.load still
rebuilds the PyTorch model from the same folder."""

from __future__ import annotations

import pytest
import torch
from sentence_transformers import SentenceTransformer

import ppocompress
from compress_models import save_tiny_model
from ppocompress.compress import CompressionPlan, LayerPlan, Precision, apply_plan, load_model
from ppocompress.compress.files.sentence_transformers_folder import (
    write_sentence_transformers_files,
)
from ppocompress.compress.measure.quality import embed, embed_session
from ppocompress.compress.runtimes import get_runtime

SENTENCES = ["the cat sat on the mat", "a much longer sentence about rivers and the cities built beside them", "short",
             "prices rose again this spring, the third time in a year"]
CALIBRATION = [f"passage {i} about {w} and the way it shapes the day" for i, w in
               enumerate(["rain", "maps", "songs", "bread", "ships", "clocks", "trees", "coins"] * 4)]


@pytest.fixture(scope="module", params=["bert", "mpnet"])
def delivered(request, tmp_path_factory):
    """A tiny encoder pruned differently per layer, int8 in one layer, saved as a delivery is."""
    root = tmp_path_factory.mktemp("st")
    dense = load_model(str(save_tiny_model(request.param, root / "dense")))
    plan = CompressionPlan([LayerPlan(keep_groups=[0, 2], weights=Precision.INT8), LayerPlan(keep_neurons=list(range(20))),
                            LayerPlan(drop=True)])
    model = apply_plan(dense, plan, quantize=False)
    directory = get_runtime("torch").export(model, root, [])  # int8 layers quantized, reloads with ppocompress.load
    write_sentence_transformers_files(model, directory, CALIBRATION)
    return directory, model


@pytest.mark.parametrize("backend, runtime, artifact", [("onnx", "onnxruntime", "onnx/model.onnx"),
                                                        ("openvino", "openvino", "openvino/openvino_model.xml")])
def test_sentence_transformers_encodes_as_ppocompress_does(delivered, backend, runtime, artifact, monkeypatch):
    """Loaded exactly as README tells users to, with nothing patched."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    directory, model = delivered
    st = SentenceTransformer(str(directory), backend=backend, device="cpu")
    theirs = torch.from_numpy(st.encode(SENTENCES))
    ours = embed_session(get_runtime(runtime).session(directory / artifact), model.tokenizer, SENTENCES)
    assert theirs.shape == ours.shape == (len(SENTENCES), model.model.config.hidden_size)
    assert torch.allclose(theirs, ours, atol=1e-4)
    # And both stay close to the PyTorch model the folder also rebuilds (int8 in one layer).
    reloaded = ppocompress.load(directory)
    assert reloaded.plan == model.plan
    assert (embed(reloaded.model, reloaded.tokenizer, SENTENCES) * theirs).sum(1).min() > 0.9
