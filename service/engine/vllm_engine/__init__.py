"""The vLLM adapter: the only package that imports vLLM.

``engine.py`` is the ``Engine`` for one model; ``args.py`` maps a model entry
to vLLM's engine arguments; ``guard.py`` checks prompts before they reach the
engine; ``results.py`` turns vLLM's errors and streams into OpenAI's shape.
"""

from service.engine.vllm_engine.engine import VLLMEngine

__all__ = ["VLLMEngine"]
