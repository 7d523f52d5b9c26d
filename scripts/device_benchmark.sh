#!/usr/bin/env bash
# GPU benchmark in one call of a lent device (15 minutes in all): rows in priority order, each
# saved to $OUT as it is measured, so a timeout keeps what was done.
#   Here, once: python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 -d .whl dm-pix==0.4.5
#   Device:     bash scripts/device_benchmark.sh [PART ...]   (carry .whl; PART: see below)
# The GPU image has jax, flax, optax, orbax, chex, absl, pillow and tqdm, not dm-pix.
set -u
OUT=${OUT:-device_out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
  > "$OUT/gpu.txt" 2>&1
B="python3 scripts/benchmark.py --operators=false --repeats=2 --statistic=median"
PARTS=${*:-attention b32 fidelity b8 profile b1}
for part in $PARTS; do
  echo "=== $part $(date +%T)"
  case $part in
    # cuDNN's fused attention against the XLA einsums and float32, on ADM-256 shapes.
    attention) python3 - <<'PY' ;;
import jax, jax.numpy as jnp
from ddrm_jax.models import layers
for b, t, h, c in ((32, 1024, 4, 64), (32, 256, 8, 64), (8, 64, 16, 64)):
  q, k, v = jax.random.normal(jax.random.key(0), (3, b, t, h, c))
  ref = layers.attention(q, k, v, c ** -0.5)
  err = {}
  for name in ('xla', 'cudnn'):
    with layers.attention_implementation(name):
      out = jax.jit(lambda q, k, v: layers.attention(q, k, v, c ** -0.5))(
          *(a.astype(jnp.bfloat16) for a in (q, k, v)))
    err[name] = float(jnp.linalg.norm(out.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
  print(f'attention {(b, t, h, c)}: relative error vs float32: {err}')
PY
    # The targets first: imagenet_256, then celeba_hq, at batch 32 (bf16 with cuDNN and with
    # XLA attention, f32 on TF32). f32 at the highest precision is measured at batch 8:
    # imagenet_256 at batch 32 needs more than 80 GB there (XLA plans 149 GiB of temporaries).
    b32) $B --networks=imagenet_256,celeba_hq --batch_sizes=32 --dtype=bfloat16,float32 \
           --precision=default --attention=auto,xla --fidelity=false \
           --json="$OUT/b32.json" ;;
    # Each (deg, dtype) restoration compiles once: about 5 s each on an H100.
    fidelity) $B --networks= --fidelity --dtype=float32,bfloat16 --precision=highest \
           --fidelity_degs=sr4,deblur_gauss,inp,deno --json="$OUT/fidelity.json" ;;
    profile) python3 scripts/profile_network.py --network=imagenet_256 --batch=32 \
           --dtype=bfloat16 --json="$OUT/profile.json" ;;
    b8|b1) $B --networks=imagenet_256,celeba_hq --batch_sizes=${part#b} \
           --dtype=bfloat16,float32 --precision=default,highest --fidelity=false \
           --json="$OUT/$part.json" ;;
    *) echo "unknown part $part" ;;
  esac
done 2>&1 | tee "$OUT/log.txt"
