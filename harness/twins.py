"""Tiny random-weight twins of the seed model families, generated offline into the cache.

Each twin has its family's architecture (the real ``config.json`` shape, shrunk: float32,
2 layers, hidden 128, head_dim >= 32, 4 experts) and its family's tokenizer and chat
template wherever one can be built offline; otherwise a named substitute (SmolLM2's
tokenizer with the family's chat template and special tokens added). Its weights are
random, so its answers are noise: the twins test that Paddock serves each architecture,
tokenizer and parser for real, not what a model says.

Nothing here is committed as weights: ``make_twin`` writes ``<cache>/twins/<family>/`` once
(a staging folder renamed into place, so a crashed run never leaves a half twin) and
reuses it afterwards. ``python -m harness.twins [--check]`` makes them all (and checks
each one loads and generates with plain vLLM).

Tokenizers:

- gpt-oss: the real ``o200k_harmony`` encoding. ``openai_harmony`` (package ``oss-harmony``)
  carries the vocabulary offline; its byte tokens and special tokens are turned into a Hugging
  Face ``tokenizer.json`` (what the gpt-oss repositories ship and vLLM loads; vLLM renders
  gpt-oss chats with harmony itself, not with a Jinja template).
- Mistral: the real Tekken tokenizer (``mistral_common/data/tekken_240911.json``, Mistral
  Nemo's), loaded by vLLM with the model entry's ``tokenizer_mode: mistral`` (chats rendered by mistral_common).
- Qwen3-MoE, DeepSeek-V3, Llama 4: substitute, SmolLM2-135M-Instruct's tokenizer (prepared by
  ``paddock prepare`` into ``.cache/paddock/smollm2-135m-instruct``) with the family's chat
  template and special tokens added; their real tokenizers are not shipped in any package here.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "paddock"
SMOLLM2 = CACHE / "smollm2-135m-instruct"

HIDDEN = 128
LAYERS = 2
EXPERTS = 4
HEAD_DIM = 64


@dataclass(frozen=True)
class Twin:
    """One family's twin: how it is built and how Paddock serves it."""

    family: str
    architecture: str
    tokenizer: str
    reasoning_parser: str | None
    tool_call_parser: str | None
    engine_args: dict[str, Any] = field(default_factory=dict)
    chat_template: str | None = None
    tokenizer_mode: str | None = None

    @property
    def model_id(self) -> str:
        return f"twin-{self.family}"


# --------------------------------------------------------------------------- chat templates

QWEN3_TEMPLATE = r"""{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>{% for tool in tools %}
{{ tool | tojson }}{% endfor %}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% elif message.role == 'assistant' %}<|im_start|>assistant
{% if message.reasoning_content %}<think>
{{ message.reasoning_content }}
</think>

{% endif %}{{ message.content or '' }}
{%- for tc in message.tool_calls or [] %}
<tool_call>
{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments if tc.function.arguments is string else tc.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is defined and enable_thinking is false %}<think>

</think>

{% endif %}{% endif %}"""

DEEPSEEK_V3_TEMPLATE = r"""{{ bos_token }}
{%- for message in messages if message.role == 'system' %}{{ message.content }}{% endfor %}
{%- if tools %}

## Tools
You have access to the following tools:
{% for tool in tools %}
### {{ tool.function.name }}
Description: {{ tool.function.description }}

Parameters: {{ tool.function.parameters | tojson }}
{% endfor %}
IMPORTANT: ALWAYS adhere to this exact format for tool use:
<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>tool_call_name
```json
tool_call_arguments
```<｜tool▁call▁end｜><｜tool▁calls▁end｜>
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' %}<｜User｜>{{ message.content }}
{%- elif message.role == 'assistant' %}<｜Assistant｜>{{ message.content or '' }}
{%- if message.tool_calls %}<｜tool▁calls▁begin｜>
{%- for tc in message.tool_calls %}<｜tool▁call▁begin｜>function<｜tool▁sep｜>{{ tc.function.name }}
```json
{{ tc.function.arguments }}
```<｜tool▁call▁end｜>{% endfor %}<｜tool▁calls▁end｜>{% endif %}<｜end▁of▁sentence｜>
{%- elif message.role == 'tool' %}<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{{ message.content }}<｜tool▁output▁end｜><｜tool▁outputs▁end｜>
{%- endif %}
{%- endfor %}
{#- DeepSeek-V3.1's switch: thinking (default) opens <think>, non-thinking closes it at once. -#}
{%- if add_generation_prompt %}<｜Assistant｜>{% if thinking is defined and not thinking %}</think>{% else %}<think>
{% endif %}{% endif %}"""

LLAMA4_TEMPLATE = r"""{{ bos_token }}
{%- if messages[0].role == 'system' %}<|header_start|>system<|header_end|>

{{ messages[0].content }}<|eot|>
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'user' %}<|header_start|>user<|header_end|>

{% if tools and loop.last %}Here is a list of functions in JSON format that you can invoke. Respond in the format [func_name1(param1=value1, param2=value2), func_name2(...)].
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}
{% endif %}{{ message.content }}<|eot|>
{%- elif message.role == 'assistant' %}<|header_start|>assistant<|header_end|>

{{ message.content or '' }}
{%- if message.tool_calls %}[{% for tc in message.tool_calls %}{{ tc.function.name }}({% for k, v in (tc.function.arguments | fromjson if tc.function.arguments is string else tc.function.arguments).items() %}{{ k }}={{ v | tojson }}{% if not loop.last %}, {% endif %}{% endfor %}){% if not loop.last %}, {% endif %}{% endfor %}]{% endif %}<|eot|>
{%- elif message.role == 'tool' %}<|header_start|>ipython<|header_end|>

{{ message.content }}<|eot|>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|header_start|>assistant<|header_end|>

{% endif %}"""

# Special tokens each substitute tokenizer gains: (token, special). Text-like markers the
# parsers look for in the text (<think>, <tool_call>) are added as non-special tokens, as
# the real tokenizers have them, so they survive skip_special_tokens.
QWEN3_TOKENS = [
    ("<think>", False),
    ("</think>", False),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
]
DEEPSEEK_TOKENS = [
    ("<｜begin▁of▁sentence｜>", True),
    ("<｜end▁of▁sentence｜>", True),
    ("<｜User｜>", True),
    ("<｜Assistant｜>", True),
    ("<think>", False),
    ("</think>", False),
    ("<｜tool▁calls▁begin｜>", False),
    ("<｜tool▁calls▁end｜>", False),
    ("<｜tool▁call▁begin｜>", False),
    ("<｜tool▁call▁end｜>", False),
    ("<｜tool▁sep｜>", False),
    ("<｜tool▁outputs▁begin｜>", False),
    ("<｜tool▁outputs▁end｜>", False),
    ("<｜tool▁output▁begin｜>", False),
    ("<｜tool▁output▁end｜>", False),
]
LLAMA4_TOKENS = [
    ("<|begin_of_text|>", True),
    ("<|end_of_text|>", True),
    ("<|header_start|>", True),
    ("<|header_end|>", True),
    ("<|eot|>", True),
    ("<|eom|>", True),
    ("<|python_start|>", True),
    ("<|python_end|>", True),
]


# --------------------------------------------------------------------------- tokenizers


def _substitute_tokenizer(
    staging: Path, template: str, tokens: list[tuple[str, bool]], bos: str | None, eos: str | None
) -> tuple[int, int, int]:
    """SmolLM2's tokenizer with ``tokens`` and ``template``; returns (len, bos id, eos id)."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    if not (SMOLLM2 / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{SMOLLM2} is missing: run `paddock prepare` first (it builds SmolLM2 offline)")
    tokenizer = AutoTokenizer.from_pretrained(str(SMOLLM2))
    tokenizer.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in tokens])
    if bos is not None:
        tokenizer.bos_token = bos
    if eos is not None:
        tokenizer.eos_token = eos
    tokenizer.chat_template = template
    tokenizer.save_pretrained(str(staging))
    return len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id


def harmony_tokenizer_json(target: Path) -> tuple[int, dict[str, int]]:
    """Write gpt-oss's ``o200k_harmony`` tokenizer as ``tokenizer.json``; return (vocab size, specials).

    The vocabulary comes from ``openai_harmony``, which works offline: every ordinary token's
    bytes (its id is its BPE rank), then the special tokens at their own ids.
    """
    import tiktoken_ext.openai_public as openai_public
    from openai_harmony import HarmonyEncodingName, load_harmony_encoding
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter

    encoding = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
    inner = encoding._inner
    specials = {}
    for token in sorted(inner.special_tokens()):
        ids = encoding.encode(token, allowed_special="all")
        if len(ids) == 1:
            specials[token] = ids[0]
    first_special = min(specials.values())
    ranks = {bytes(inner.decode_bytes([i])): i for i in range(first_special)}
    if len(ranks) != first_special:
        raise RuntimeError("harmony vocabulary has duplicate byte tokens")
    # tiktoken's own o200k pattern, without downloading its rank file.
    original = openai_public.load_tiktoken_bpe
    openai_public.load_tiktoken_bpe = lambda *a, **k: ranks
    try:
        pattern = openai_public.o200k_base()["pat_str"]
    finally:
        openai_public.load_tiktoken_bpe = original
    rank_file = target / "o200k_harmony.tiktoken.tmp"
    with rank_file.open("w") as out:  # tiktoken's rank-file format (its dump needs blobfile)
        out.writelines(f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in ranks.items())
    try:
        tokenizer = TikTokenConverter(vocab_file=str(rank_file), pattern=pattern).converted()
    finally:
        rank_file.unlink()
    ordered = sorted(specials.items(), key=lambda kv: kv[1])
    if [i for _, i in ordered] != list(range(first_special, first_special + len(ordered))):
        raise RuntimeError("harmony special tokens are not contiguous")
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, _ in ordered])
    for token, token_id in ordered:
        if tokenizer.token_to_id(token) != token_id:
            raise RuntimeError(f"special token {token} got id {tokenizer.token_to_id(token)}, not {token_id}")
    tokenizer.save(str(target / "tokenizer.json"))
    return first_special + len(ordered), specials


GPT_OSS_TEMPLATE = r"""{#- A minimal harmony rendering; vLLM renders gpt-oss chats with openai_harmony itself. -#}
<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.
Reasoning: medium

# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>
{%- for message in messages %}
{%- if message.role in ('user', 'system', 'developer') %}<|start|>{{ 'developer' if message.role != 'user' else 'user' }}<|message|>{{ message.content }}<|end|>
{%- elif message.role == 'assistant' %}<|start|>assistant<|channel|>final<|message|>{{ message.content or '' }}<|end|>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|start|>assistant{% endif %}"""


# --------------------------------------------------------------------------- builders


def _round_vocab(n: int, multiple: int = 64) -> int:
    return -(-n // multiple) * multiple


def _save(model_cls: Any, config: Any, staging: Path, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32)
    model.save_pretrained(str(staging), safe_serialization=True)


def _build_gpt_oss(staging: Path, seed: int) -> None:
    from transformers import GptOssConfig, GptOssForCausalLM, PreTrainedTokenizerFast

    vocab, specials = harmony_tokenizer_json(staging)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(staging / "tokenizer.json"),
        bos_token="<|startoftext|>",
        eos_token="<|return|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = GPT_OSS_TEMPLATE
    tokenizer.save_pretrained(str(staging))
    config = GptOssConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=HEAD_DIM,
        num_local_experts=EXPERTS,
        num_experts_per_tok=2,
        sliding_window=128,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=4096,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 150000.0,
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 4096,
        },
        tie_word_embeddings=False,
        bos_token_id=specials["<|startoftext|>"],
        eos_token_id=[specials["<|return|>"], specials["<|call|>"]],
        pad_token_id=specials["<|endoftext|>"],
        dtype="float32",
    )
    _save(GptOssForCausalLM, config, staging, seed)


def _build_deepseek_v3(staging: Path, seed: int) -> None:
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    n, bos, eos = _substitute_tokenizer(
        staging, DEEPSEEK_V3_TEMPLATE, DEEPSEEK_TOKENS, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
    )
    config = DeepseekV3Config(
        vocab_size=_round_vocab(n),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        moe_intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_shared_experts=1,
        n_routed_experts=EXPERTS,
        num_experts_per_tok=2,
        routed_scaling_factor=2.5,
        # vLLM's MLA supports latent head sizes 320, 512, 576 only: keep the real
        # kv_lora_rank 512 + qk_rope_head_dim 64 = 576.
        kv_lora_rank=512,
        q_lora_rank=64,
        qk_rope_head_dim=64,
        qk_nope_head_dim=64,
        v_head_dim=64,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=1,
        norm_topk_prob=True,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        bos_token_id=bos,
        eos_token_id=eos,
        dtype="float32",
    )
    # DeepSeek-V3's real config routes with the noaux_tc method, whose per-expert bias
    # (mlp.gate.e_score_correction_bias) transformers saves; vLLM only creates that parameter
    # for noaux_tc, so a config without it fails to load the bias.
    config.topk_method = "noaux_tc"
    config.scoring_func = "sigmoid"
    _save(DeepseekV3ForCausalLM, config, staging, seed)


def _build_llama4(staging: Path, seed: int) -> None:
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    n, bos, eos = _substitute_tokenizer(staging, LLAMA4_TEMPLATE, LLAMA4_TOKENS, "<|begin_of_text|>", "<|eot|>")
    config = Llama4TextConfig(
        vocab_size=_round_vocab(n),
        hidden_size=HIDDEN,
        intermediate_size=HIDDEN,
        intermediate_size_mlp=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=HEAD_DIM,
        num_local_experts=EXPERTS,
        num_experts_per_tok=1,
        interleave_moe_layer_step=1,
        use_qk_norm=True,
        attention_chunk_size=8192,
        no_rope_layers=[1, 0],
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=bos,
        eos_token_id=eos,
        dtype="float32",
    )
    config.architectures = ["Llama4ForCausalLM"]
    _save(Llama4ForCausalLM, config, staging, seed)


def _build_mistral(staging: Path, seed: int) -> None:
    import mistral_common
    from transformers import MistralConfig, MistralForCausalLM

    tekken = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
    shutil.copy2(tekken, staging / "tekken.json")
    vocab = json.loads(tekken.read_text())["config"]["default_vocab_size"]
    config = MistralConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=HEAD_DIM,
        max_position_embeddings=4096,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        dtype="float32",
    )
    _save(MistralForCausalLM, config, staging, seed)


def _build_qwen3_moe(staging: Path, seed: int) -> None:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    n, bos, eos = _substitute_tokenizer(staging, QWEN3_TEMPLATE, QWEN3_TOKENS, None, "<|im_end|>")
    config = Qwen3MoeConfig(
        vocab_size=_round_vocab(n),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        moe_intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=HEAD_DIM,
        num_experts=EXPERTS,
        num_experts_per_tok=2,
        decoder_sparse_step=1,
        norm_topk_prob=True,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=bos,
        eos_token_id=eos,
        dtype="float32",
    )
    _save(Qwen3MoeForCausalLM, config, staging, seed)


SUBSTITUTE = "substitute: SmolLM2-135M-Instruct tokenizer + family chat template and special tokens"

TWINS: dict[str, Twin] = {
    t.family: t
    for t in [
        Twin("gpt-oss", "GptOssForCausalLM", "real: o200k_harmony from openai_harmony", "openai_gptoss", "openai"),
        Twin("deepseek-v3", "DeepseekV3ForCausalLM", SUBSTITUTE, "deepseek_r1", "deepseek_v3"),
        Twin("llama4", "Llama4ForCausalLM", SUBSTITUTE, None, "llama4_pythonic"),
        Twin(
            "mistral",
            "MistralForCausalLM",
            "real: Tekken (mistral_common tekken_240911.json)",
            None,
            "mistral",
            tokenizer_mode="mistral",
        ),
        Twin("qwen3-moe", "Qwen3MoeForCausalLM", SUBSTITUTE, "qwen3", "hermes"),
    ]
}

BUILDERS: dict[str, Callable[[Path, int], None]] = {
    "gpt-oss": _build_gpt_oss,
    "deepseek-v3": _build_deepseek_v3,
    "llama4": _build_llama4,
    "mistral": _build_mistral,
    "qwen3-moe": _build_qwen3_moe,
}


def twin_dir(family: str, cache: Path = CACHE) -> Path:
    return cache / "twins" / family


def make_twin(family: str, cache: Path = CACHE, seed: int = 0) -> Path:
    """Create ``<cache>/twins/<family>/`` once (idempotent); return it."""
    target = twin_dir(family, cache)
    if (target / "model.safetensors").is_file():
        return target
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    BUILDERS[family](staging, seed)
    (staging / "twin.json").write_text(json.dumps({"family": family, "tokenizer": TWINS[family].tokenizer}) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def make_all(cache: Path = CACHE) -> dict[str, Path]:
    return {family: make_twin(family, cache) for family in TWINS}


def model_entry(twin: Twin, path: Path, cpus: float = 0.25) -> dict[str, Any]:
    """The Paddock model entry serving ``twin`` from ``path``."""
    entry: dict[str, Any] = {
        "id": twin.model_id,
        "source": {"path": str(path)},
        "dtype": "float32",
        "max_model_len": 1024,
        "kv_cache_memory": "64MiB",
        "resources": {"cpus": cpus},
        "max_ongoing_requests": 8,
        "approval": "off",  # random weights generated on this machine: nothing to approve
    }
    if twin.reasoning_parser:
        entry["reasoning_parser"] = twin.reasoning_parser
    if twin.tool_call_parser:
        entry["tool_call_parser"] = twin.tool_call_parser
    if twin.chat_template:
        entry["chat_template"] = twin.chat_template
    if twin.tokenizer_mode:
        entry["tokenizer_mode"] = twin.tokenizer_mode
    if twin.engine_args:
        entry["engine_args"] = dict(twin.engine_args)
    return entry


CHECK_SCRIPT = r"""
import sys
from vllm import LLM, SamplingParams
kw = dict(model=sys.argv[1], dtype="float32", enforce_eager=True, kv_cache_memory_bytes=64 << 20, max_model_len=512)
if sys.argv[2:]:
    kw["tokenizer_mode"] = sys.argv[2]
llm = LLM(**kw)
out = llm.generate(["Hello there"], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
print("TWIN-OK", len(out[0].outputs[0].token_ids), repr(out[0].outputs[0].text))
"""


def check_with_vllm(family: str, cache: Path = CACHE, timeout_s: float = 600) -> tuple[bool, str]:
    """Load the twin with plain vLLM in a subprocess and generate 8 tokens; return (ok, last output)."""
    import subprocess

    path = make_twin(family, cache)
    extra = [TWINS[family].tokenizer_mode] if TWINS[family].tokenizer_mode else []
    done = subprocess.run(
        [sys.executable, "-c", CHECK_SCRIPT, str(path), *extra],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    output = done.stdout + done.stderr
    ok = done.returncode == 0 and "TWIN-OK" in done.stdout
    return ok, output


def main(argv: list[str]) -> int:
    families = [a for a in argv if not a.startswith("-")] or list(TWINS)
    status = 0
    for family in families:
        print(family, make_twin(family), flush=True)
        if "--check" in argv:
            ok, output = check_with_vllm(family)
            tail = "\n".join(output.strip().splitlines()[-15:])
            print(f"{family}: {'OK' if ok else 'FAILED'}\n{tail}\n", flush=True)
            status |= 0 if ok else 1
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
