"""Benchmarks 20-step DDRM with the paper's networks, and the degradation operators.

For each network x batch size x dtype (x matmul precision for float32): compile time of the
DDRM program, seconds per image, images/s, time per step against the bare network call, the
DDRM overhead (everything but the network, % of the step), achieved FLOP/s and its share of
the device's peak, memory. Then the build/apply times of every degradation operator.

  python scripts/benchmark.py --quick                       # tiny network, a few seconds (CI)
  python scripts/benchmark.py --networks=celeba_hq,imagenet_256 --batch_sizes=1 --json=cpu.json
  python scripts/benchmark.py --networks=celeba_hq,imagenet_256 --batch_sizes=1,8,32 \\
      --dtype=float32,bfloat16 --precision=default,highest --json=gpu.json       # on a GPU

The fidelity table (`ddrm_jax.fidelity`) restores the bundled held-out images with the bundled
prior (or `--fidelity_ckpt` on `--fidelity_input`) once per dtype and precision of the flags, with
the same keys, and compares each with float32 at the highest precision: bfloat16 should be within
0.1 dB PSNR.

The methods table (`--methods`, default all) times one step of DDRM and of each solver of
`ddrm_jax.solvers` (DDNM+, ΠGDM, DPS, DiffPIR) against the bare network call, and the same chains
with a stand-in network (what a method adds to a network call):
  python scripts/benchmark.py --networks=tiny --methods=ddrm,ddnm,pigdm,dps,diffpir \\
      --operators=false --fidelity=false

The blind table (`--blind`) times a whole blind restoration (`blind.sample_blind`, its defaults)
against non-blind DDRM on the same blur at `--steps` (target: at most 2.5x):
  python scripts/benchmark.py --networks=tiny --methods= --operators=false --fidelity=false

A measurement that fails (out of memory, say) is reported and the others still run; `--json` is
rewritten after each one, so what was measured survives a failure or a timeout; the exit status is
1 if any failed.

On a CPU the big networks time `--steps_timed` steps (default 2) at batch sizes up to
`--cpu_max_big_batch` and extrapolate to `--steps`. Params are random (the timing does not
depend on their values).
"""

import json
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from ddrm_jax import benchmarks
from ddrm_jax import bundled
from ddrm_jax import checkpoints
from ddrm_jax import fidelity
from ddrm_jax import io as image_io
from ddrm_jax import operators
from ddrm_jax.models import layers

FLAGS = flags.FLAGS
_NETWORKS = flags.DEFINE_list('networks', ['tiny', 'celeba_hq', 'imagenet_256'],
                              f'Networks: {", ".join(benchmarks.NETWORKS)} (classifiers excluded).')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['1', '8', '32'], 'Batch sizes.')
_DTYPE = flags.DEFINE_list('dtype', ['float32', 'bfloat16'], 'Compute dtypes (params float32).')
_PRECISION = flags.DEFINE_list(
    'precision', ['default'],
    'Matmul precisions for float32 rows (jax.default_matmul_precision): default (TF32 on '
    'NVIDIA GPUs), highest (true float32), tensorfloat32. Other dtypes use default.')
_ATTENTION = flags.DEFINE_list(
    'attention', ['auto'], 'Self-attention implementations for 16-bit rows '
    '(ddrm_jax.models.layers.attention_implementation): auto (cuDNN fused attention on GPUs '
    'where it applies, else XLA), xla, cudnn. float32 rows use auto.')
_QUICK = flags.DEFINE_bool('quick', False, 'CI mode: the tiny network at batch 1 in float32 '
                           '(flags given explicitly still apply), no operator table.')
_STEPS = flags.DEFINE_integer('steps', 20, 'DDRM steps (network calls) per image.')
_STEPS_TIMED = flags.DEFINE_integer(
    'steps_timed', 2, 'On a CPU, steps actually run for the big networks (extrapolated to '
    '--steps); the tiny network and accelerators run all --steps.')
_CPU_MAX_BIG_BATCH = flags.DEFINE_integer(
    'cpu_max_big_batch', 1, 'On a CPU, larger batches of the big networks are skipped.')
_DEG = flags.DEFINE_string('deg', 'sr4', 'Degradation of the DDRM benchmark.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per network measurement (at least; '
                                'more until they add up to 1 s).')
_STATISTIC = flags.DEFINE_enum('statistic', 'median', list(benchmarks.STATISTICS),
                               'Statistic of the timed calls: median, or min on a machine shared '
                               'with other work.')
_CPU_PEAK = flags.DEFINE_float('cpu_peak_gflops', benchmarks.CPU_PEAK_GFLOPS,
                               'Peak GFLOP/s of a CPU for the share-of-peak column.')
_METHODS = flags.DEFINE_list(
    'methods', list(benchmarks.METHODS), 'Restoration methods to time per step against the bare '
    'network call (ddrm and the solvers: ddnm, pigdm, dps, diffpir) on the first --networks '
    'entry at batch 1, --deg, --steps (off in --quick mode unless given).')
_METHODS_SIGMA_Y = flags.DEFINE_float('methods_sigma_y', 0.05, 'Methods table: measurement noise '
                                      'in [0, 1] image units (as ddrm-restore --sigma_y).')
_BLIND = flags.DEFINE_bool('blind', True, 'Time blind deblurring against non-blind DDRM on the '
                           'same blur at --steps, on the first --networks entry at batch 1 (off '
                           'in --quick mode unless given).')
_BLIND_KERNEL_SIZE = flags.DEFINE_integer('blind_kernel_size', 7, 'Blind table: kernel size.')
_JSON = flags.DEFINE_string('json', None, 'Also write every measurement to this JSON file.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the random params and inputs.')
_OPERATORS = flags.DEFINE_bool('operators', True, 'Time every degradation operator (off in '
                               '--quick mode unless given).')
_DEGS = flags.DEFINE_list('degs', list(operators.NAMES), 'Degradation names to time.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 256, 'Operator table: image height and width.')
_CHANNELS = flags.DEFINE_integer('channels', 3, 'Operator table: image channels.')
_BATCH = flags.DEFINE_integer('batch', 1, 'Operator table: images per call (vmapped).')
_OPERATOR_REPEATS = flags.DEFINE_integer('operator_repeats', 20,
                                         'Operator table: timed calls per measurement.')
_FIDELITY = flags.DEFINE_bool('fidelity', True, 'Restore real images in every --dtype and '
                              '--precision and compare PSNR with float32 (off in --quick mode '
                              'unless given).')
_FIDELITY_CKPT = flags.DEFINE_string('fidelity_ckpt', None, 'Fidelity: an unconditional '
                                     'checkpoint directory (default: the bundled prior).')
_FIDELITY_INPUT = flags.DEFINE_string('fidelity_input', None, 'Fidelity: clean images at the '
                                      "checkpoint's size, a folder, file or glob (default: the "
                                      'bundled samples with the bundled prior).')
_FIDELITY_DEGS = flags.DEFINE_list('fidelity_degs', list(fidelity.DEGS), 'Fidelity: degradations.')
_FIDELITY_SAMPLES = flags.DEFINE_integer('fidelity_samples', 1, 'Fidelity: posterior samples '
                                         'averaged per image.')
_FIDELITY_BATCH = flags.DEFINE_integer('fidelity_batch', None, 'Fidelity: images per network '
                                       'call (default: all at once).')
_FIDELITY_SIGMA_Y = flags.DEFINE_float('fidelity_sigma_y', 0.05, 'Fidelity: measurement noise in '
                                       '[0, 1] image units (as ddrm-restore --sigma_y).')


def _table(results, name, case, measure, columns, caption):
  """results[name] = measure() (a list of rows), printed under `caption`; a failure (out of
  memory, say) is recorded in results['failed'] as `case` and printed, and the run goes on."""
  try:
    results[name] = measure()
  except Exception as e:  # pylint: disable=broad-except
    results['failed'].append({'case': case, 'error': checkpoints.error_summary(e)})
    print(f'FAILED {case}: {checkpoints.error_summary(e)}', flush=True)
  if results[name]:
    print()
    print(caption)
    print()
    print(benchmarks.markdown_table(results[name], columns))


def _value(name, quick_value):
  """The flag's value, or `quick_value` in --quick mode unless the flag was given."""
  if _QUICK.value and not FLAGS[name].present:
    return quick_value
  return FLAGS[name].value


def dtype_precisions():
  """The (dtype, precision) pairs of the flags: every --precision for float32, else default."""
  return [(dtype, precision) for dtype in _value('dtype', ['float32'])
          for precision in (_PRECISION.value if dtype == 'float32' else ['default'])]


def cases(platform_name):
  """The `benchmarks.Case`s the flags ask for, and the (network, batch) pairs skipped."""
  networks = _value('networks', ['tiny'])
  batch_sizes = [int(b) for b in _value('batch_sizes', ['1'])]
  out, skipped = [], []
  for network in networks:
    big = network != 'tiny'
    on_cpu = platform_name == 'cpu'
    for batch in batch_sizes:
      if big and on_cpu and batch > _CPU_MAX_BIG_BATCH.value:
        skipped.append((network, batch))
        continue
      for dtype, precision, attention in [
          (d, p, a) for d, p in dtype_precisions()
          for a in (_ATTENTION.value if d != 'float32' else ['auto'])]:
        case = benchmarks.Case(
            network=network, batch=batch, dtype=dtype, precision=precision,
            attention=attention, deg=_DEG.value,
            steps=_STEPS.value,
            steps_timed=min(_STEPS_TIMED.value, _STEPS.value) if big and on_cpu
            else _STEPS.value,
            repeats=_REPEATS.value, statistic=_STATISTIC.value)
        benchmarks.check_case(case)  # Bad flags fail before anything is compiled.
        out.append(case)
  return out, skipped


def fidelity_variants():
  """(dtype, precision) pairs of the flags, float32 at the highest precision first."""
  return list(dict.fromkeys([fidelity.REFERENCE] + dtype_precisions()))


def fidelity_inputs():
  """(checkpoint, images, variants) of the fidelity table, all checked: bad flags raise
  app.UsageError before any work."""
  ckpt = _FIDELITY_CKPT.value or bundled.PRIOR
  what = '--fidelity_ckpt' if _FIDELITY_CKPT.value else f'the bundled prior ({ckpt})'
  try:
    config = checkpoints.load_config(ckpt)
  except (OSError, ValueError) as e:
    raise app.UsageError(f'{what}: {checkpoints.error_summary(e)}') from None
  spec = _FIDELITY_INPUT.value
  if spec is None and _FIDELITY_CKPT.value:
    raise app.UsageError('--fidelity_ckpt needs --fidelity_input (clean images at its size)')
  try:
    _, images = image_io.read_images(spec or bundled.SAMPLES, config.in_channels)
  except ValueError as e:
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise app.UsageError(f'--fidelity_input: {message.removeprefix("--input ")}') from None
  size = (config.image_size, config.image_size)
  if images.shape[1:3] != size:
    raise app.UsageError(f'--fidelity_input: images are {images.shape[1]}x{images.shape[2]}, '
                         f'the checkpoint is for {size[0]}x{size[1]}')
  variants = fidelity_variants()
  try:
    fidelity.check_arguments(config, images, _FIDELITY_DEGS.value, variants,
                             steps=_STEPS.value, sigma_y=2 * _FIDELITY_SIGMA_Y.value,
                             num_samples=_FIDELITY_SAMPLES.value, batch_size=_FIDELITY_BATCH.value)
  except ValueError as e:
    raise app.UsageError(f'fidelity: {e}') from None
  return ckpt, images, variants


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  unknown = [d for d in _DEGS.value + _FIDELITY_DEGS.value + [_DEG.value]
             if d not in operators.NAMES]
  if unknown:
    raise app.UsageError(f'unknown degradations {unknown}; known: {", ".join(operators.NAMES)}')
  if _FIDELITY_SIGMA_Y.value < 0:
    raise app.UsageError(f'--fidelity_sigma_y must be >= 0, got {_FIDELITY_SIGMA_Y.value}')
  if _FIDELITY_SAMPLES.value < 1:
    raise app.UsageError(f'--fidelity_samples must be >= 1, got {_FIDELITY_SAMPLES.value}')
  if _STEPS.value < 1:
    raise app.UsageError(f'--steps must be >= 1, got {_STEPS.value}')
  for name, allowed in (('dtype', benchmarks.DTYPES), ('precision', benchmarks.PRECISIONS),
                        ('attention', layers.ATTENTION_IMPLEMENTATIONS)):
    bad = [v for v in FLAGS[name].value if v not in allowed]
    if bad:
      raise app.UsageError(f'--{name}: unknown {bad}; known: {", ".join(allowed)}')
  env = benchmarks.environment()
  try:
    todo, skipped = cases(env['platform'])
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  methods = _value('methods', [])
  unknown_methods = [m for m in methods if m not in benchmarks.METHODS]
  if unknown_methods:
    raise app.UsageError(f'--methods: unknown {unknown_methods}; known: '
                         f'{", ".join(benchmarks.METHODS)}')
  run_fidelity = _value('fidelity', False)
  if run_fidelity:
    fidelity_ckpt, fidelity_images, variants = fidelity_inputs()  # Bad flags fail now.
  print(f'# DDRM benchmark: {benchmarks.header(env)}')
  print()
  rows = []
  results = {'environment': env, 'networks': rows, 'failed': [], 'operators': [],
             'fidelity': [], 'solvers': [], 'blind': [],
             'skipped': [{'network': n, 'batch': b} for n, b in skipped]}
  save = lambda: _save_json(results)
  try:
    save()
  except OSError as e:
    raise app.UsageError(
        f'--json {_JSON.value}: cannot write ({checkpoints.error_summary(e)})') from None
  params = {}
  for case in todo:
    if case.network not in params:
      params = {case.network: benchmarks.random_params(benchmarks.network_config(case.network),
                                                       _SEED.value)}
    name = (f'{case.network} batch {case.batch} {case.dtype} {case.precision} attention '
            f'{case.attention}')
    try:
      row = benchmarks.network_row(case, params=params[case.network],
                                   cpu_peak_gflops=_CPU_PEAK.value, seed=_SEED.value)
    except Exception as e:  # pylint: disable=broad-except  (out of memory, say: go on)
      message = checkpoints.error_summary(e)
      results['failed'].append({'case': name, 'error': message})
      print(f'FAILED {name}: {message}', flush=True)
      save()
      continue
    rows.append(row)
    save()  # What is measured survives a later failure or a timeout.
    print(f"measured {name}: {row['s_per_image']:.3g} s/image", flush=True)
  print()
  if rows:
    print(f'{_STEPS.value}-step DDRM ({_DEG.value}), {_STATISTIC.value} times per image and per '
          f'step of the batch; step = DDRM step, fwd = bare network call, overhead = DDRM '
          f'without the network, % of the step; TFLOP/s from XLA cost analysis; ref_conv: GFLOP/s of a '
          f'large 3x3 conv measured just before (how fast the machine runs now), '
          f'fwd_pct_of_ref: the network call\'s FLOP/s as % of it; memory from '
          f'memory_analysis (device_peak: GPU memory_stats, process-wide).')
    print()
    print(benchmarks.markdown_table(rows, benchmarks.NETWORK_COLUMNS))
    print()
    print('Program checks (the 20-step program): compile = lower + XLA compile; scan_is_loop: '
          'the step loop is one while loop of `steps` trips; conv_copies: convolutions in the '
          'program per convolution of the network (1 = not unrolled); host_transfers: '
          'callbacks or transfers inside the program.')
    print()
    print(benchmarks.markdown_table(rows, benchmarks.PROGRAM_COLUMNS))
  for network, batch in skipped:
    print(f'skipped {network} at batch {batch} on a CPU (see --cpu_max_big_batch)')
  network = _value('networks', ['tiny'])[0]
  if methods:
    _table(results, 'solvers', 'methods', lambda: benchmarks.solver_rows(
        methods, network=network, deg=_DEG.value, steps=_STEPS.value,
        sigma_y=2 * _METHODS_SIGMA_Y.value, repeats=_REPEATS.value,
        statistic=_STATISTIC.value, seed=_SEED.value), benchmarks.SOLVER_COLUMNS,
           f'Methods on {network} ({_DEG.value}, {_STEPS.value} steps, sigma_y '
           f'{_METHODS_SIGMA_Y.value}), {_STATISTIC.value} times; step_vs_fwd: one step of the '
           f'chain over one bare network call; overhead: the chain with a stand-in network of '
           f'negligible cost, per step, and as % of the network call.')
    save()
  if _value('blind', False):
    _table(results, 'blind', 'blind', lambda: [benchmarks.blind_row(
        network=network, kernel_size=_BLIND_KERNEL_SIZE.value, steps=_STEPS.value,
        repeats=_REPEATS.value, statistic=_STATISTIC.value, seed=_SEED.value)],
           benchmarks.BLIND_COLUMNS,
           f'Blind deblurring on {network} ({_STEPS.value} steps, Gaussian kernel of '
           f'{_BLIND_KERNEL_SIZE.value}x{_BLIND_KERNEL_SIZE.value}, sigma_y 0.02), '
           f'{_STATISTIC.value} times of a whole restoration against non-blind DDRM on the '
           f'same blur (target: blind_vs_nonblind <= 2.5).')
    save()
  op_rows = results['operators']
  if _value('operators', False):
    shape = (_IMAGE_SIZE.value, _IMAGE_SIZE.value, _CHANNELS.value)
    op_rows.extend(benchmarks.operator_table(_DEGS.value, shape, batch=_BATCH.value,
                                             repeats=_OPERATOR_REPEATS.value))
    overhead = benchmarks.overhead_table(_DEGS.value, shape, batch=_BATCH.value,
                                         steps=_STEPS.value, repeats=_OPERATOR_REPEATS.value)
    for row, extra in zip(op_rows, overhead):
      row.update(extra)
    print()
    print(f'Operators at {shape}, batch {_BATCH.value}; times in ms (median of '
          f'{_OPERATOR_REPEATS.value}); ddrm_overhead_ms: one DDRM step with a stand-in network '
          f'of negligible cost ({_STEPS.value}-step program).')
    print()
    print(benchmarks.markdown_table(op_rows))
    save()
  if run_fidelity:
    def failed(deg, e):
      results['failed'].append({'case': f'fidelity {deg}', 'error': checkpoints.error_summary(e)})
      print(f'FAILED fidelity {deg}: {checkpoints.error_summary(e)}', flush=True)
    results['fidelity'] = fidelity_rows = fidelity.fidelity_rows(
        fidelity_ckpt, fidelity_images, _FIDELITY_DEGS.value, variants=variants,
        steps=_STEPS.value, sigma_y=2 * _FIDELITY_SIGMA_Y.value, seed=_SEED.value,
        num_samples=_FIDELITY_SAMPLES.value, batch_size=_FIDELITY_BATCH.value, on_failure=failed)
    print()
    print(f'Fidelity: {len(fidelity_images)} images restored in each dtype and precision with '
          f'the same keys ({_STEPS.value} steps, sigma_y {_FIDELITY_SIGMA_Y.value}, posterior mean '
          f'of {_FIDELITY_SAMPLES.value}); psnr: mean against the clean images; delta_db: against '
          f'float32 at the highest precision (bar {fidelity.MAX_DELTA_DB} dB); psnr_vs_f32: of the '
          f'restorations against float32\'s; keys other: float32 on another draw of noise (the '
          f'scale of chance).')
    if fidelity_rows:
      print()
      print(benchmarks.markdown_table(fidelity_rows, fidelity.COLUMNS))
    save()
  for failure in results['failed']:
    print(f"failed: {failure['case']}: {failure['error']}")
  return 1 if results['failed'] else 0


def _save_json(results):
  """Writes --json (if given) atomically: a reader never sees half a file."""
  if not _JSON.value:
    return
  tmp = _JSON.value + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(results, f, indent=1, default=str)
  os.replace(tmp, _JSON.value)


if __name__ == '__main__':
  app.run(main)
