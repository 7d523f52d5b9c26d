"""Dataset-scale restoration: the loop behind `ddrm-restore`.

One process per host (or per GPU), every local device, files streamed, outputs written as they
are done, runs that can be resumed:

- Shares: of the sorted input list (global indices 0..n-1), process p of P restores the images
  i with i % P == p. Image i uses the key fold_in(key(seed), i) (`restore.index_keys`), so
  every output is the same whatever P, the local device count and the batch size.
- Devices: a step takes `batch_size` images of the process (rounded up to a multiple of the
  local device count) and dispatches them in rounds of one image per device: a compiled
  program restores D images (D = `jax.local_device_count()`) split over a 1-D mesh
  (`sampler.batch_mesh`, `sampler.shard_batch`), so each device's network batch is one image's
  `num_samples` chains and the files are the same bits whatever `batch_size`. Params are
  replicated; the operator comes with the image's group. Processes never wait for each other
  until the end.
- Groups: `Job.groups` are images of one size (and operator): one compilation per group
  (`--resize=tile` runs one per image size); records go back to input order at the merge.
- Streaming: `Prefetcher` reads and decodes files on background threads, a bounded number of
  images ahead of the device; a step's results are written (PNGs encoded on threads too) while
  the next step computes.
- Written as it goes: every output file is written under a temporary name and renamed
  (`io.atomic_write`), then the image's record (its output files and metrics, or its error) is
  appended to the process's journal `progress/process-<p>.jsonl` (flushed and fsynced after
  each batch). A process killed at any moment leaves complete files and journal lines (a cut
  last line is dropped on resume).
- The end: after a barrier (`sync_global_devices` when P > 1), process 0 merges the journals
  into metrics.json (the format of a single run), grid.png (the first 16 images of the first
  one's size, read back from their files) and run.json (settings, each process's throughput).
  Ctrl-C (or an error) in a single process merges what is done (status interrupted).
- Resume: images whose record says they are done and whose files are all there are skipped;
  run.json of other settings is refused; a finished run does nothing.
"""

import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ddrm_jax import io

PROGRESS_DIR = 'progress'
RUN_JSON = 'run.json'
METRICS_JSON = 'metrics.json'
GRID_PNG = 'grid.png'
GRID_ROWS = 16
GRID_MIN_CELL = 256  # grid cells smaller than this are enlarged (nearest neighbour)
METRIC_FIELDS = ('psnr', 'ssim', 'baseline_psnr', 'baseline_ssim')
SAMPLE_FIELDS = ('sample_psnr', 'sample_ssim')


class RunError(ValueError):
  """A run that cannot start or go on (resume refused, bad distributed flags); one line."""


class OutOfMemory(RunError):
  """The device ran out of memory restoring `images` images of `shape` at a time."""

  def __init__(self, shape, images):
    super().__init__(f'out of memory restoring {"x".join(map(str, shape))} images, {images} '
                     'at a time')
    self.shape, self.images = tuple(shape), images


def is_out_of_memory(e):
  text = f'{type(e).__name__} {e}'
  return isinstance(e, MemoryError) or 'RESOURCE_EXHAUSTED' in text or (
      'out of memory' in text.lower())


def one_line(e):
  """An exception's message on one line (whitespace collapsed), or its type's name."""
  return ' '.join(str(e).split()) or type(e).__name__


# -- several processes --------------------------------------------------------------------------


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None,
                           auto=False):
  """Starts JAX's multi-controller runtime (`jax.distributed.initialize`); a no-op without
  arguments and `auto`. `auto`: JAX finds the coordinator itself (TPU pods, SLURM). Call it
  before any JAX computation."""
  given = {'--coordinator_address': coordinator_address, '--num_processes': num_processes,
           '--process_id': process_id}
  named = [k for k, v in given.items() if v is not None]
  if auto and named:
    raise RunError(f'--distributed finds the coordinator itself; leave out {", ".join(named)}')
  if not auto and not named:
    return
  import jax  # pylint: disable=g-import-not-at-top
  if not auto:
    missing = [k for k, v in given.items() if v is None]
    if missing:
      raise RunError(f'{", ".join(named)} also need{"s" if len(named) == 1 else ""} '
                     f'{", ".join(missing)} (or pass --distributed where JAX finds them itself)')
    if num_processes < 1:
      raise RunError(f'--num_processes must be >= 1, got {num_processes}')
    if not 0 <= process_id < num_processes:
      raise RunError(f'--process_id must be in [0, {num_processes}), got {process_id}')
  try:
    if auto:
      jax.distributed.initialize()
    else:
      jax.distributed.initialize(coordinator_address=coordinator_address,
                                 num_processes=num_processes, process_id=process_id)
  except (RuntimeError, ValueError) as e:
    raise RunError(f'jax.distributed.initialize failed: {one_line(e)}') from None


def process_share(n, index, count):
  """The global indices of the images process `index` of `count` restores."""
  return range(index, n, count)


def device_batch(batch_size, num_devices):
  """Rows of a step: `batch_size` rounded up to a multiple of the device count."""
  return -(-batch_size // num_devices) * num_devices


def barrier(name):
  """Waits for every process (a no-op in a single process)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def _allgather_rows(row):
  """(P, len(row)) float64 from every process's row of numbers."""
  import jax  # pylint: disable=g-import-not-at-top
  row = np.asarray(row, np.float64)[None]
  if jax.process_count() == 1:
    return row
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  # float32 travels (x64 is usually off): split each number into a coarse and a fine part.
  hi = row.astype(np.float32)
  lo = (row - hi).astype(np.float32)
  got = np.asarray(multihost_utils.process_allgather(np.concatenate([hi, lo], axis=1)))
  got = got.reshape(jax.process_count(), -1).astype(np.float64)
  return got[:, :row.shape[1]] + got[:, row.shape[1]:]


# -- files --------------------------------------------------------------------------------------


def write_json(path, obj):
  text = json.dumps(obj, indent=1, default=str)
  io.atomic_write(path, lambda fh: fh.write(text), binary=False)


def read_json(path):
  """The object in a JSON file, None when there is none; RunError when it is unreadable."""
  if not os.path.exists(path):
    return None
  try:
    with open(path) as fh:
      return json.load(fh)
  except (OSError, ValueError) as e:
    raise RunError(f'{path}: unreadable ({one_line(e)})') from None


def journal_path(out_dir, process_index):
  return os.path.join(out_dir, PROGRESS_DIR, f'process-{process_index:05d}.jsonl')


class Journal:
  """A process's append-only JSON-lines file of image records."""

  def __init__(self, path):
    self.path = path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    self._fh = open(path, 'a+b')
    self._fh.seek(0, os.SEEK_END)
    size = self._fh.tell()
    if size:  # Drop a line cut by a kill.
      self._fh.seek(0)
      data = self._fh.read()
      keep = data.rfind(b'\n') + 1
      if keep != size:
        self._fh.truncate(keep)
      self._fh.seek(0, os.SEEK_END)

  def append(self, records):
    if not records:
      return
    self._fh.write(b''.join(json.dumps(r).encode() + b'\n' for r in records))
    self._fh.flush()
    os.fsync(self._fh.fileno())

  def close(self):
    self._fh.close()


def read_journals(out_dir):
  """{index: record} from every process's journal; a record that restored the image wins over
  one that failed it. Unparsable (cut) lines are skipped."""
  records = {}
  d = os.path.join(out_dir, PROGRESS_DIR)
  if not os.path.isdir(d):
    return records
  for name in sorted(os.listdir(d)):
    if not (name.startswith('process-') and name.endswith('.jsonl')):
      continue
    with open(os.path.join(d, name), 'rb') as fh:
      for line in fh:
        try:
          r = json.loads(line)
          i = int(r['index'])
        except (ValueError, KeyError, TypeError):
          continue
        if 'outputs' in r or i not in records:
          records[i] = r
  return records


def _flat(outputs):
  """The relative paths of an image's outputs ({kind: path or [paths]})."""
  return [p for v in outputs.values() for p in (v if isinstance(v, list) else [v])]


def _complete(out_dir, record):
  if 'outputs' not in record:
    return False
  for rel in _flat(record['outputs']):
    try:
      if os.path.getsize(os.path.join(out_dir, rel)) == 0:
        return False
    except OSError:
      return False
  return True


def inputs_digest(files):
  """A digest of the input list (absolute paths, in order): a resumed run must have the same."""
  h = hashlib.sha256()
  for f in files:
    h.update(os.path.abspath(f).encode() + b'\n')
  return h.hexdigest()


# -- reading ahead ------------------------------------------------------------------------------


class Prefetcher:
  """`fn(item)` for `items` in order on `workers` threads, at most `depth` items ahead.

  Iterating yields (item, value, error): ValueError from `fn` (a bad file) comes back as
  `error`, anything else is raised. `workers` = 0 reads in the caller's thread when asked
  (no prefetching). `wait_s` is the time the caller spent waiting for results.
  """

  def __init__(self, fn, items, workers=4, depth=16):
    self.fn, self.items = fn, items
    self.workers, self.depth = int(workers), max(1, int(depth))
    self.wait_s = 0.0

  def _call(self, item):
    try:
      return self.fn(item), None
    except ValueError as e:
      return None, e

  def __iter__(self):
    if self.workers <= 0:
      for item in self.items:
        t0 = time.perf_counter()
        value, error = self._call(item)
        self.wait_s += time.perf_counter() - t0
        yield item, value, error
      return
    pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix='prefetch')
    try:
      it = iter(self.items)
      window = collections.deque()
      for item in it:
        window.append((item, pool.submit(self._call, item)))
        if len(window) >= self.depth:
          break
      while window:
        item, fut = window.popleft()
        for nxt in it:
          window.append((nxt, pool.submit(self._call, nxt)))
          break
        t0 = time.perf_counter()
        value, error = fut.result()
        self.wait_s += time.perf_counter() - t0
        yield item, value, error
    finally:
      pool.shutdown(wait=False, cancel_futures=True)


# -- what a run writes --------------------------------------------------------------------------


def metric_fields(num_samples):
  return METRIC_FIELDS + (SAMPLE_FIELDS if num_samples > 1 else ())


def output_paths(name, paper, num_samples, kernels=False):
  """{kind: path relative to the output folder} of one image's files."""
  p = lambda sub, stem: f'{sub}/{stem}.png'
  out = {'restored': p('restored', name), 'degraded': p('degraded', name)}
  if paper:
    out['original'] = p('original', name)
    out['baseline'] = p('baseline', name)
  if num_samples > 1:
    out['std'] = p('std', name)
    out['samples'] = [p('samples', f'{name}_{k}') for k in range(num_samples)]
  if kernels:  # Blind deblurring: the estimated kernel.
    out['kernel'] = f'kernels/{name}.npy'
    out['kernel_png'] = p('kernels', name)
  return out


def write_outputs(out_dir, paths, res, j):
  """Writes the images of row j of `res` to `paths` (`output_paths`), each atomically."""
  full = lambda rel: os.path.join(out_dir, *rel.split('/'))
  for kind in ('restored', 'degraded', 'original', 'baseline'):
    if kind in paths:
      io.write_image(full(paths[kind]), res[kind][j])
  for k, rel in enumerate(paths.get('samples', ())):
    io.write_image(full(rel), res['samples'][j, k])
  if 'std' in paths:
    # std in [0, 1] image units = std_model / 2; write_image maps [-1, 1] -> [0, 1].
    io.write_image(full(paths['std']), res['std'][j] - 1.0)
  if 'kernel' in paths:  # The estimate as an array, and as a picture (its maximum white).
    kernel = np.asarray(res['kernel'][j], np.float32)
    io.atomic_write(full(paths['kernel']), lambda fh: np.save(fh, kernel))
    view = kernel / max(float(kernel.max()), 1e-12)
    scale = max(1, 64 // max(kernel.shape))  # Nearest-neighbour blocks, at least 64 px.
    view = io.upsample_nearest(view, (scale * kernel.shape[0], scale * kernel.shape[1]))
    io.write_image(full(paths['kernel_png']), view[..., None] * 2.0 - 1.0)


def _json_number(v):
  v = float(v)
  return v if math.isfinite(v) else None


def merge_metrics(rows):
  """metrics.json of records [{'file': ..., 'name': ..., 'outputs': ..., field: value}] in input
  order: their means too."""
  fields = [k for k in rows[0] if k not in ('file', 'name', 'outputs')] if rows else []
  mean = {}
  for k in fields:
    vals = [r[k] for r in rows if r.get(k) is not None]
    mean[k] = _json_number(np.mean(vals)) if vals else None
  return {'mean': mean, 'images': rows}


def rss_bytes():
  """This process's resident memory now (Linux), or its peak elsewhere."""
  try:
    with open('/proc/self/statm') as fh:
      return int(fh.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
  except (OSError, ValueError, IndexError):
    import resource  # pylint: disable=g-import-not-at-top
    scale = 1 if sys.platform == 'darwin' else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class Progress:
  """Images/s and ETA of this process: a tqdm bar on a terminal, else a line every
  `every_s` seconds (cluster logs)."""

  def __init__(self, total, desc, every_s=60.0, file=None):
    self.total, self.desc, self.every_s = total, desc, every_s
    self.file = file or sys.stderr
    self.done, self.t0, self.last = 0, time.time(), time.time()
    self.bar = None
    if total and self.file.isatty():
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self.bar = tqdm(total=total, unit='img', desc=desc, file=self.file)

  def rate(self):
    dt = time.time() - self.t0
    return self.done / dt if dt > 0 else 0.0

  def line(self):
    r = self.rate()
    eta = (self.total - self.done) / r if r > 0 else float('nan')
    eta_s = '-'
    if math.isfinite(eta):
      eta_s = f'{int(eta) // 3600}:{int(eta) // 60 % 60:02d}:{int(eta) % 60:02d}'
    return f'{self.desc}: {self.done}/{self.total} images, {r:.2f} img/s, ETA {eta_s}'

  def update(self, n):
    self.done += n
    if self.bar is not None:
      self.bar.update(n)
    elif time.time() - self.last >= self.every_s:
      self.last = time.time()
      print(self.line(), file=self.file, flush=True)

  def clear(self):
    if self.bar is not None:
      self.bar.clear()

  def close(self):
    if self.bar is not None:
      self.bar.close()


# -- the run ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Group:
  """Images restored by one compiled program: `indices` into the input list, the arguments
  `consts` passed after the run's own (e.g. the operator of their size), `info` recorded with
  each image (e.g. its tiling), `note` for the compilation line."""
  key: Any
  indices: Sequence[int]
  consts: tuple = ()
  info: Optional[dict] = None
  note: str = ''


@dataclasses.dataclass
class Job:
  """What to restore and where; everything but the network.

  `read(path)` returns a file's input array (ValueError for a bad file: reported, skipped).
  `groups`: the images by program (default: one group of all, no extra consts); `errors`:
  {index: message} of images known bad beforehand (reported, recorded as failed).
  `padding` ((top, bottom), (left, right)): restorations are cropped by it
  (`operators.crop_padding`). `kernels`: blind deblurring, each image's estimated kernel is
  written; with `true_kernel` its `blind.kernel_ncc` is a metric.
  `settings` (JSON-able) must match on resume; `info` goes into run.json as it is; `tiling`
  (with `images`: each restored image's group info) too when given.
  `out_dir`: the output folder (made at the start; every process must reach it).
  """
  files: Sequence[str]
  names: Sequence[str]
  read: Callable[[str], np.ndarray]
  out_dir: str
  seed: int = 0
  batch_size: int = 4
  num_samples: int = 1
  # Images each device restores together in one program. 1: every file is the same bits
  # whatever batch_size and device count; more: larger network batches (faster on
  # accelerators), files then equal across batch sizes only to within float rounding.
  images_per_device: int = 1
  paper: bool = True
  labels: Optional[Sequence[int]] = None
  groups: Optional[Sequence[Group]] = None
  errors: dict = dataclasses.field(default_factory=dict)
  padding: Any = None
  kernels: bool = False
  true_kernel: Optional[np.ndarray] = None
  resume: bool = False
  settings: dict = dataclasses.field(default_factory=dict)
  info: dict = dataclasses.field(default_factory=dict)
  tiling: Optional[dict] = None
  prefetch: int = 2  # Batches read ahead; 0: read in the loop.
  workers: int = 4  # Reader threads.
  prog: str = 'ddrm-restore'
  log_every_s: float = 60.0
  on_batch: Optional[Callable[[dict], Any]] = None  # Called after each batch (tests, logs).

  def all_groups(self):
    if self.groups is not None:
      return list(self.groups)
    return [Group(key=None, indices=[i for i in range(len(self.files)) if i not in self.errors])]


@dataclasses.dataclass
class Plan:
  """A run about to start: what this process restores, what is already done."""
  job: Job
  process_index: int
  process_count: int
  share: list  # Global indices of this process still to restore.
  skipped: int  # Of this process's share, already done by an earlier run.
  finished: bool  # Everything done and merged by an earlier run: nothing to do.
  out_dir: str


@dataclasses.dataclass
class Result:
  out_dir: str
  total: int  # Images in the whole input list.
  restored: int  # By this process, this run.
  skipped: int  # Of this process's share, done by an earlier run.
  failed: list  # Files this process could not restore (reported on the way).
  mean: Optional[dict]  # The merged metric means (process 0, paper protocol).
  all_done: int  # Images of the whole list with their outputs (process 0 after the merge).
  compile_s: Optional[float]
  run_s: float  # Wall time of the loop, compilation included.
  images_per_s: float  # Of this process, compilation excluded.
  input_wait_s: float  # Time the loop waited for input files (reading without prefetching).


def _read_settings(out_dir, job):
  """Checks run.json of an existing output folder on --resume; returns whether it says done."""
  info = read_json(os.path.join(out_dir, RUN_JSON))
  if info is None:
    if os.listdir(out_dir):
      raise RunError(f'--resume: {out_dir} has no {RUN_JSON} of a ddrm-restore run; nothing to '
                     'resume there')
    return False
  if not isinstance(info, dict) or 'settings' not in info:
    raise RunError(f'--resume: {os.path.join(out_dir, RUN_JSON)} was not written by a resumable '
                   'run; restore into a new --output')
  old, new = info['settings'], json.loads(json.dumps(job.settings, default=str))
  diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
  if diff:
    shown = ', '.join(f'{k} ({old.get(k)!r} there, {new.get(k)!r} now)' for k in diff[:3])
    more = f' and {len(diff) - 3} more' if len(diff) > 3 else ''
    raise RunError(f'--resume: {out_dir} holds a run with other settings: {shown}{more}; use '
                   'the same flags or a new --output')
  return bool(info.get('complete'))


def prepare(job):
  """Checks an existing output folder (on resume) and finds this process's work; no JAX
  computation, no writes. Every process calls it."""
  import jax  # pylint: disable=g-import-not-at-top
  p, count = jax.process_index(), jax.process_count()
  if len(job.names) != len(job.files):
    raise ValueError('one output name per input file')
  mine = list(process_share(len(job.files), p, count))
  finished, done = False, set()
  out_dir = job.out_dir
  if job.resume and os.path.isdir(out_dir):
    complete = _read_settings(out_dir, job)
    records = read_journals(out_dir)
    done = {i for i in mine if i in records and _complete(out_dir, records[i])}
    if complete:
      ok = sum(1 for r in records.values() if 'outputs' in r)
      failed = len(records) - ok
      finished = failed == 0 and ok == len(job.files) and len(done) == len(mine)
  share = [i for i in mine if i not in done]
  if count > 1:  # One decision for all: a process that stops early would leave the others.
    finished = bool(_allgather_rows([float(finished)]).min())
  barrier('ddrm-runner-prepare')  # Every process has read the folder before anyone writes.
  return Plan(job=job, process_index=p, process_count=count, share=share, skipped=len(done),
              finished=finished, out_dir=out_dir)


def _start_out_dir(plan):
  """Process 0 makes the folder, drops stale journals of a run not resumed, writes run.json."""
  job = plan.job
  if plan.process_index == 0:
    os.makedirs(plan.out_dir, exist_ok=True)
    d = os.path.join(plan.out_dir, PROGRESS_DIR)
    if not job.resume and os.path.isdir(d):
      for name in os.listdir(d):  # Only our own journals.
        if name.startswith('process-') and name.endswith('.jsonl'):
          os.remove(os.path.join(d, name))
    info = read_json(os.path.join(plan.out_dir, RUN_JSON)) if job.resume else None
    if not info:
      write_json(os.path.join(plan.out_dir, RUN_JSON), _run_info(job, complete=False))
  barrier('ddrm-runner-start')


def _run_info(job, complete, **more):
  import jax  # pylint: disable=g-import-not-at-top
  info = dict(job.info)
  info.update({
      'settings': job.settings,
      'inputs': len(job.files),
      'status': 'running',
      'complete': complete,
      'device': str(jax.local_devices()[0].device_kind),
      'local_devices': jax.local_device_count(),
      'processes': jax.process_count(),
      'jax': jax.__version__,
      'python': platform.python_version(),
  })
  info.update(more)
  return info


def run(plan, step, consts=(), *, devices=None, log=None, err=None):
  """Restores this process's share of `plan`; returns `Result`.

  `step(*consts, *group.consts, inputs, keys, labels)` -> the dict of `restore.restore_batch`
  (e.g. `restore.make_restore_step(...)` with consts (params, classifier_params) and group
  consts (op,)). Every process calls it (the end is a barrier). `log(msg)` / `err(msg)` print
  info / error lines. Ctrl-C (KeyboardInterrupt) and errors in a single process merge what is
  done before they propagate; the exception then carries `.result` (a `Result`).
  Out of memory on the device raises `OutOfMemory`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from ddrm_jax import restore  # pylint: disable=g-import-not-at-top
  from ddrm_jax import sampler  # pylint: disable=g-import-not-at-top
  job = plan.job
  log = log or (lambda m: print(m, file=sys.stderr, flush=True))
  err = err or (lambda m: print(f'{job.prog}: error: {m}', file=sys.stderr, flush=True))
  p, count = plan.process_index, plan.process_count
  devices = list(jax.local_devices() if devices is None else devices)
  num_dev = len(devices)
  mesh = sampler.batch_mesh(devices)
  per_round = num_dev * job.images_per_device  # Images in one program (one round).
  step_images = device_batch(job.batch_size, per_round)  # Read, dispatched, written together.
  _start_out_dir(plan)
  consts = sampler.replicate(tuple(consts), mesh)

  mine = set(plan.share)
  errors = [i for i in plan.share if i in job.errors]
  chunks = []  # (group, indices) in the order they run.
  for g in job.all_groups():
    todo = [i for i in g.indices if i in mine and i not in job.errors]
    chunks += [(g, todo[lo:lo + step_images]) for lo in range(0, len(todo), step_images)]
  order = [i for _, c in chunks for i in c]

  desc = job.prog if count == 1 else f'{job.prog} [process {p}/{count}]'
  bar = Progress(len(plan.share), desc, every_s=job.log_every_s)
  reader = Prefetcher(lambda i: job.read(job.files[i]), order, workers=job.workers,
                      depth=max(1, job.prefetch) * step_images)
  if job.prefetch <= 0:
    reader.workers = 0
  state = {'journal': None, 'restored': 0, 'compute_s': 0.0}
  failed, compiled, compile_s = [], {}, None
  t_start = time.time()

  def journal():
    if state['journal'] is None:
      state['journal'] = Journal(journal_path(plan.out_dir, p))
    return state['journal']

  def fail(i, message):
    failed.append(job.files[i])
    bar.clear()
    err(message)
    journal().append([{'index': i, 'file': job.files[i], 'error': message}])

  def fetch(group, ok, outs):
    try:
      outs = jax.device_get(outs)
    except Exception as e:  # pylint: disable=broad-except
      if is_out_of_memory(e):
        raise OutOfMemory(group.key or (), len(ok)) from None
      raise
    return {k: np.concatenate([o[k][:n] for n, o in outs]) for k in outs[0][1]}

  def finish(pending):
    group, ok, outs, inputs, t_sent = pending
    res = fetch(group, ok, outs)
    state['compute_s'] += time.time() - t_sent
    if job.padding is not None:  # Back to the photo's own size.
      from ddrm_jax import operators  # pylint: disable=g-import-not-at-top
      for k in ('y', 'degraded', 'samples', 'restored', 'std'):
        if k in res:
          res[k] = operators.crop_padding(res[k], job.padding)
    if job.paper:
      res['original'] = inputs
    records, writes = [], []
    for j, i in enumerate(ok):
      if not all(np.isfinite(res[k][j]).all() for k in ('samples', 'restored') if k in res):
        fail(i, f'{job.files[i]}: the restoration has non-finite values (NaN or inf); nothing '
             'written for it (check the checkpoint and --sigma_y)')
        continue
      paths = output_paths(job.names[i], job.paper, job.num_samples, job.kernels)
      writes.append((paths, j))
      rec = {'index': i, 'file': job.files[i], 'name': job.names[i], 'outputs': paths}
      if group.info is not None:
        rec['info'] = group.info
      if job.paper:
        m = {k: _json_number(res[k][j]) for k in metric_fields(job.num_samples)}
        if job.kernels and job.true_kernel is not None:
          from ddrm_jax import blind  # pylint: disable=g-import-not-at-top
          m['kernel_ncc'] = _json_number(blind.kernel_ncc(res['kernel'][j], job.true_kernel))
        rec['metrics'] = m
      records.append(rec)
    j_ = journal()
    # PNG encoding releases the GIL.
    list(writer.map(lambda a: write_outputs(plan.out_dir, a[0], res, a[1]), writes))
    j_.append(records)  # Only after every file of the batch is in place.
    state['restored'] += len(records)
    bar.update(len(ok))
    if job.on_batch is not None:
      job.on_batch({'indices': list(ok), 'restored': state['restored'], 'rss': rss_bytes(),
                    'time': time.time()})

  def stats():
    run_s = time.time() - t_start
    busy = run_s - (compile_s or 0.0)  # Throughput without the one-off compilation.
    ips = state['restored'] / busy if busy > 0 and state['restored'] else 0.0
    return [state['restored'], len(failed), plan.skipped, run_s, ips, reader.wait_s,
            state['compute_s'], -1.0 if compile_s is None else compile_s, rss_bytes() / 2**20]

  def result(mean=None, all_done=None):
    row = stats()
    return Result(out_dir=plan.out_dir, total=len(job.files), restored=state['restored'],
                  skipped=plan.skipped, failed=failed, mean=mean, all_done=all_done,
                  compile_s=compile_s, run_s=row[3], images_per_s=row[4],
                  input_wait_s=reader.wait_s)

  def dispatch(group, ok, arrays):
    """Rounds of images_per_device images per device; returns [(images in the round, its
    output)]."""
    nonlocal compile_s
    outs = []
    for lo in range(0, len(ok), per_round):
      idx = ok[lo:lo + per_round]
      pad = per_round - len(idx)  # One static shape: one compilation per group.
      inputs = np.stack(arrays[lo:lo + per_round] + [arrays[lo + len(idx) - 1]] * pad)
      idx_p = idx + [idx[-1]] * pad
      keys = restore.index_keys(job.seed, idx_p)
      labels = (None if job.labels is None else
                np.asarray([job.labels[i] for i in idx_p], np.int32))
      placed = sampler.shard_batch((inputs.astype(np.float32), keys, labels), mesh)
      args = tuple(consts) + tuple(group.consts) + tuple(placed)
      gid = id(group)
      if gid not in compiled:
        if hasattr(step, 'lower'):
          t0 = time.time()
          compiled[gid] = step.lower(*args).compile()
          seconds = time.time() - t0
          compile_s = (compile_s or 0.0) + seconds
          bar.clear()
          k = job.images_per_device
          log(f'{job.prog}: compiled the restore step in {seconds:.1f} s ({per_round} rows on '
              f'{num_dev} device{"s" if num_dev > 1 else ""}: {k} image{"s" if k > 1 else ""} '
              f'x {job.num_samples} samples per network batch, '
              f'{"x".join(map(str, inputs.shape[1:]))} images{group.note})')
        else:
          compiled[gid] = step
      outs.append((len(idx), compiled[gid](*args)))  # Computes while earlier work is written.
    return outs

  items = iter(reader)
  pending = None
  writer = concurrent.futures.ThreadPoolExecutor(max(1, job.workers), thread_name_prefix='write')
  try:
    for i in errors:  # Known bad beforehand (e.g. too small for the tiles).
      fail(i, job.errors[i])
      bar.update(1)
    for group, chunk in chunks:
      arrays, ok = [], []
      for _ in chunk:
        i, x, e = next(items)
        if e is None:
          arrays.append(np.asarray(x, np.float32))
          ok.append(i)
          continue
        fail(i, one_line(e))
        bar.update(1)
      if not ok:
        continue
      t_sent = time.time()
      try:
        outs = dispatch(group, ok, arrays)
      except Exception as e:  # pylint: disable=broad-except
        if is_out_of_memory(e):
          raise OutOfMemory(group.key or np.shape(arrays[0]), len(ok)) from None
        raise
      if pending is not None:
        done, pending = pending, None
        finish(done)
      pending = (group, ok, outs, np.stack(arrays) if job.paper else None, t_sent)
    if pending is not None:
      done, pending = pending, None
      finish(done)
  except BaseException as e:
    if isinstance(e, KeyboardInterrupt) and pending is not None:
      # Already computing: keep it (a second Ctrl-C stops at once).
      done, pending = pending, None
      finish(done)
    mean, all_done = None, None
    if count == 1:  # What is done so far, merged (resumable).
      mean, all_done = _merge(plan, [stats()], interrupted=True)
    with contextlib.suppress(AttributeError, TypeError):
      e.result = result(mean, all_done)
    raise
  finally:
    writer.shutdown(wait=True)
    bar.close()
    if state['journal'] is not None:
      state['journal'].close()
  row = stats()
  gathered = _allgather_rows(row) if count > 1 else np.asarray([row], np.float64)
  barrier('ddrm-runner-done')
  mean, all_done = None, None
  if p == 0:
    mean, all_done = _merge(plan, gathered)
  return result(mean, all_done)


def _merge(plan, gathered, interrupted=False):
  """Process 0: metrics.json, grid.png and run.json from every process's journal."""
  job, out_dir = plan.job, plan.out_dir
  for root, _, names in os.walk(out_dir):  # Temporary files of killed runs (ours by name).
    for name in names:
      if name.startswith('.') and io.TMP_MARK in name:
        with contextlib.suppress(OSError):
          os.remove(os.path.join(root, name))
  records = read_journals(out_dir)
  done = [i for i in range(len(job.files)) if 'outputs' in records.get(i, {})]
  failed = [job.files[i] for i in sorted(records) if 'outputs' not in records[i]]
  described = lambda i: {'file': job.files[i], 'name': records[i].get('name', job.names[i]),
                         'outputs': records[i]['outputs']}
  mean = None
  if job.paper and done:
    rows = [dict(described(i), **records[i].get('metrics', {})) for i in done]
    merged = merge_metrics(rows)
    write_json(os.path.join(out_dir, METRICS_JSON), merged)
    mean = merged['mean']
  grid, shape = [], None
  for i in done:  # The first GRID_ROWS images of the first one's size.
    if len(grid) >= GRID_ROWS:
      break
    outputs = records[i]['outputs']
    restored = io.read_image(os.path.join(out_dir, outputs['restored']))
    shape = shape or restored.shape
    if restored.shape != shape:
      continue
    subs = (('original',) if job.paper else ()) + ('degraded',)
    grid.append([io.read_image(os.path.join(out_dir, outputs[s])) for s in subs] + [restored])
  if grid:
    io.write_image(os.path.join(out_dir, GRID_PNG), io.make_grid(grid, min_cell=GRID_MIN_CELL))
  names = ('restored', 'failed', 'skipped', 'seconds', 'images_per_second', 'input_wait_seconds',
           'compute_seconds', 'compile_seconds', 'rss_mib')
  per_process = []
  for k, row in enumerate(gathered):
    d = {'process': k}
    for n, v in zip(names, row):
      d[n] = int(v) if n in ('restored', 'failed', 'skipped') else round(float(v), 4)
    if d['compile_seconds'] < 0:
      d['compile_seconds'] = None
    per_process.append(d)
  compile_s = [d['compile_seconds'] for d in per_process if d['compile_seconds'] is not None]
  more = {}
  if job.tiling is not None:  # Each restored image's size and number of tiles.
    more['tiling'] = dict(job.tiling, images={job.files[i]: records[i].get('info')
                                              for i in done})
  info = _run_info(
      job, complete=len(done) == len(job.files),
      status='interrupted' if interrupted else 'complete', images_restored=len(done),
      images=[described(i) for i in done], failed=failed,
      compile_seconds=max(compile_s) if compile_s else None,
      total_seconds=max(d['seconds'] for d in per_process),
      images_per_second=round(sum(d['images_per_second'] for d in per_process), 4),
      per_process=per_process, **more)
  write_json(os.path.join(out_dir, RUN_JSON), info)
  expected = sum(d['restored'] + d['skipped'] for d in per_process)
  if len(done) < expected:
    raise RunError(f'process 0 finds {len(done)} of the {expected} images the processes '
                   f'restored in {out_dir}: every process must write to the same (shared) folder')
  return mean, len(done)
