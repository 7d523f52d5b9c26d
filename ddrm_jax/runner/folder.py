"""The output folder's life: a new numbered folder, or an existing one that holds an earlier run
(replaced with `overwrite`, continued with `resume`); made and checked writable before any model
is loaded."""

import os
import re
import tempfile

from ddrm_jax import io
from ddrm_jax.errors import SettingError
from ddrm_jax.errors import one_line
from ddrm_jax.runner import journal
from ddrm_jax.runner import outputs

PROG = 'ddrm-restore'
OUTPUT_DIRS = ('original', 'degraded', 'baseline', 'restored', 'samples', 'std', 'kernels',
               journal.PROGRESS_DIR)
OUTPUT_FILES = (outputs.GRID_PNG, outputs.METRICS_JSON, outputs.RUN_JSON)


def new_run_dir(base, deg):
  """Creates base/NNN_deg with NNN one above the highest number there (never an existing one)."""
  os.makedirs(base, exist_ok=True)
  while True:
    nums = [int(m.group(1)) for m in (re.match(r'(\d+)', d) for d in os.listdir(base)) if m]
    path = os.path.join(base, f'{max(nums, default=0) + 1:03d}_{deg}')
    try:
      os.makedirs(path)
      return path
    except FileExistsError:
      continue


def earlier_run(path):
  """Whether folder `path` holds an earlier ddrm-restore run (its run.json)."""
  try:
    info = journal.read_json(os.path.join(path, outputs.RUN_JSON))
  except SettingError:
    return False
  return isinstance(info, dict) and (info.get('program') == PROG or {'flags', 'ckpt'} <= set(info))


def clear_earlier_run(path):
  """Deletes what an earlier run wrote into `path` (its PNGs and kernels under the output
  folders, its journals, the grid, metrics.json, run.json and unfinished temporary files); any
  other file is left alone."""
  for name in OUTPUT_FILES:
    if os.path.isfile(os.path.join(path, name)):
      os.remove(os.path.join(path, name))
  for sub in OUTPUT_DIRS:
    top = os.path.join(path, sub)
    for d, _, files in os.walk(top, topdown=False):
      for name in files:
        if name.lower().endswith(('.png', '.npy', '.jsonl')) or io.TMP_MARK in name:
          os.remove(os.path.join(d, name))
      if not os.listdir(d):
        os.rmdir(d)
  for name in os.listdir(path):  # unfinished grid / metrics / run info
    if io.TMP_MARK in name and os.path.isfile(os.path.join(path, name)):
      os.remove(os.path.join(path, name))


def prepare_output(output, *, overwrite, resume, deg, runs_dir):
  """The output folder, made (and checked writable) before any model is loaded.

  A new numbered folder under `runs_dir` when `output` is None. An existing `output` needs
  `overwrite` or `resume`. overwrite: it must be empty or hold an earlier ddrm-restore run,
  whose outputs are then deleted (other files stay); any other folder is refused. resume: it is
  kept as it is (the runner checks that it holds a run of the same settings). Returns (path,
  whether this call created it).
  """
  if output and os.path.exists(output):
    if not os.path.isdir(output):
      raise SettingError(f'§output {output} exists and is not a folder')
    if not overwrite and not resume:
      raise SettingError(f'§output {output} already exists; pass §overwrite to write into it '
                         f'or §resume to continue its run (or leave §output out for a new folder '
                         f'under {runs_dir}/)')
  where = f'§output {output}' if output else f'{runs_dir}/'
  try:
    if not output:
      path, created = new_run_dir(runs_dir, deg), True
    elif os.path.isdir(output):
      path, created = output, False
      if os.listdir(path) and not resume:
        if not earlier_run(path):
          raise SettingError(f'§output {path} holds files but no earlier {PROG} run (run.json); '
                             'not writing into it (choose a new or empty folder)')
        clear_earlier_run(path)
    else:
      path, created = output, True
      os.makedirs(path)
    if resume:  # Its run.json stays: only check that files can be made there.
      with tempfile.NamedTemporaryFile(dir=path, prefix=f'.probe{io.TMP_MARK}'):
        pass
    else:
      journal.write_json(os.path.join(path, outputs.RUN_JSON), {'program': PROG,
                                                                'status': 'running'})
  except OSError as e:
    raise SettingError(f'{where}: cannot write there ({one_line(e)})') from None
  return path, created
