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


class FolderLock:
  """An advisory lock (fcntl.flock) on an output folder itself, for one run: a second writer is
  refused; a killed run's lock goes with its process (the kernel drops it), so none is left
  stuck, and no lock file is left in the folder."""

  def __init__(self, path):
    import fcntl  # pylint: disable=g-import-not-at-top
    self._fd = os.open(path, os.O_RDONLY)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      os.close(self._fd)
      self._fd = None
      raise SettingError(f'§output {path} is in use by another {PROG} run; wait for it to end '
                         'or choose another folder') from None

  def release(self):
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None


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


def recorded_outputs(path):
  """The files an earlier run in `path` says it wrote (relative paths): every output of its
  journals' and run.json's image records."""
  rels = set()
  for record in journal.read_journals(path).values():
    rels.update(journal.flat_outputs(record.get('outputs', {})))
  try:
    info = journal.read_json(os.path.join(path, outputs.RUN_JSON))
  except SettingError:
    info = None
  for image in (info or {}).get('images', []) if isinstance(info, dict) else []:
    if isinstance(image, dict) and isinstance(image.get('outputs'), dict):
      rels.update(journal.flat_outputs(image['outputs']))
  return {r for r in rels if isinstance(r, str)}


def _inside(path, rel):
  """os.path.join(path, rel) when it stays inside `path` (a record could name anything)."""
  full = os.path.normpath(os.path.join(path, *rel.split('/')))
  return full if os.path.commonpath([os.path.abspath(full), os.path.abspath(path)]) == (
      os.path.abspath(path)) else None


def clear_earlier_run(path):
  """Deletes exactly what an earlier run in `path` recorded that it wrote (the outputs its
  journals and run.json list, its journals, the grid, metrics.json, run.json and its unfinished
  temporary files), then the output folders left empty. Any other file stays; returns the
  relative paths of the files kept inside the output folders (to be reported)."""
  for rel in recorded_outputs(path):
    full = _inside(path, rel)
    if full and os.path.isfile(full):
      os.remove(full)
  progress_dir = os.path.join(path, journal.PROGRESS_DIR)
  if os.path.isdir(progress_dir):
    for name in os.listdir(progress_dir):
      if name.startswith('process-') and name.endswith('.jsonl'):
        os.remove(os.path.join(progress_dir, name))
  for name in OUTPUT_FILES:
    if os.path.isfile(os.path.join(path, name)):
      os.remove(os.path.join(path, name))
  kept = []
  for d, _, files in os.walk(path, topdown=False):
    for name in files:
      if name.startswith('.') and io.TMP_MARK in name:  # Ours by name: unfinished writes.
        os.remove(os.path.join(d, name))
      elif d != path:
        kept.append(os.path.relpath(os.path.join(d, name), path).replace(os.sep, '/'))
    rel = os.path.relpath(d, path).split(os.sep)[0]
    if d != path and rel in OUTPUT_DIRS and not os.listdir(d):
      os.rmdir(d)
  return sorted(kept)


def _restored_any(journal_file):
  with open(journal_file, 'rb') as fh:
    return any(b'"outputs"' in line for line in fh)


def remove_if_empty(path):
  """Removes a run folder this process created when it holds no restored image: the files the
  run wrote (run.json, journals that record no restored image) and then the empty
  folders; anything else (a peer's images, files of others) keeps the folder. Returns whether
  the folder is gone."""
  restored = os.path.join(path, 'restored')
  if os.path.isdir(restored) and any(files for _, _, files in os.walk(restored)):
    return False
  run_json = os.path.join(path, outputs.RUN_JSON)
  if os.path.isfile(run_json):
    os.remove(run_json)
  progress_dir = os.path.join(path, journal.PROGRESS_DIR)
  for name in (os.listdir(progress_dir) if os.path.isdir(progress_dir) else ()):
    p = os.path.join(progress_dir, name)
    if name.startswith('process-') and name.endswith('.jsonl') and not _restored_any(p):
      os.remove(p)
  for d, _, _ in os.walk(path, topdown=False):
    if not os.listdir(d):
      os.rmdir(d)
  return not os.path.exists(path)


def check_inputs_kept(files, output, planned, overwrite):
  """Refuses inputs that the run would delete or overwrite: files inside `output` that an
  earlier run recorded (with `overwrite`) or that this run writes (`planned`: relative paths)."""
  if not output or not os.path.isdir(output):
    return
  doomed = set(planned) | (recorded_outputs(output) if overwrite else set())
  doomed = {os.path.realpath(f) for f in (_inside(output, r) for r in doomed) if f}
  hit = [f for f in files if os.path.realpath(f) in doomed]
  if hit:
    more = f' and {len(hit) - 1} more' if len(hit) > 1 else ''
    raise SettingError(f'§input {hit[0]}{more}: inside §output {output}, where this run would '
                       'delete or overwrite it; copy the inputs out of the output folder first')


def prepare_output(output, *, overwrite, resume, deg, runs_dir):
  """The output folder, made (and checked writable) and locked before any model is loaded.

  A new numbered folder under `runs_dir` when `output` is None. An existing `output` needs
  `overwrite` or `resume`. overwrite: it must be empty or hold an earlier ddrm-restore run,
  whose recorded outputs are then deleted (other files stay); any other folder is refused.
  resume: it is kept as it is (the runner checks that it holds a run of the same settings).
  Returns (path, whether this call created it, the `FolderLock`, the files kept by overwrite).
  """
  if output and os.path.exists(output):
    if not os.path.isdir(output):
      raise SettingError(f'§output {output} exists and is not a folder')
    if not overwrite and not resume:
      raise SettingError(f'§output {output} already exists; pass §overwrite to write into it '
                         f'or §resume to continue its run (or leave §output out for a new folder '
                         f'under {runs_dir}/)')
  where = f'§output {output}' if output else f'{runs_dir}/'
  kept, lock = [], None
  try:
    if not output:
      path, created = new_run_dir(runs_dir, deg), True
    elif os.path.isdir(output):
      path, created = output, False
      if os.listdir(path) and not resume and not earlier_run(path):
        raise SettingError(f'§output {path} holds files but no earlier {PROG} run (run.json); '
                           'not writing into it (choose a new or empty folder)')
    else:
      path, created = output, True
      os.makedirs(path)
    lock = FolderLock(path)
    if not created and not resume and earlier_run(path):
      kept = clear_earlier_run(path)
    if resume:  # Its run.json stays: only check that files can be made there.
      with tempfile.NamedTemporaryFile(dir=path, prefix=f'.probe{io.TMP_MARK}'):
        pass
    else:
      journal.write_json(os.path.join(path, outputs.RUN_JSON), {'program': PROG,
                                                                'status': 'running'})
  except OSError as e:
    if lock is not None:
      lock.release()
    raise SettingError(f'{where}: cannot write there ({one_line(e)})') from None
  except SettingError:
    if lock is not None:
      lock.release()
    raise
  return path, created, lock, kept
