"""What a run restores and where (`Job`, its `Group`s), what this process does of it (`Plan`),
what it did (`Stats`, `Result`), and `prepare`: the checks of an existing folder on resume."""

import dataclasses
import json
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ddrm_jax.errors import RunError
from ddrm_jax.runner import distributed
from ddrm_jax.runner import journal
from ddrm_jax.runner import outputs


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
  `extras`: the problem's own outputs (`outputs.Extras`: e.g. blind deblurring's kernels, the
  crop of measurement padding). `settings` (JSON-able) must match on resume; `info` goes into
  run.json as it is; `tiling` (with `images`: each restored image's group info) too when given.
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
  extras: outputs.Extras = dataclasses.field(default_factory=outputs.Extras)
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
class Stats:
  """One process's account of its run (run.json's `per_process` entries)."""
  restored: int = 0
  failed: int = 0
  skipped: int = 0
  seconds: float = 0.0
  images_per_second: float = 0.0  # Compilation excluded.
  input_wait_seconds: float = 0.0
  compute_seconds: float = 0.0
  compile_seconds: Optional[float] = None
  rss_mib: float = 0.0

  COUNTS = ('restored', 'failed', 'skipped')

  def to_row(self):
    """The numbers, in field order, for gathering from every process (None as -1)."""
    return [float(-1.0 if v is None else v) for v in dataclasses.astuple(self)]

  @classmethod
  def from_row(cls, row):
    values = {}
    for f, v in zip(dataclasses.fields(cls), row):
      values[f.name] = int(v) if f.name in cls.COUNTS else round(float(v), 4)
    if values['compile_seconds'] < 0:
      values['compile_seconds'] = None
    return cls(**values)


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
  """Checks run.json of an existing output folder on resume; returns whether it says done."""
  info = journal.read_json(os.path.join(out_dir, outputs.RUN_JSON))
  if info is None:
    if os.listdir(out_dir):
      raise RunError(f'§resume: {out_dir} has no {outputs.RUN_JSON} of a ddrm-restore run; '
                     'nothing to resume there')
    return False
  if not isinstance(info, dict) or 'settings' not in info:
    raise RunError(f'§resume: {os.path.join(out_dir, outputs.RUN_JSON)} was not written by a '
                   'resumable run; restore into a new §output')
  old, new = info['settings'], json.loads(json.dumps(job.settings, default=str))
  diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
  if diff:
    shown = ', '.join(f'{k} ({old.get(k)!r} there, {new.get(k)!r} now)' for k in diff[:3])
    more = f' and {len(diff) - 3} more' if len(diff) > 3 else ''
    raise RunError(f'§resume: {out_dir} holds a run with other settings: {shown}{more}; use '
                   'the same settings or a new §output')
  return bool(info.get('complete'))


def prepare(job):
  """Checks an existing output folder (on resume) and finds this process's work; no JAX
  computation, no writes. Every process calls it."""
  import jax  # pylint: disable=g-import-not-at-top
  p, count = jax.process_index(), jax.process_count()
  if len(job.names) != len(job.files):
    raise ValueError('one output name per input file')
  mine = list(distributed.process_share(len(job.files), p, count))
  finished, done = False, set()
  out_dir = job.out_dir
  if job.resume and os.path.isdir(out_dir):
    complete = _read_settings(out_dir, job)
    records = journal.read_journals(out_dir)
    done = {i for i in mine if i in records and journal.is_complete(out_dir, records[i])
            and journal.same_input(records[i], job.files[i])}
    if complete:
      ok = sum(1 for r in records.values() if 'outputs' in r)
      failed = len(records) - ok
      finished = failed == 0 and ok == len(job.files) and len(done) == len(mine)
  share = [i for i in mine if i not in done]
  if count > 1:  # One decision for all: a process that stops early would leave the others.
    finished = bool(distributed.allgather_rows([float(finished)]).min())
  distributed.barrier('ddrm-runner-prepare')  # Every process has read the folder first.
  return Plan(job=job, process_index=p, process_count=count, share=share, skipped=len(done),
              finished=finished, out_dir=out_dir)
