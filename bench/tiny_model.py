"""A tiny random-weight Llama for measuring serving overhead, not model quality.

With SmolLM2 on one CPU core, prefill alone takes ~360 ms and its run-to-run
noise (±20 ms) hides a millisecond of serving overhead. This model (2 layers,
hidden 128, head_dim 64 — vLLM's CPU attention needs head_dim >= 32) makes an
engine step cost a few milliseconds, so what differs between raw vLLM and
Paddock is the serving path. It borrows SmolLM2's tokenizer (prepared by
``paddock prepare``); its answers are noise.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def make_tiny_llama(target: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Create the model folder once (idempotent); return it."""
    if (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from_config = LlamaConfig(
        vocab_size=49152,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    LlamaForCausalLM(from_config).save_pretrained(staging, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, staging / name)
    staging.rename(target)
    return target


def prepared_tiny_llama(root: Path) -> Path:
    """The tiny model in ``root``'s model cache (``.cache/paddock``), made once from SmolLM2's tokenizer."""
    from service.config.loader import default_config
    from service.models.sources import resolve

    cache = root / ".cache" / "paddock"
    smollm2 = resolve(default_config().model_by_name()["smollm2-135m-instruct"], cache, print)
    return make_tiny_llama(cache / "bench-tiny-llama", smollm2)
