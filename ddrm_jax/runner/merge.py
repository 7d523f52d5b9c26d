"""The end of a run: process 0 merges every process's journal into metrics.json, grid.png and
run.json (the format of a single run)."""

import contextlib
import dataclasses
import os
import platform

from ddrm_jax import io
from ddrm_jax.errors import RunError
from ddrm_jax.runner import journal
from ddrm_jax.runner import outputs


def run_info(job, complete, **more):
  """run.json: the job's info and settings, the machine, and `more`."""
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


def start_out_dir(plan):
  """Process 0 makes the folder, drops stale journals of a run not resumed, writes run.json."""
  job = plan.job
  if plan.process_index == 0:
    os.makedirs(plan.out_dir, exist_ok=True)
    d = os.path.join(plan.out_dir, journal.PROGRESS_DIR)
    if not job.resume and os.path.isdir(d):
      for name in os.listdir(d):  # Only our own journals.
        if name.startswith('process-') and name.endswith('.jsonl'):
          os.remove(os.path.join(d, name))
    info = journal.read_json(os.path.join(plan.out_dir, outputs.RUN_JSON)) if job.resume else None
    if not info:
      journal.write_json(os.path.join(plan.out_dir, outputs.RUN_JSON),
                         run_info(job, complete=False))


def _drop_temporaries(out_dir):
  for root, _, names in os.walk(out_dir):  # Temporary files of killed runs (ours by name).
    for name in names:
      if name.startswith('.') and io.TMP_MARK in name:
        with contextlib.suppress(OSError):
          os.remove(os.path.join(root, name))


def merge(plan, per_process, interrupted=False):
  """Process 0: metrics.json, grid.png and run.json from every process's journal, given every
  process's `Stats`; returns (the metric means or None, images done of the whole list)."""
  job, out_dir = plan.job, plan.out_dir
  _drop_temporaries(out_dir)
  records = journal.read_journals(out_dir)
  done = [i for i in range(len(job.files)) if 'outputs' in records.get(i, {})]
  failed = [job.files[i] for i in sorted(records) if 'outputs' not in records[i]]
  described = lambda i: {'file': job.files[i], 'name': records[i].get('name', job.names[i]),
                         'outputs': records[i]['outputs']}
  mean = None
  if job.paper and done:
    rows = [dict(described(i), **records[i].get('metrics', {})) for i in done]
    merged = outputs.merge_metrics(rows)
    journal.write_json(os.path.join(out_dir, outputs.METRICS_JSON), merged)
    mean = merged['mean']
  read = lambda rel: io.read_image(os.path.join(out_dir, rel))
  grid = outputs.grid_rows(read, (records[i]['outputs'] for i in done), job.paper)
  if grid:
    io.write_image(os.path.join(out_dir, outputs.GRID_PNG),
                   io.make_grid(grid, min_cell=outputs.GRID_MIN_CELL,
                                max_side=outputs.GRID_MAX_SIDE))
  rows = [dict(process=k, **dataclasses.asdict(s)) for k, s in enumerate(per_process)]
  compile_s = [d['compile_seconds'] for d in rows if d['compile_seconds'] is not None]
  more = {}
  if job.tiling is not None:  # Each restored image's size and number of tiles.
    more['tiling'] = dict(job.tiling, images={job.files[i]: records[i].get('info')
                                              for i in done})
  info = run_info(
      job, complete=len(done) == len(job.files),
      status='interrupted' if interrupted else 'complete', images_restored=len(done),
      images=[described(i) for i in done], failed=failed,
      compile_seconds=max(compile_s) if compile_s else None,
      total_seconds=max(d['seconds'] for d in rows),
      images_per_second=round(sum(d['images_per_second'] for d in rows), 4),
      per_process=rows, **more)
  journal.write_json(os.path.join(out_dir, outputs.RUN_JSON), info)
  expected = sum(d['restored'] + d['skipped'] for d in rows)
  if len(done) < expected:
    raise RunError(f'process 0 finds {len(done)} of the {expected} images the processes '
                   f'restored in {out_dir}: every process must write to the same (shared) folder')
  return mean, len(done)
