#!/usr/bin/env bash
# Fills .whl/ (repo root, ignored by git) with what an offline GPU machine needs to run
# crammit on top of the packages its image already has (torch, transformers, pyarrow, pandas,
# ...): benchmarks/gpu_check.sh installs it with
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl
#   tar -C /tmp/site -xJf .whl/ray-*.tar.xz
# Run it here (pip reaches PyPI); the versions are the ones this repo's .venv has, built for
# CPython 3.12 on manylinux x86-64 (the GPU image's python3). Every package is a wheel, except
# Ray, whose ~80 MB wheel goes as an xz tarball of its installed folders, pruned of what a
# headless run (ray.init, Ray Data, Train, Tune) never loads. The whole working tree travels
# to that machine under a 64 MiB limit, so .whl/ must stay under 48 MiB.
#
#   benchmarks/gpu_wheels.sh          fill .whl/ afresh, check it, print its size
#   benchmarks/gpu_wheels.sh check    only check what is in .whl/ (tags, one version each,
#                                     every requirement carried or on the GPU image)
#   benchmarks/gpu_wheels.sh verify   prune this venv's own-Python Ray wheel (cp311 here) the
#                                     same way and smoke-test it: ray.init, Ray Data, TorchTrainer
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LIMIT_MIB=48
PLATFORM=(--only-binary=:all: --implementation cp --platform manylinux_2_28_x86_64
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

# crammit's dependencies (pyproject.toml) and, recursively, their requirements (ray with its
# train, tune and data extras; markers read for Python 3.12) that the GPU image lacks. Found
# by walking each wheel's Requires-Dist; `check` below walks them again and fails on a gap.
WHEELS=(
  datasets datasketch tomli-w                    # crammit's own, beside ray and deepspeed
  dill multiprocess                              # datasets
  hjson pydantic                                 # deepspeed
  pydantic-core annotated-types typing-inspection  # pydantic
  tensorboardX                                   # ray[train,tune]
  jsonschema jsonschema-specifications referencing rpds-py  # ray
)
# What those requirements name that the GPU image's python3 already has (KINDS.md, "Python
# packages already there"), so none is carried. Only names are known; version bounds on them
# are printed by `check`, to be read against `python3 -m pip show` there.
PRESENT="attrs click filelock fsspec huggingface-hub msgpack numpy packaging pandas protobuf
  psutil py-cpuinfo pyarrow pyyaml requests scipy einops ninja torch tqdm typing-extensions
  xxhash"

version() { "$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1"; }
# pip, without the warnings about this machine's absent local index folders.
pip_() { "$PY" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# Deletes what neither ray.init (a local cluster, dashboard off) nor Ray Data, Train or Tune
# loads, from a folder holding an unpacked Ray wheel. Kept: all of Ray's own Python outside
# RLlib (ray.dashboard's modules are imported by Train, Data and ray.util.state), the raylet,
# GCS server and _raylet.so unstripped, the runtime-env agent's vendored aiohttp (the raylet
# starts that agent on every node).
prune_ray() {
  local ray=$1/ray
  [ -f "$ray/_raylet.so" ] || { echo "prune_ray: no Ray in $1" >&2; return 1; }
  # Java workers' jars (33 MB): Ray starts Java workers only when the jars are there and
  # `java` is on the PATH (services.py guards the lookup).
  rm -rf "$ray/jars"
  # The dashboard web UI's built JavaScript (9 MB), served only by a running dashboard.
  rm -rf "$ray/dashboard/client/build"
  # RLlib (8 MB): Tune imports it only to look up a trainable named by string, inside
  # try/except ImportError (tune/registry.py).
  rm -rf "$ray/rllib"
  # Source maps of any other bundled JavaScript.
  find "$ray" -name '*.js.map' -delete
}

# Walks the Requires-Dist of everything in .whl/ (Ray's with extras train, tune, data) for
# CPython 3.12 on Linux: each must be met by a carried wheel of a matching version, or be in
# PRESENT; every wheel must install on cp312 manylinux x86-64; one version of each package.
check() {
  local dist rc=0
  dist=$(mktemp -d)
  tar -C "$dist" -xJf .whl/ray-*.tar.xz --wildcards 'ray-*.dist-info/METADATA'
  PRESENT="$PRESENT" "$PY" - "$dist"/ray-*.dist-info/METADATA <<'PY' || rc=1
import os, sys, zipfile, glob
from email.parser import Parser
from packaging.requirements import Requirement
from packaging.tags import cpython_tags, compatible_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

platforms = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64"]
ok_tags = set(cpython_tags((3, 12), platforms=platforms)) | set(compatible_tags((3, 12), "cp312", platforms))
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython"}
present = {canonicalize_name(n) for n in os.environ["PRESENT"].split()}
metas, versions, bad = {}, {}, []
for path in sorted(glob.glob(".whl/*.whl")):
    name, version, _, tags = parse_wheel_filename(os.path.basename(path))
    if not tags & ok_tags:
        bad.append(f"{path}: no tag for cp312 manylinux x86-64")
    if name in versions:
        bad.append(f"two versions of {name}: {versions[name]} and {version}")
    versions[name] = version
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        metas[name] = Parser().parsestr(z.read(meta).decode())
ray = Parser().parsestr(open(sys.argv[1]).read())
versions["ray"] = ray["Version"]
metas["ray"] = ray
extras = {"ray": ["", "train", "tune", "data"]}
bounds = set()
for name, meta in sorted(metas.items()):
    for line in meta.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in extras.get(name, [""])):
            continue
        dep = canonicalize_name(req.name)
        if dep in versions:
            if not req.specifier.contains(versions[dep], prereleases=True):
                bad.append(f"{name} needs {req}, carried {versions[dep]}")
        elif dep in present:
            if str(req.specifier):
                bounds.add(f"{dep}{req.specifier} (for {name})")
        else:
            bad.append(f"{name} needs {req}: neither carried nor on the GPU image")
print("carried:", ", ".join(f"{n} {v}" for n, v in sorted(versions.items())))
print("bounds on packages the GPU image has:", "; ".join(sorted(bounds)))
print("\n".join(bad) or "requirements: all met (carried, or on the GPU image)")
sys.exit(1 if bad else 0)
PY
  rm -rf "$dist"
  return $rc
}

# Applies prune_ray to the Ray wheel for this venv's own Python and runs a small Ray Data
# pipeline and a one-worker TorchTrainer on it (torch and the rest from the venv).
verify() {
  local pyver ray_version
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  pyver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  ray_version=$(version ray)
  pip_ download -q --no-deps "${PLATFORM[@]}" --python-version "$pyver" -d "$tmp/dl" "ray==$ray_version"
  mkdir "$tmp/site"
  unzip -q "$tmp"/dl/ray-*.whl -d "$tmp/site"
  du -sh "$tmp/site/ray"
  prune_ray "$tmp/site"
  du -sh "$tmp/site/ray"
  PYTHONPATH="$tmp/site" timeout 300 "$PY" - "$tmp/results" <<'PY'
import logging, sys
import ray
print("ray", ray.__version__, "from", ray.__file__)
import ray.data, ray.train, ray.train.torch, ray.tune
ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)

@ray.remote
def where():
    import ray
    return ray.__file__
print("a task's ray:", ray.get(where.remote()))
ds = ray.data.range(100).map_batches(lambda b: {"id": b["id"] * 2}).materialize()
print("Ray Data: rows", ds.count(), "sum", ds.sum("id"))

def train_fn():
    import ray, ray.train
    ray.train.report({"x": 1, "ray": ray.__file__})

from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
result = TorchTrainer(train_fn, scaling_config=ScalingConfig(num_workers=1, use_gpu=False),
                      run_config=RunConfig(storage_path=sys.argv[1], name="smoke")).fit()
print("TorchTrainer metrics:", result.metrics)
from ray import tune
res = tune.Tuner(lambda cfg: tune.report({"y": cfg["a"] + 1}), param_space={"a": tune.grid_search([1, 2])},
                 run_config=tune.RunConfig(storage_path=sys.argv[1], name="tune")).fit()
print("Tune results:", sorted(r.metrics["y"] for r in res))
ray.shutdown()
print("verify: ok")
PY
}

if [ "${1:-}" = verify ]; then verify; exit; fi
if [ "${1:-}" = check ]; then check; exit; fi

rm -rf .whl
mkdir .whl
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

specs=()
for p in "${WHEELS[@]}"; do specs+=("$p==$(version "$p")"); done
echo "downloading: ${specs[*]}"
pip_ download -q --no-deps "${PLATFORM[@]}" --python-version 3.12 -d .whl "${specs[@]}"

# DeepSpeed is published as an sdist only: a pure wheel with no prebuilt ops (they build
# just in time there, with the image's nvcc and ninja).
ds=$(version deepspeed)
echo "building deepspeed==$ds"
DS_BUILD_OPS=0 pip_ wheel -q --no-cache-dir --no-deps "deepspeed==$ds" -w .whl
[ -f ".whl/deepspeed-$ds-py3-none-any.whl" ] || { echo "deepspeed did not build as py3-none-any" >&2; exit 1; }

rv=$(version ray)
echo "downloading ray==$rv (cp312), pruning, compressing"
pip_ download -q --no-deps "${PLATFORM[@]}" --python-version 3.12 -d "$work/dl" "ray==$rv"
mkdir "$work/site"
unzip -q "$work"/dl/ray-*.whl -d "$work/site"
prune_ray "$work/site"
# Sorted names keep _raylet.so, the GCS server and the raylet (which share much code) close
# together, inside xz -9's 64 MiB window.
tar -C "$work/site" --sort=name --owner=0 --group=0 --numeric-owner -cf - ray "ray-$rv.dist-info" \
  | xz -9 > ".whl/ray-$rv.tar.xz"

check
ls -l .whl
total=$(du -cb .whl/* | tail -1 | cut -f1)
echo "total: $total bytes ($(awk "BEGIN{printf \"%.1f\", $total/1048576}") MiB; limit ${LIMIT_MIB} MiB)"
[ "$total" -lt $((LIMIT_MIB * 1048576)) ] || { echo ".whl/ is over ${LIMIT_MIB} MiB" >&2; exit 1; }
