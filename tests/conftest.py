"""Suite-wide settings (property tests draw the same examples on every machine) and fixtures."""

import pytest
from hypothesis import settings

from compress_models import PASSAGES, SHORT_LINES, save_tiny_model
from ppocompress.compress.models.loading import load_model

# derandomize: examples come from a fixed seed, so a newcomer's run draws what CI drew;
# no example database, so nothing a previous run found changes the next one.
settings.register_profile("repeatable", derandomize=True, database=None, print_blob=True)
settings.load_profile("repeatable")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random saved-and-loaded model of a family, built once per family and session."""
    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_model(str(save_tiny_model(family, tmp_path_factory.mktemp(family))))
        return cache[family]

    return get


@pytest.fixture(scope="session")
def job_inputs(tmp_path_factory):
    """(a tiny saved BERT's folder, a text file): what a compress job on a tiny model reads."""
    root = tmp_path_factory.mktemp("job")
    text = root / "text.txt"
    text.write_text("\n".join(PASSAGES))
    return save_tiny_model("bert", root / "bert"), text


@pytest.fixture
def without_ray(monkeypatch):
    """Imports of ray fail, as where the extra is not installed."""
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random BERT saved as a model folder, for the commands' tests."""
    return save_tiny_model("bert", tmp_path_factory.mktemp("bert"))


@pytest.fixture()
def text_file(tmp_path):
    """A text file of SHORT_LINES, for a command's --text."""
    path = tmp_path / "text.txt"
    path.write_text("\n".join(SHORT_LINES))
    return path
