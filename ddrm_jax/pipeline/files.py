"""`restore_files`: the whole run of `ddrm-restore` from Python (files in, files out)."""

import dataclasses
import os
from typing import Any, Optional

from ddrm_jax import bundled
from ddrm_jax import errors
from ddrm_jax import run_config
from ddrm_jax import runner
from ddrm_jax.errors import SettingError
from ddrm_jax.pipeline import plan as plan_lib
from ddrm_jax.pipeline import step as step_lib
from ddrm_jax.runner import folder

PROG = folder.PROG
BUNDLED_SAMPLES = bundled.SAMPLES
RUNS_DIR = run_config.RUNS_DIR
_RESUME_KEYS = ('deg', 'sigma_y', 'steps', 'eta', 'eta_b', 'seed', 'num_samples', 'measurement',
                'resize', 'classifier_scale', 'class_label', 'kernel_size')
_RESUME_PATHS = ('kernel', 'mask', 'perm', 'class_labels', 'classifier_ckpt')


@dataclasses.dataclass
class Result:
  """What `restore_files` did (this process's part; the merged means on process 0)."""
  out_dir: str
  config: run_config.RestoreConfig  # Resolved.
  ckpt: str
  sigma_y: float  # [0, 1] image units (estimated for sigma_y='auto').
  sigma_y_estimate: Optional[dict]
  total: int
  process_index: int = 0
  process_count: int = 1
  finished_before: bool = False  # An earlier run had done everything: nothing was done.
  run: Optional[Any] = None  # runner.Result.

  def __getattr__(self, name):  # restored, skipped, failed, mean, all_done, run_s, ...
    if name != 'run' and self.run is not None and hasattr(self.run, name):
      return getattr(self.run, name)
    raise AttributeError(name)


def log_line(msg):
  runner.progress.print_line(errors.plain(msg))


def expand_inputs(spec):
  """The input files of `spec` (None: the bundled samples)."""
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  try:
    return io.expand_inputs(spec or BUNDLED_SAMPLES)
  except ValueError as e:
    if spec:
      raise SettingError(errors.marked(e)) from None
    raise SettingError(f'no bundled sample images in {BUNDLED_SAMPLES}; pass §input') from None


def _sigma_y(run, log):
  """sigma_y in [0, 1] image units and, for 'auto', {'sigma_y': ..., 'per_image': ...}."""
  if run.config.sigma_y != run_config.AUTO:
    return run.config.sigma_y, None
  sigma_y, per_image, small = plan_lib.estimate_sigma_y(run)
  warn_small_photos(small, log)
  n = len(per_image)
  log(f'{PROG}: §sigma_y auto: estimated noise std {sigma_y:.4f} ([0, 1] units; median of '
      f'{n} photo{"s" if n != 1 else ""}: '
      + ', '.join(f'{v:.4f}' for v in list(per_image.values())[:8])
      + (' ...' if n > 8 else '') + ')')
  return sigma_y, {'sigma_y': sigma_y, 'per_image': per_image}


def warn_small_photos(small, log):
  """sigma_y='auto' on photos too small for the estimate: one line."""
  from ddrm_jax import metrics  # pylint: disable=g-import-not-at-top
  if small:
    side = metrics.NOISE_MIN_SIDE
    log(f'{PROG}: warning: §sigma_y auto: {len(small)} photo{"s are" if len(small) > 1 else " is"}'
        f' smaller than {side}x{side} ({small[0]}{" ..." if len(small) > 1 else ""}): the noise '
        'estimate rests on too few pixels there; pass §sigma_y as a number if you know it')


def _resume_settings(run):
  """What must be the same for resume to continue a run (not batch_size: outputs do not depend
  on it, but tiles_per_call does)."""
  c = run.config
  path = lambda p: None if p is None else os.path.abspath(p)
  out = {k: getattr(c, k) for k in _RESUME_KEYS}
  if c.method != 'ddrm':  # Runs of DDRM keep the settings of earlier versions.
    out.update(method=c.method, **run_config.method_params(c))
  if run.problem.codec:
    out.update(jpeg_quality=c.jpeg_quality, jpeg_subsampling=c.jpeg_subsampling,
               jpeg_t_start=c.jpeg_t_start)
  out.update({k: path(getattr(c, k)) for k in _RESUME_PATHS})
  if run.tiles is not None:
    out.update(tile_overlap=run.tiles.overlap, tiles_per_call=run.tiles.tiles_per_call)
  out.update(checkpoint=path(run.model.ckpt), inputs=len(run.files),
             inputs_sha256=runner.inputs_digest(run.files))
  return out


def _groups(run, errors_by_index):
  """The runner's groups and the reader of an input file."""
  from ddrm_jax import tiling  # pylint: disable=g-import-not-at-top
  c, t = run.config, run.tiles
  if t is None and run.problem.per_file(c):  # An operator per file (a JPEG's own tables).
    return plan_lib.file_groups(run, errors_by_index.__setitem__), (
        lambda p: plan_lib.read_input(run, p))
  if t is None:
    return ([runner.Group(key=run.x_shape, indices=list(range(len(run.files))),
                          consts=(run.setup.op,), note=f', {c.steps} steps')],
            lambda p: plan_lib.read_input(run, p))
  groups, shape_of = [], {}  # One compilation per image size; eps blended from tiles.
  for x_shape, op, members in plan_lib.tile_groups(run, errors_by_index.__setitem__):
    k = tiling.num_tiles(x_shape[:2], t.tile, t.overlap)
    groups.append(runner.Group(
        key=x_shape, indices=members, consts=(op,), info={'shape': list(x_shape), 'tiles': k},
        note=f' by {k} tile{"s" if k > 1 else ""} of {t.tile}x{t.tile}, {c.steps} steps'))
    shape_of.update({run.files[i]: x_shape for i in members})
  return groups, lambda p: plan_lib.read_input(run, p, shape_of[p])


def make_job(run, sigma_y, estimate, out_dir, input_spec=None, output_spec=None):
  """The runner's `Job` of a planned run: files, groups, outputs, what run.json records."""
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  c = run.config
  errors_by_index = {}
  groups, read = _groups(run, errors_by_index)
  setup = run.setup
  flags = dict(c.to_dict(), input=input_spec, output=output_spec)
  t = run.tiles
  return runner.Job(
      files=list(run.files), names=io.unique_stems(run.files), read=read, seed=c.seed,
      batch_size=c.batch_size, num_samples=c.num_samples,
      images_per_device=c.images_per_device, paper=not c.measurement,
      labels=None if run.labels is None else list(run.labels), groups=groups,
      errors=errors_by_index, extras=run.extras,
      out_dir=out_dir, resume=c.resume, settings=_resume_settings(run),
      tiling=None if t is None else {'tile': t.tile, 'overlap': t.overlap,
                                     'tiles_per_call': t.tiles_per_call},
      prefetch=c.prefetch, workers=c.read_threads, prog=PROG,
      info={'program': PROG, 'flags': {k: flags[k] for k in sorted(flags)},
            'sigma_y': sigma_y, 'sigma_y_estimate': estimate,
            'border_padding': None if setup is None else setup.padding,
            'num_samples': c.num_samples, 'ckpt': os.path.abspath(run.model.ckpt),
            'image_shape': list(run.x_shape)})


def _nothing(res):
  return res is None or res.restored + res.skipped == 0


def _run(run, plan, sigma_y, log, err):
  step, consts = step_lib.restore_step(run, sigma_y)
  try:
    return runner.run(plan, step, consts, log=log, err=err)
  except runner.OutOfMemory as e:
    c = run.config
    raise SettingError(
        f'out of memory restoring {"x".join(map(str, e.shape))} images with {c.num_samples} '
        f'samples each, {e.images} at a time: lower §num_samples (now {c.num_samples}) or '
        f'§batch_size (now {c.batch_size})' + (' or §tiles_per_call' if run.tiles else '')
    ) from None


def restore_files(config, input=None, output=None, *, log=None, err=None):  # pylint: disable=redefined-builtin
  """Restores the images of `input` into folder `output`: the whole run of `ddrm-restore`.

  Args:
    config: a `RestoreConfig` (resolved here).
    input: an image file, a folder of images, a glob, or a .txt list of image paths (one a line,
      relative to the list); None: the bundled sample images.
    output: the output folder; None: a new numbered folder under `RUNS_DIR`.
    log, err: `fn(line)` for info and error lines (default: stderr). Lines may mark settings
      as `§name` (`errors.plain` / `errors.flagged`).

  Returns:
    `Result`. Errors: `errors.SettingError` (one line, naming settings); Ctrl-C
    (KeyboardInterrupt) merges what is done first and carries `.result` (`runner.Result`).
  """
  import jax  # pylint: disable=g-import-not-at-top
  log = log or log_line
  c = run_config.resolve(config)
  if c.resume and not output:
    raise SettingError('§resume needs the §output folder of the run to continue')
  runner.initialize_distributed(c.coordinator_address, c.num_processes, c.process_id,
                                auto=c.distributed, timeout=c.distributed_timeout, log=log,
                                err=err)
  model = plan_lib.resolve_model(c)
  run = plan_lib.plan_run(c, expand_inputs(input), model)
  folder.check_inputs_kept(run.files, output, _planned_outputs(run), c.overwrite)
  # Before the model loads: an unwritable place fails now. One process prepares a shared folder
  # and holds its lock (the processes of one run are one writer).
  out_dir, created, lock = output, False, None
  if jax.process_index() == 0:
    out_dir, created, lock, kept = folder.prepare_output(
        output, overwrite=c.overwrite, resume=c.resume, deg=c.deg, runs_dir=RUNS_DIR)
    if kept:
      log(f'{PROG}: §overwrite kept {len(kept)} file{"s" if len(kept) > 1 else ""} in {out_dir} '
          f'that the earlier run did not write ({", ".join(kept[:3])}'
          + (' ...' if len(kept) > 3 else '') + ')')

  def drop_if_empty(res):
    if created and _nothing(res):  # No folder of nothing (failures were reported).
      folder.remove_if_empty(out_dir)

  try:
    return _restore(run, c, input, output, out_dir, log, err, drop_if_empty)
  finally:
    if lock is not None:
      lock.release()


def _planned_outputs(run):
  """The relative paths of every file this run writes for its images."""
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  extras = run.extras
  rels = []
  for name in io.unique_stems(run.files):
    paths = dict(runner.output_paths(name, not run.config.measurement, run.config.num_samples),
                 **extras.paths(name))
    rels += runner.journal.flat_outputs(paths)
  return rels


def _restore(run, c, input, output, out_dir, log, err, drop_if_empty):  # pylint: disable=redefined-builtin
  """restore_files once the folder is ready."""
  try:
    sigma_y, estimate = _sigma_y(run, log)
    plan = runner.prepare(make_job(run, sigma_y, estimate, out_dir, input, output))
    result = Result(out_dir=out_dir, config=c, ckpt=run.model.ckpt, sigma_y=sigma_y,
                    sigma_y_estimate=estimate, total=len(run.files),
                    process_index=plan.process_index, process_count=plan.process_count,
                    finished_before=plan.finished)
    if plan.finished:
      return result
    result.run = _run(run, plan, sigma_y, log, err)
  except BaseException as e:
    drop_if_empty(getattr(e, 'result', None))
    raise
  if _nothing(result.run):
    drop_if_empty(result.run)
  return result
