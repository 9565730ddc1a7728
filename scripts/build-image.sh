#!/usr/bin/env bash
# `make image`: builds the Paddock container image with buildah, without a Docker
# engine and without pulling from a registry.
#
#   1. installs buildah and debootstrap from Debian packages if missing;
#   2. builds a Debian 12 (bookworm, python3.11) base rootfs with debootstrap and
#      imports it as localhost/paddock-base:bookworm (once; reused afterwards);
#   3. runs `buildah bud` on the Dockerfile with that base, this machine's local
#      wheels (/opt/wheels, /opt/pypi*) bind-mounted read-only for pip;
#   4. smoke-tests the image as its user (uid 1000, /tmp a tmpfs): `paddock --help`
#      and `import vllm, ray.serve`; ENGINE=cuda also checks the CUDA builds of
#      torch and vLLM, `cc`, and Triton's run-time C compilation (its launcher).
#
# Everything it writes besides buildah's image store lives under .cache/image/.
# Knobs (environment):
#   ENGINE=cpu|cuda            engine extra (default cpu; cuda uses the same base)
#   TARGET=runtime|demo        Dockerfile stage (demo bakes the two default models)
#   IMAGE=localhost/paddock:<version>-<engine>[-demo]
#   SOURCE=<repository URL>     OCI source label (default: git remote origin)
#   BASE_IMAGE=...             skip debootstrap and use this (local) image
#   DEBIAN_MIRROR=http://deb.debian.org/debian
#   BUILDAH_ISOLATION=chroot   (default: chroot, works inside VMs/containers)
#   BUILDAH_STORAGE_DRIVER=    e.g. vfs where overlay is unavailable
#   SMOKE=0                    skip the smoke test
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINE=${ENGINE:-cpu}
TARGET=${TARGET:-runtime}
CACHE=.cache/image
ROOTFS=$CACHE/rootfs-bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LOCAL_BASE=localhost/paddock-base:bookworm
BASE_IMAGE=${BASE_IMAGE:-$LOCAL_BASE}
BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
REVISION=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && REVISION=$REVISION-dirty
SOURCE=${SOURCE:-$(git remote get-url origin 2>/dev/null || true)}
suffix=$ENGINE
[ "$TARGET" = demo ] && suffix=$ENGINE-demo
IMAGE=${IMAGE:-localhost/paddock:$VERSION-$suffix}
mkdir -p "$CACHE"

log() { echo "build-image.sh: $*" >&2; }

# -- 1. tools ----------------------------------------------------------------
missing=()
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || { log "install by hand: ${missing[*]}"; exit 1; }
    as_root=()
    [ "$(id -u)" -eq 0 ] || as_root=(sudo)
    log "installing ${missing[*]}"
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
BUILDAH=(buildah)
[ -n "${BUILDAH_STORAGE_DRIVER:-}" ] && BUILDAH+=(--storage-driver "$BUILDAH_STORAGE_DRIVER")

# -- 2. base image: debootstrap, imported with buildah -------------------------
if [ "$BASE_IMAGE" = "$LOCAL_BASE" ] && ! "${BUILDAH[@]}" inspect --type image "$LOCAL_BASE" >/dev/null 2>&1; then
    if [ ! -f "$ROOTFS/.complete" ]; then
        log "debootstrap bookworm into $ROOTFS (a few minutes)"
        rm -rf "$ROOTFS"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$ROOTFS" "$DEBIAN_MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
            || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
        # Slim it: no apt lists, caches or docs in the base layer.
        rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
            "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/usr/share/doc/* \
            "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*
        touch "$ROOTFS/.complete"
    fi
    # debootstrap unmounts the /proc and /sys it mounted, unless something held
    # them busy then: never copy a live /proc into the image.
    for m in proc sys; do
        if mountpoint -q "$ROOTFS/$m"; then umount "$ROOTFS/$m"; fi
    done
    log "importing $ROOTFS as $LOCAL_BASE"
    ctr=$("${BUILDAH[@]}" from scratch)
    trap '"${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
    mnt=$("${BUILDAH[@]}" mount "$ctr")
    tar -C "$ROOTFS" --one-file-system --exclude=./.complete -cf - . | tar -C "$mnt" -xf -
    "${BUILDAH[@]}" umount "$ctr" >/dev/null
    "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd /bin/bash \
        --label org.opencontainers.image.description="Debian 12 minbase + python3.11 (debootstrap), Paddock's local base" \
        "$ctr"
    "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$LOCAL_BASE" >/dev/null
    trap - EXIT
fi

# -- 3. the image --------------------------------------------------------------
# VERSION/REVISION/SOURCE go in as build args, for the Dockerfile's LABEL.
# Local package sources: pip inside the build sees the same wheels as pip here.
pip_args=()
vols=()
# /opt/wheels holds torch==2.13.0+cpu, for the CPU build only: for vLLM's
# `torch==2.13.0` pip would take that +cpu wheel over PyPI's CUDA one.
wheel_dirs=(/opt/pypi /opt/pypi-more)
[ "$ENGINE" = cpu ] && wheel_dirs=(/opt/wheels "${wheel_dirs[@]}")
for d in "${wheel_dirs[@]}"; do
    [ -d "$d" ] && vols+=(--volume "$d:$d:ro")
done
if [ "$ENGINE" = cpu ] && [ -d /opt/wheels ]; then
    pip_args+=(--build-arg PIP_FIND_LINKS=/opt/wheels)
fi
extra=""
for d in /opt/pypi /opt/pypi-more; do
    [ -d "$d/simple" ] && extra="$extra file://$d/simple"
done
if [ -n "$extra" ]; then
    pip_args+=(--build-arg "PIP_EXTRA_INDEX_URL=${extra# }")
fi
if [ -f /etc/xdg/pip/constraints.txt ]; then
    vols+=(--volume /etc/xdg/pip/constraints.txt:/etc/paddock-build/constraints.txt:ro)
    pip_args+=(--build-arg PIP_CONSTRAINT=/etc/paddock-build/constraints.txt)
fi
# The host's CA bundle (a proxy's CA may be in it), for pip's HTTPS.
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    vols+=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/paddock-build/ca.crt:ro)
    pip_args+=(--build-arg PIP_CERT=/etc/paddock-build/ca.crt)
fi

log "building $IMAGE (target $TARGET, engine $ENGINE, base $BASE_IMAGE)"
start=$(date +%s)
"${BUILDAH[@]}" bud --format docker --pull=never --layers --force-rm \
    --isolation "$BUILDAH_ISOLATION" \
    "${vols[@]}" "${pip_args[@]}" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg ENGINE="$ENGINE" \
    --build-arg VERSION="$VERSION" \
    --build-arg REVISION="$REVISION" \
    --build-arg SOURCE="$SOURCE" \
    --target "$TARGET" \
    -t "$IMAGE" .
# buildah 1.28's layer cache reuses a LABEL step (and ignores --label) when only
# build-arg values changed: stale revision labels. Re-label if they are stale.
want="$VERSION|$REVISION|$SOURCE"
fmt='{{index .Docker.Config.Labels "org.opencontainers.image.version"}}|{{index .Docker.Config.Labels "org.opencontainers.image.revision"}}|{{index .Docker.Config.Labels "org.opencontainers.image.source"}}'
if [ "$("${BUILDAH[@]}" inspect --type image --format "$fmt" "$IMAGE")" != "$want" ]; then
    log "re-labelling $IMAGE (cached LABEL step): revision $REVISION"
    ctr=$("${BUILDAH[@]}" from --pull=never "$IMAGE")
    "${BUILDAH[@]}" config --label org.opencontainers.image.version="$VERSION" \
        --label org.opencontainers.image.revision="$REVISION" \
        --label org.opencontainers.image.source="$SOURCE" "$ctr"
    "${BUILDAH[@]}" commit --quiet --rm --format docker "$ctr" "$IMAGE" >/dev/null
fi
end=$(date +%s)
log "built $IMAGE in $((end - start)) s"
"${BUILDAH[@]}" images "$IMAGE" >&2
echo "$IMAGE $((end - start))s" >"$CACHE/last-build.txt"

# -- 4. smoke test: as the image's user, /tmp a tmpfs (as in a --read-only run) --
# ENGINE=cuda, without a GPU or driver here: the Python below checks that torch
# and vLLM are CUDA builds, that `cc` works, and that Triton compiles C at run
# time, first a tiny module with its own build function, then its real CUDA
# launcher (driver.c). Both, and vLLM's extensions, link libcuda.so.1, the
# driver's library that the NVIDIA container toolkit mounts from the host. A stub
# stands in for it (every driver API function returns CUDA_ERROR_NO_DEVICE), so
# every other symbol must resolve. Nothing runs on a GPU.
smoke_cuda=$(cat <<'EOF'
import ctypes, glob, importlib, os, re, subprocess
import torch, triton, vllm
from triton.backends.nvidia import driver as nvdriver
from triton.runtime.build import compile_module_from_src

def sh(*cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, check=True, **kw).stdout

assert torch.version.cuda, f"torch {torch.__version__} is not a CUDA build"
print(f"smoke: torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__},"
      f" vllm {vllm.__version__}; GPU visible: {torch.cuda.is_available()}")
print("smoke:", sh("cc", "--version").splitlines()[0])

src = r"""#include <Python.h>
static PyObject *answer(PyObject *self, PyObject *args) { return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "paddock_smoke", NULL, -1, methods};
PyMODINIT_FUNC PyInit_paddock_smoke(void) { return PyModule_Create(&module); }
"""
mod = compile_module_from_src(src, "paddock_smoke")
assert mod.answer() == 42 and mod.__file__.startswith(os.environ["TRITON_CACHE_DIR"] + "/"), mod.__file__
print(f"smoke: triton.runtime.build compiled and imported {mod.__file__}")

names = set(re.findall(r"\bCUresult\s+(cu[A-Z]\w*)\s*\(",
                       sh("cc", "-E", "-P", "-I", nvdriver.include_dirs[0], "-x", "c", "-", input="#include <cuda.h>\n")))
exts = sorted(glob.glob(os.path.join(os.path.dirname(vllm.__file__), "*.so")))
for so in exts:
    names |= set(re.findall(r"\bU (cu[A-Z]\w*)", sh("nm", "-D", "--undefined-only", so)))
stub = "/tmp/libcuda-stub"
os.makedirs(stub, exist_ok=True)
with open(f"{stub}/stub.c", "w") as f:
    f.write("".join(f"int {n}(void) {{ return 100; }}\n" for n in sorted(names)))
sh("cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", f"{stub}/libcuda.so.1", f"{stub}/stub.c")
ctypes.CDLL(f"{stub}/libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
os.environ["TRITON_LIBCUDA_PATH"] = stub
print(f"smoke: no GPU driver here: a libcuda.so.1 stub with {len(names)} driver API functions")

exts = [os.path.basename(so).split(".")[0] for so in exts]
for ext in exts:
    importlib.import_module(f"vllm.{ext}")
ops = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("_C::")]
assert torch._C._dispatch_has_kernel_for_dispatch_key("_C::rms_norm", "CUDA")
print(f"smoke: imported vLLM's {len(exts)} extensions ({', '.join(exts)}); {len(ops)} _C ops, _C::rms_norm has a CUDA kernel")
launch = nvdriver.CudaUtils().launch
print(f"smoke: Triton's CUDA launcher (driver.c, -l:libcuda.so.1) compiled with cc and imported: {launch.__name__}")
EOF
)
if [ "${SMOKE:-1}" = 1 ]; then
    smoke_start=$(date +%s)
    ctr=$("${BUILDAH[@]}" from --pull=never "$IMAGE")
    trap '"${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
    # No --user: the image's own USER must be uid 1000. buildah 1.28 `run` now and
    # then fails before the command starts, with "Close_Fd sealing memfd copy:
    # Device or resource busy": retried, that only.
    run() {
        local attempt err
        for attempt in 1 2 3; do
            err=$(mktemp)
            if "${BUILDAH[@]}" run --isolation "$BUILDAH_ISOLATION" \
                --mount type=tmpfs,destination=/tmp "$ctr" -- "$@" 2>"$err"; then
                rm -f "$err"
                return 0
            fi
            if ! grep -q "sealing memfd" "$err" || [ "$attempt" = 3 ]; then
                cat "$err" >&2
                rm -f "$err"
                return 1
            fi
            rm -f "$err"
            log "buildah run: memfd sealing race, retrying"
        done
    }
    uid=$(run id -u)
    [ "$uid" = 1000 ] || { log "smoke test: the image runs as uid $uid, not 1000"; exit 1; }
    run paddock --help >/dev/null
    run python -c 'import os, vllm, ray.serve, torch
print(f"smoke: uid {os.getuid()}, vllm {vllm.__version__}, torch {torch.__version__}")'
    checks="id -u: 1000; paddock --help; import vllm, ray.serve"
    if [ "$ENGINE" = cuda ]; then
        run python -c "$smoke_cuda"
        checks="$checks; CUDA torch and vLLM, cc, Triton's launcher build"
    fi
    log "smoke test passed in $(($(date +%s) - smoke_start)) s ($checks)"
fi
