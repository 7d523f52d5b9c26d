"""Timing helpers behind scripts/benchmark.py: the networks, the DDRM sampler, the operators.

Every timing is the median (or, on a machine shared with other work, the minimum) wall time
of `repeats` or more calls of a compiled function after one warm-up call (compilation
excluded), each ended by `jax.block_until_ready`; the calls a comparison needs (network,
DDRM, DDRM without the network) are made in turn, so they see the same conditions. Params, the
operator, y and the key are jit arguments (never closed-over constants), so one compilation
serves every call of a shape. Model FLOPs come from XLA's cost analysis of the network's program
before optimisation (the same count on every platform).
"""

import dataclasses
import inspect
import math
import platform
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from ddrm_jax import blind
from ddrm_jax import bundled
from ddrm_jax import checkpoints
from ddrm_jax import operators
from ddrm_jax import sampler
from ddrm_jax import solvers
from ddrm_jax.models import configs
from ddrm_jax.models import ddpm_unet
from ddrm_jax.models import layers

NETWORKS = ('tiny', 'bundled') + tuple(n for n in configs.NAMES
                             if configs.get_config(n).family in ('ddpm', 'adm'))
DTYPES = ('float32', 'bfloat16', 'float16')
PRECISIONS = ('default', 'high', 'highest', 'tensorfloat32', 'bfloat16', 'float32')
STATISTICS = {'median': statistics.median, 'min': min}
CPU_PEAK_GFLOPS = 230.0  # What this project's 2-core CI CPU sustains on a large 3x3 conv (f32).

# Dense peak TFLOP/s by device kind substring: (bf16/fp16, tf32, fp32 without tensor cores).
GPU_PEAK_TFLOPS = (
    ('H100 PCIe', (756.0, 378.0, 51.0)),
    ('H100', (989.0, 495.0, 67.0)),  # SXM (HBM3) boards
    ('H200', (989.0, 495.0, 67.0)),
    ('A100', (312.0, 156.0, 19.5)),
)

# The tiny DDPM UNet of the quick mode (a few seconds on a CPU).
TINY = ddpm_unet.DDPMConfig(image_size=32, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                            attn_resolutions=(16,))


def environment():
  """Device and library versions, for the header of a results table."""
  dev = jax.devices()[0]
  return {'device': f'{dev.platform}: {dev.device_kind}', 'platform': dev.platform,
          'device_kind': dev.device_kind, 'device_count': jax.device_count(),
          'jax': jax.__version__, 'python': platform.python_version(),
          'machine': platform.machine()}


def time_calls(fn, *args, repeats=10, min_seconds=0.0):
  """Seconds of each timed call of fn(*args) after one warm-up call: `repeats` calls or more,
  until they add up to `min_seconds` (at most 1000 calls)."""
  return time_interleaved({'fn': (fn, args)}, repeats, min_seconds)['fn']


def time_interleaved(calls, repeats=3, min_seconds=0.0):
  """{name: seconds of each timed call} for `calls` {name: (fn, args)}, after one warm-up
  call of each. Calls are made in turn, one of each unfinished name per round, so that all see
  the same machine conditions; a name is finished after `repeats` calls adding up to
  `min_seconds` (or 1000 calls)."""
  for fn, args in calls.values():
    jax.block_until_ready(fn(*args))
  times = {name: [] for name in calls}
  done = lambda t: len(t) >= repeats and (sum(t) >= min_seconds or len(t) >= 1000)
  while not all(done(t) for t in times.values()):
    for name, (fn, args) in calls.items():
      if not done(times[name]):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times[name].append(time.perf_counter() - start)
  return times


def time_call(fn, *args, repeats=10, min_seconds=0.0):
  """Median seconds of fn(*args) (see `time_calls`)."""
  return statistics.median(time_calls(fn, *args, repeats=repeats, min_seconds=min_seconds))


# -- operators ---------------------------------------------------------------------------------


def _build_seconds(name, image_shape, repeats):
  """(first build, median of later builds) in seconds, arrays ready on the device."""
  times = []
  for _ in range(1 + repeats):
    start = time.perf_counter()
    op = jax.block_until_ready(operators.make(name, image_shape))
    times.append(time.perf_counter() - start)
  return op, times[0], statistics.median(times[1:])


@jax.jit
def _apply_h(op, x):
  return jax.vmap(op.H)(x)


@jax.jit
def _round_trip(op, x, y):
  """x -> V(Vt(x)) and y -> U(Ut(y)) on a batch (the four spectral maps)."""
  return jax.vmap(lambda a: op.V(op.Vt(a)))(x), jax.vmap(lambda b: op.U(op.Ut(b)))(y)


def operator_table(names=None, image_shape=(256, 256, 3), batch=1, repeats=10, build_repeats=3,
                   seed=0):
  """Times building each operator and applying it to a batch of images.

  Returns one dict per name: name, y_shape, build_first_ms (first build in this process, any
  one-off compilation included), build_ms (median of later builds), H_ms (jitted vmapped H),
  round_trip_ms (jitted V(Vt(x)) and U(Ut(y))). The operator is a jit argument, not a constant.
  """
  names = operators.NAMES if names is None else tuple(names)
  image_shape = tuple(image_shape)
  jax.block_until_ready(jnp.zeros(()))
  rows = []
  kx, ky = jax.random.split(jax.random.PRNGKey(seed))  # Also starts the backend before timing.
  x = jax.random.normal(kx, (batch,) + image_shape, jnp.float32)
  for name in names:
    op, first, build = _build_seconds(name, image_shape, build_repeats)
    y = jax.random.normal(ky, (batch,) + op.y_shape, jnp.float32)
    rows.append({
        'name': name,
        'y_shape': op.y_shape,
        'build_first_ms': 1e3 * first,
        'build_ms': 1e3 * build,
        'H_ms': 1e3 * time_call(_apply_h, op, x, repeats=repeats),
        'round_trip_ms': 1e3 * time_call(_round_trip, op, x, y, repeats=repeats),
    })
  return rows


# -- networks ----------------------------------------------------------------------------------


def network_config(name):
  """The config of a benchmarked network: 'tiny', 'bundled' (the bundled prior's architecture,
64x64) or one of `configs.NAMES`."""
  if name == 'tiny':
    return TINY
  if name == 'bundled':
    return checkpoints.load_config(bundled.PRIOR)
  if name not in configs.NAMES:
    raise ValueError(f'unknown network {name!r}; known: {", ".join(NETWORKS)}')
  config = configs.get_config(name)
  if config.family not in ('ddpm', 'adm'):
    raise ValueError(f'network {name!r} is a classifier, not a DDRM denoiser')
  return config


def random_params(config, seed=0):
  """Random float32 params for `config` without running `init` (jax.eval_shape + numpy).

  Kernels and embeddings ~ N(0, 1 / fan_in) keep activations O(1) through the network (no
  overflow or denormals to distort timings); GroupNorm scales 1, other vectors 0.
  """
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    if len(s.shape) >= 2:
      fan_in = math.prod(s.shape[:-1])
      return (rng.standard_normal(s.shape, np.float32) / np.sqrt(fan_in)).astype(np.float32)
    name = str(getattr(path[-1], 'key', path[-1]))
    return np.full(s.shape, 1.0 if name == 'scale' else 0.0, np.float32)

  params = jax.tree_util.tree_map_with_path(leaf, configs.param_shapes(config))
  return jax.device_put(params)


def denoiser(config, dtype):
  """`net(params, x, t) -> eps` (labels 0 for class-conditional networks), compute `dtype`."""
  module = config.module(jnp.dtype(dtype))
  if configs.is_class_conditional(config):
    return lambda params, x, t: module.apply({'params': params}, x, t,
                                             jnp.zeros(x.shape[:1], jnp.int32))
  return lambda params, x, t: module.apply({'params': params}, x, t)


def peak_flops(device_kind, platform_name, dtype, precision, cpu_peak_gflops=CPU_PEAK_GFLOPS):
  """The device's dense peak FLOP/s for `dtype` at matmul `precision`, or None if unknown.

  float32 at 'default' precision runs on TF32 tensor cores on NVIDIA GPUs (XLA's default), at
  'highest' in true float32. A CPU's figure is `cpu_peak_gflops` whatever the dtype.
  """
  if platform_name == 'cpu':
    return cpu_peak_gflops * 1e9
  for kind, (half, tf32, fp32) in GPU_PEAK_TFLOPS:
    if kind.lower() in device_kind.lower():
      if jnp.dtype(dtype).itemsize == 2:
        return half * 1e12
      return (fp32 if precision in ('highest', 'float32') else tf32) * 1e12
  return None


# -- compiled-program statistics ---------------------------------------------------------------


def lowered_flops(fn, *args):
  """FLOPs of one call of the jitted `fn` on `args` from XLA's cost analysis of the program
  before optimisation: the same count on every platform (every convolution and dot). The
  optimised program's count would not do: on GPUs it hides convolutions in cuDNN custom calls,
  which it leaves out (or counts as negative)."""
  cost = fn.lower(*args).cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per program.
    cost = cost[0] if cost else {}
  return float((cost or {}).get('flops', float('nan')))


def network_flops(net, params, x, t):
  """FLOPs of one call `net(params, x, t)` (`lowered_flops`), self-attention counted as XLA's two
  einsums whatever `layers.attention_implementation` is in effect: cuDNN's fused attention is a
  custom call, opaque to XLA's cost analysis, and every implementation does the same arithmetic.
  A fresh function is traced: jit reuses a trace of `net` itself, which may have been made
  under another attention setting."""
  with layers.attention_implementation('xla'):
    return lowered_flops(jax.jit(lambda *args: net(*args)), params, x, t)


def memory_bytes(compiled):
  """{'temp', 'argument', 'output', 'alias'} bytes from `compiled.memory_analysis()`."""
  mem = compiled.memory_analysis()
  if mem is None:
    return {}
  return {k: int(getattr(mem, f'{k}_size_in_bytes', 0) or 0)
          for k in ('temp', 'argument', 'output', 'alias')}


_HOST_CALL = re.compile(r'\b(send|recv|send-done|recv-done|outfeed|infeed)\(|'
                        r'custom_call_target="[^"]*(callback|host)[^"]*"', re.I)


def loop_structure(compiled):
  """The optimised program's shape: 'while_loops' (count), 'trip_counts' (the known trip
  counts, sorted), 'convolutions' (instructions, each once, in loops or not), 'host_transfers'
  (callbacks, send/recv, in/outfeed)."""
  text = compiled.as_text()
  loops = re.findall(r'\swhile\(%.*', text)
  trips = sorted(int(n) for n in re.findall(r'"known_trip_count":\{"n":"(\d+)"\}',
                                            '\n'.join(loops)))
  return {'while_loops': len(loops), 'trip_counts': trips,
          'convolutions': len(re.findall(r'\sconvolution\(%|"__cudnn\$conv', text)),
          'host_transfers': len(_HOST_CALL.findall(text))}


def compile_timed(fn, *args):
  """(compiled, lower seconds, compile seconds) of `fn` (a jitted function) for `args`."""
  start = time.perf_counter()
  lowered = fn.lower(*args)
  mid = time.perf_counter()
  compiled = lowered.compile()
  return compiled, mid - start, time.perf_counter() - mid


def device_peak_bytes():
  """The device's peak bytes in use so far in this process (GPU/TPU), else None."""
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  return None if not stats else stats.get('peak_bytes_in_use')


def reference_conv_gflops(repeats=5, statistic='min'):
  """GFLOP/s the device sustains now on a large 3x3 convolution (f32, 256x256, 128 -> 128
  channels, one image): the yardstick of `CPU_PEAK_GFLOPS`, measured to tell how fast a shared
  machine runs at the time of a measurement."""
  x = jnp.ones((1, 256, 256, 128), jnp.float32)
  w = jnp.full((3, 3, 128, 128), 0.01, jnp.float32)
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  compiled = conv.lower(x, w).compile()
  seconds = STATISTICS[statistic](time_calls(compiled, x, w, repeats=repeats, min_seconds=0.5))
  return lowered_flops(conv, x, w) / seconds / 1e9


# -- DDRM --------------------------------------------------------------------------------------


def ddrm_program(net, steps, **sample_kwargs):
  """`jit(run)(params, op, y, key) -> x0`: `steps`-step DDRM with `net(params, x, t)`."""
  def run(params, op, y, key):
    return sampler.sample(lambda x, t: net(params, x, t), op, y, key, steps=steps,
                          **sample_kwargs)
  return jax.jit(run)


def _null_net(params, x, t):
  """A stand-in network of negligible cost: DDRM with it times everything but the network."""
  del params, t
  return 0.5 * x


def overhead_table(names=None, image_shape=(256, 256, 3), batch=1, steps=20, repeats=5,
                   seed=0):
  """Per degradation, the DDRM overhead: {'ddrm_overhead_ms'} of one step of `steps`-step
  DDRM run with a stand-in network of negligible cost (Eq. 7-8 and the operator maps)."""
  names = operators.NAMES if names is None else tuple(names)
  program = ddrm_program(_null_net, steps)
  rows = []
  for name in names:
    op = operators.make(name, tuple(image_shape))
    y = jax.random.normal(jax.random.key(seed), (batch,) + tuple(op.y_shape), jnp.float32)
    key = jax.random.key(seed + 1)
    seconds = time_call(program, None, op, y, key, repeats=repeats)
    rows.append({'ddrm_overhead_ms': 1e3 * seconds / steps})
  return rows


# -- the solvers (DDNM, ΠGDM, DPS, DiffPIR) next to DDRM --------------------------------------

METHODS = ('ddrm',) + tuple(solvers.METHODS)


def method_program(net, method, steps, **sample_kwargs):
  """`jit(run)(params, op, y, key) -> x0`: `steps` steps of `method` ('ddrm' or a solver)."""
  if method == 'ddrm':
    return ddrm_program(net, steps, **sample_kwargs)
  module = solvers.get(method)

  def run(params, op, y, key):
    return module.sample(lambda x, t: net(params, x, t), op, y, key, steps=steps,
                         **sample_kwargs)
  return jax.jit(run)


def solver_rows(methods=METHODS, *, network='tiny', batch=1, deg='sr4', steps=20, sigma_y=0.1,
                repeats=3, statistic='median', params=None, seed=0):
  """Per method, one `steps`-step chain against the bare network call, all timed in turn.

  Returns dicts: method, network, batch, deg, steps, step_ms (one step of the chain),
  fwd_ms (the network call), step_vs_fwd (their ratio: ~1 for DDRM/DDNM/DiffPIR, ~3 for the
  methods that differentiate through the network), overhead_ms (the chain with a stand-in
  network of negligible cost, per step: operator maps, updates, random numbers, the loop) and
  overhead_pct_of_fwd (it as % of the network call). sigma_y in model units (DDNM+'s rule).
  """
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise ValueError(f'unknown methods {unknown}; known: {", ".join(METHODS)}')
  config = network_config(network)
  size, channels = config.image_size, config.in_channels
  if params is None:
    params = random_params(config, seed)
  net = denoiser(config, 'float32')
  op = operators.make(deg, (size, size, channels))
  kx, ky, kt = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, (batch, size, size, channels), jnp.float32)
  y = jax.random.normal(ky, (batch,) + tuple(op.y_shape), jnp.float32)
  t = jax.random.randint(kt, (batch,), 0, 1000, jnp.int32)
  key = jax.random.key(seed + 1)
  chain_args = (params, op, y, key)
  calls = {'fwd': (compile_timed(jax.jit(net), params, x, t)[0], (params, x, t))}
  for method in methods:
    for name, fn in ((method, net), (f'{method} null', _null_net)):
      program = compile_timed(method_program(fn, method, steps, sigma_y=sigma_y), *chain_args)[0]
      calls[name] = (program, chain_args)
  times = time_interleaved(calls, repeats=repeats, min_seconds=1.0)
  stat = {name: STATISTICS[statistic](v) for name, v in times.items()}
  rows = []
  for method in methods:
    step_s, null_s = stat[method] / steps, stat[f'{method} null'] / steps
    rows.append({'method': method, 'network': network, 'batch': batch, 'deg': deg,
                 'steps': steps, 'step_ms': 1e3 * step_s, 'fwd_ms': 1e3 * stat['fwd'],
                 'step_vs_fwd': step_s / stat['fwd'], 'overhead_ms': 1e3 * null_s,
                 'overhead_pct_of_fwd': 100.0 * null_s / stat['fwd']})
  return rows


SOLVER_COLUMNS = ('method', 'network', 'batch', 'deg', 'steps', 'step_ms', 'fwd_ms',
                  'step_vs_fwd', 'overhead_ms', 'overhead_pct_of_fwd')


def blind_row(*, network='tiny', batch=1, kernel_size=7, steps=20, sigma_y=0.04, repeats=3,
              statistic='median', params=None, seed=0):
  """Blind deblurring (`blind.sample_blind` with its defaults) against non-blind DDRM on the
  same blur (`operators.circular_blur` of the true kernel) at the same `steps`, timed in turn.

  Returns a dict: network, batch, kernel_size, steps, passes (the blind passes run), chains
  (those of the last pass, run side by side), blind_ms
  and nonblind_ms (one whole restoration of the batch), blind_vs_nonblind (their ratio; the
  target is <= 2.5) and blind_vs_nonblind_per_pass. sigma_y in model units.
  """
  config = network_config(network)
  size, channels = config.image_size, config.in_channels
  blind.check_kernel_size(kernel_size, (size, size, channels))
  if params is None:
    params = random_params(config, seed)
  net = denoiser(config, 'float32')
  kernel = blind.gaussian_kernel2d(kernel_size)
  op = operators.circular_blur(kernel, (size, size, channels))
  kx, kz = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, (batch, size, size, channels), jnp.float32)
  y = jax.vmap(op.H)(x) + sigma_y * jax.random.normal(kz, x.shape, jnp.float32)
  key = jax.random.key(seed + 1)
  defaults = inspect.signature(blind.sample_blind).parameters
  passes, chains = defaults['passes'].default, defaults['chains'].default

  def blind_run(params, y, key):
    return blind.sample_blind(lambda x, t: net(params, x, t), y, key, kernel_size, steps=steps,
                              sigma_y=sigma_y)[0]

  calls = {'blind': (compile_timed(jax.jit(blind_run), params, y, key)[0], (params, y, key)),
           'nonblind': (compile_timed(ddrm_program(net, steps, sigma_y=sigma_y), params, op, y,
                                      key)[0], (params, op, y, key))}
  times = time_interleaved(calls, repeats=repeats, min_seconds=1.0)
  stat = {name: STATISTICS[statistic](v) for name, v in times.items()}
  ratio = stat['blind'] / stat['nonblind']
  return {'network': network, 'batch': batch, 'kernel_size': kernel_size, 'steps': steps,
          'passes': passes, 'chains': chains, 'blind_ms': 1e3 * stat['blind'],
          'nonblind_ms': 1e3 * stat['nonblind'], 'blind_vs_nonblind': ratio,
          'blind_vs_nonblind_per_pass': ratio / passes}


BLIND_COLUMNS = ('network', 'batch', 'kernel_size', 'steps', 'passes', 'chains', 'blind_ms',
                 'nonblind_ms', 'blind_vs_nonblind', 'blind_vs_nonblind_per_pass')


@dataclasses.dataclass(frozen=True)
class Case:
  """One benchmark row: a network at a batch size, compute dtype and matmul precision."""
  network: str
  batch: int
  dtype: str = 'float32'
  precision: str = 'default'
  deg: str = 'sr4'
  steps: int = 20
  steps_timed: int = 20  # DDRM steps actually run when timing (extrapolated to `steps`).
  repeats: int = 3
  statistic: str = 'median'  # Of the timed calls; 'min' (least disturbed) on a shared machine.
  attention: str = 'auto'  # layers.attention_implementation: 'auto', 'xla' or 'cudnn'.


def check_case(case):
  """ValueError for a bad `Case`, before any compilation."""
  network_config(case.network)
  if case.dtype not in DTYPES:
    raise ValueError(f'dtype must be one of {DTYPES}, got {case.dtype!r}')
  if case.precision not in PRECISIONS:
    raise ValueError(f'precision must be one of {PRECISIONS}, got {case.precision!r}')
  if case.deg not in operators.NAMES:
    raise ValueError(f'unknown degradation {case.deg!r}; known: {", ".join(operators.NAMES)}')
  for field in ('batch', 'steps', 'steps_timed', 'repeats'):
    value = getattr(case, field)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f'{field} must be an int >= 1, got {value!r}')
  if case.attention not in layers.ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f'attention must be one of {layers.ATTENTION_IMPLEMENTATIONS}, got '
                     f'{case.attention!r}')
  if case.statistic not in STATISTICS:
    raise ValueError(f'statistic must be one of {tuple(STATISTICS)}, got {case.statistic!r}')
  if case.steps_timed > case.steps:
    raise ValueError(f'steps_timed ({case.steps_timed}) must be <= steps ({case.steps})')


def network_row(case, *, params=None, cpu_peak_gflops=CPU_PEAK_GFLOPS, seed=0):
  """Measures one `Case`; returns a dict (the columns of `NETWORK_COLUMNS` and more).

  Compiles (and times the compilation of) the `case.steps`-step DDRM program, times
  `case.steps_timed` steps (a separately compiled program when fewer) and scales to
  `case.steps`, times the bare network call and DDRM with a stand-in network of negligible
  cost (the DDRM overhead: operator maps, Eq. 8 arithmetic, random numbers, the loop).
  """
  check_case(case)
  env = environment()
  config = network_config(case.network)
  size, channels = config.image_size, config.in_channels
  if params is None:
    params = random_params(config, seed)
  net = denoiser(config, case.dtype)
  op = operators.make(case.deg, (size, size, channels))
  kx, ky, kt = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, (case.batch, size, size, channels), jnp.float32)
  y = jax.random.normal(ky, (case.batch,) + tuple(op.y_shape), jnp.float32)
  t = jax.random.randint(kt, (case.batch,), 0, 1000, jnp.int32)
  key = jax.random.key(seed + 1)
  b = case.batch

  with jax.default_matmul_precision(case.precision), \
      layers.attention_implementation(case.attention):
    fwd, fwd_lower, fwd_compile = compile_timed(jax.jit(net), params, x, t)
    full, lower_s, compile_s = compile_timed(ddrm_program(net, case.steps), params, op, y, key)
    timed = full
    if case.steps_timed != case.steps:
      timed, _, _ = compile_timed(ddrm_program(net, case.steps_timed), params, op, y, key)
    null, _, _ = compile_timed(ddrm_program(_null_net, case.steps), params, op, y, key)
    flops_fwd = network_flops(net, params, x, t)

  ref_gflops = reference_conv_gflops(statistic=case.statistic)
  times = time_interleaved({'fwd': (fwd, (params, x, t)), 'chain': (timed, (params, op, y, key)),
                            'null': (null, (params, op, y, key))},
                           repeats=case.repeats, min_seconds=1.0)
  stat = STATISTICS[case.statistic]
  fwd_s, chain_s, null_s = stat(times['fwd']), stat(times['chain']), stat(times['null'])
  step_s = chain_s / case.steps_timed
  ddrm_s = step_s * case.steps  # The init (Eq. 7) is part of the overhead; see null_s.
  overhead_step_s = null_s / case.steps
  flops_s = flops_fwd * case.steps / ddrm_s
  peak = peak_flops(env['device_kind'], env['platform'], case.dtype, case.precision,
                    cpu_peak_gflops)
  mem = memory_bytes(full)
  structure = loop_structure(full)
  fwd_convs = loop_structure(fwd)['convolutions']
  device_peak = device_peak_bytes()
  return {
      'network': case.network, 'batch': b, 'dtype': case.dtype, 'precision': case.precision,
      'attention': case.attention,
      'deg': case.deg, 'image': f'{size}x{size}', 'steps': case.steps,
      'steps_timed': case.steps_timed,
      'lower_s': lower_s, 'xla_compile_s': compile_s, 'compile_s': lower_s + compile_s,
      'fwd_compile_s': fwd_lower + fwd_compile,
      's_per_image': ddrm_s / b, 'images_per_s': b / ddrm_s,
      'step_ms': 1e3 * step_s, 'fwd_ms': 1e3 * fwd_s,
      'overhead_ms': 1e3 * overhead_step_s, 'overhead_pct': 100.0 * overhead_step_s / step_s,
      'step_minus_fwd_pct': 100.0 * (step_s - fwd_s) / step_s,
      'gflop_per_fwd': flops_fwd / 1e9, 'tflops': flops_s / 1e12,
      'peak_pct': float('nan') if peak is None else 100.0 * flops_s / peak,
      'ref_conv_gflops': ref_gflops,
      'fwd_pct_of_ref': 100.0 * flops_fwd / fwd_s / (ref_gflops * 1e9),
      'temp_mib': mem.get('temp', 0) / 2**20, 'args_mib': mem.get('argument', 0) / 2**20,
      'device_peak_mib': None if device_peak is None else device_peak / 2**20,
      'scan_is_loop': case.steps in structure['trip_counts'],
      'conv_copies': structure['convolutions'] / max(fwd_convs, 1),
      'host_transfers': structure['host_transfers'],
      'statistic': case.statistic,
      'fwd_times_s': times['fwd'], 'chain_times_s': times['chain'],
      'null_times_s': times['null'],
  }


NETWORK_COLUMNS = ('network', 'batch', 'dtype', 'precision', 'attention', 'steps_timed', 'compile_s',
                   's_per_image', 'images_per_s', 'step_ms', 'fwd_ms', 'overhead_pct',
                   'step_minus_fwd_pct', 'gflop_per_fwd', 'tflops', 'peak_pct',
                   'ref_conv_gflops', 'fwd_pct_of_ref', 'temp_mib', 'device_peak_mib')
PROGRAM_COLUMNS = ('network', 'batch', 'dtype', 'precision', 'attention', 'lower_s',
                   'xla_compile_s',
                   'compile_s', 'fwd_compile_s', 'scan_is_loop', 'conv_copies', 'host_transfers',
                   'args_mib', 'temp_mib')


def markdown_table(rows, columns=None):
  """Rows (dicts) as a Markdown table; floats with 2 decimals (3 significant if smaller)."""
  columns = list(rows[0]) if columns is None else list(columns)

  def fmt(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
      return 'n/a'
    if isinstance(v, float):
      return f'{v:.3g}' if 0 < abs(v) < 1 else f'{v:.2f}'
    return str(v)

  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(fmt(r[c]) for c in columns) + ' |' for r in rows]
  return '\n'.join(lines)


def header(env):
  """One line naming the device, its count, jax and Python."""
  return (f"device {env['device']} (x{env['device_count']}), {env['machine']}, "
          f"jax {env['jax']}, Python {env['python']}")



# -- any size by tiles -------------------------------------------------------------------------


def tiling_rows(net, params, tile, image_sizes, tiles_per_call=(None,), *, deg='sr4', steps=3,
                repeats=3, statistic='min', seed=0):
  """Cost of a DDRM step on images larger than the network (`ddrm_jax.tiling`), batch 1.

  For each image size (H, W) and `tiles_per_call` bound: the tiles, seconds per DDRM step, one
  tile's network call, all tiles in one network call, and `step_vs_tiles` = step / (tiles x one
  tile's call) (the issue's bound: <= 1.1), `step_vs_batched` = step / (all tiles in one call),
  and the DDRM program's temporary memory (XLA's memory analysis; the `tiles_per_call` bound).
  `net(params, x, t)` takes (N, tile, tile, C). Calls are timed in turn (`time_interleaved`);
  `statistic` ('min' or 'median') of `repeats` calls each.
  """
  from ddrm_jax import tiling  # pylint: disable=g-import-not-at-top
  channels = 3
  call = jax.jit(net)
  one = jnp.zeros((1, tile, tile, channels), jnp.float32)
  t1 = jnp.full((1,), 500, jnp.int32)
  rows = []
  for size in image_sizes:
    n = tiling.num_tiles(size, tile)
    tiles = jnp.zeros((n, tile, tile, channels), jnp.float32)
    tn = jnp.full((n,), 500, jnp.int32)
    op = operators.make(deg, tuple(size) + (channels,))
    y = jax.random.normal(jax.random.key(seed), (1,) + tuple(op.y_shape), jnp.float32)
    for per_call in tiles_per_call:
      def run(params, op, y, key, per_call=per_call):
        whole = tiling.tiled(lambda x, t: net(params, x, t), tile, tiles_per_call=per_call)
        return sampler.sample(whole, op, y, key, steps=steps)
      program, _, _ = compile_timed(jax.jit(run), params, op, y, jax.random.key(seed + 1))
      times = time_interleaved({
          'ddrm': (program, (params, op, y, jax.random.key(seed + 1))),
          'one': (call, (params, one, t1)),
          'all': (call, (params, tiles, tn)),
      }, repeats=repeats)
      med = {k: STATISTICS[statistic](v) for k, v in times.items()}
      step = med['ddrm'] / steps
      rows.append({'image': f'{size[0]}x{size[1]}', 'tiles': n,
                   'tiles_per_call': per_call or n, 'step_ms': 1e3 * step,
                   'tile_call_ms': 1e3 * med['one'], 'all_tiles_call_ms': 1e3 * med['all'],
                   'step_vs_tiles': step / (n * med['one']), 'step_vs_batched': step / med['all'],
                   'temp_mib': memory_bytes(program).get('temp', float('nan')) / 2**20})
  return rows
