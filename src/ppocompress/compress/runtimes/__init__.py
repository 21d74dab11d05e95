"""The runtimes a compressed model can be served on, one registry."""

from __future__ import annotations

from ppocompress.compress.runtimes.base import Runtime, Session, int8_layers
from ppocompress.compress.runtimes.onnx_runtime import OnnxRuntime
from ppocompress.compress.runtimes.openvino_runtime import OpenVinoRuntime
from ppocompress.compress.runtimes.pytorch import TorchRuntime
from ppocompress.errors import UserError

RUNTIMES: dict[str, Runtime] = {runtime.name: runtime for runtime in (TorchRuntime(), OnnxRuntime(), OpenVinoRuntime())}
AUTO = "auto"  # --runtime: the command chooses (search/prepare.py, commands/runtime_choice.py)
CHOICES = (AUTO, *RUNTIMES)  # what --runtime accepts
REFERENCE = "torch"  # dense PyTorch fp32 on this runtime is what every speedup is against


def get_runtime(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise UserError(f"unknown runtime {name!r}; use one of {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def available_runtimes(log=None, causal: bool = False) -> list[Runtime]:
    """The runtimes that can run here (a causal LM: with a KV cache); each one that cannot
    is reported in one line."""
    usable = []
    for runtime in RUNTIMES.values():
        reason = runtime.missing() or (no_generation(runtime) if causal else None)
        if reason is None:
            usable.append(runtime)
        elif log is not None:
            log(f"skipping runtime {runtime.name}: {reason}")
    return usable


def no_generation(runtime: Runtime) -> str | None:
    """Why `runtime` cannot serve a causal LM, or None."""
    if runtime.generates:
        return None
    servable = ", ".join(name for name, r in RUNTIMES.items() if r.generates)
    return f"ppocompress does not generate with a KV cache on {runtime.name} yet; causal LMs are served on {servable}"


__all__ = ["CHOICES", "RUNTIMES", "Runtime", "Session", "available_runtimes", "get_runtime", "int8_layers", "no_generation"]
