"""`ddrm-restore`: restore images with DDRM from the command line.

Paper protocol (default): clean images are degraded with --deg and --sigma_y, restored, and
written as original / degraded / baseline / restored PNGs, a grid and metrics.json.
--measurement: the inputs are already degraded photos; they are restored without ground truth.

  ddrm-restore --ckpt CKPT --deg sr4 --sigma_y 0.05 --input photos/ --num_samples 8
  ddrm-restore --ckpt CKPT --deg inp --mask holes.png --measurement --input photo.png

With no --ckpt the bundled prior (ddrm_jax/assets/prior) is used, with no --input the bundled
sample images (ddrm_jax/assets/samples). Every bad input ends the command with one line on stderr
and a non-zero exit status.
"""

import csv
import math
import os
import re
import sys
import traceback

from absl import flags
import numpy as np

from ddrm_jax import bundled

PROG = 'ddrm-restore'
BUNDLED_PRIOR = bundled.PRIOR
BUNDLED_SAMPLES = bundled.SAMPLES
RUNS_DIR = 'ddrm_runs'
RESIZE_MODES = ('error', 'resize', 'center_crop')


class UsageError(ValueError):
  """A bad flag, file or combination; reported as one line."""


def define_flags(fv):
  """Defines the command's flags on FlagValues `fv` (a fresh one per call of `main`)."""
  s, f, i, b = flags.DEFINE_string, flags.DEFINE_float, flags.DEFINE_integer, flags.DEFINE_bool
  # Model.
  s('ckpt', None, 'Checkpoint directory (converted or trained). Default: the bundled prior.',
    flag_values=fv)
  s('config', None, 'Optional config name (e.g. celeba_hq); an error if it disagrees with the '
    "checkpoint's own config.", flag_values=fv)
  # Problem.
  s('deg', 'sr4', 'Degradation: a name of ddrm_jax.operators.NAMES, or blur (with --kernel).',
    flag_values=fv)
  s('kernel', None, '.npy blur kernel for --deg blur: 1-D (both axes) or (2, L) = (vertical, '
    'horizontal).', flag_values=fv)
  s('mask', None, 'Inpainting mask for --deg inp: PNG or .npy of (H, W), nonzero = kept.',
    flag_values=fv)
  s('perm', None, '.npy permutation of 0..H*W-1 for --deg cs2/cs4 (the kept Walsh-Hadamard '
    'coefficients come first).', flag_values=fv)
  f('sigma_y', 0.0, 'Measurement noise std in [0, 1] image units, as in the paper (doubled for '
    'the [-1, 1] model).', flag_values=fv)
  # Sampler.
  i('steps', 20, 'Number of DDRM steps (network calls).', flag_values=fv)
  f('eta', 0.85, 'DDRM eta (Eq. 8).', flag_values=fv)
  f('eta_b', 1.0, 'DDRM eta_b (Eq. 8).', flag_values=fv)
  i('seed', 0, 'Random seed: image i uses fold_in(key(seed), i).', flag_values=fv)
  i('batch_size', 4, 'Images per step of each process (each with --num_samples chains), '
    'padded to a multiple of the local device count and split over the devices.',
    flag_values=fv)
  i('num_samples', 1, 'Posterior samples per image; > 1 also writes their mean and std.',
    flag_values=fv)
  s('classifier_ckpt', None, 'Classifier checkpoint for classifier guidance.', flag_values=fv)
  f('classifier_scale', 1.0, 'Classifier guidance scale.', flag_values=fv)
  i('class_label', None, 'One class label for every image (class-conditional network or '
    'classifier guidance).', flag_values=fv)
  s('class_labels', None, 'CSV of file name, label (one row per input image).', flag_values=fv)
  # Files.
  s('input', None, 'An image file, a folder of images, a glob, or a .txt list of image paths '
    '(one a line, relative to the list). Default: the bundled samples.', flag_values=fv)
  s('output', None, f'Output folder. Default: a new numbered folder under {RUNS_DIR}/.',
    flag_values=fv)
  b('overwrite', False, 'Allow writing into an existing --output folder.', flag_values=fv)
  flags.DEFINE_enum('resize', 'error', RESIZE_MODES, 'Inputs of another size than the model '
                    'expects: error, resize, or center_crop (crop to the aspect, then resize).',
                    flag_values=fv)
  b('measurement', False, 'Inputs are real degraded photos (no ground truth, no metrics).',
    flag_values=fv)
  b('traceback', False, 'Show the Python traceback of an unexpected error.', flag_values=fv)
  # Dataset-scale runs (ddrm_jax/runner.py).
  b('resume', False, 'Continue the run in --output: restore only the images not done yet '
    '(refused if its run.json has other settings).', flag_values=fv)
  i('prefetch', 2, 'Batches read and decoded ahead of the device; 0 reads in the loop.',
    flag_values=fv)
  i('read_threads', 4, 'Threads that read and decode input files.', flag_values=fv)
  s('coordinator_address', None, 'Several processes: host:port of process 0, for '
    'jax.distributed.initialize (with --num_processes, --process_id).', flag_values=fv)
  i('num_processes', None, 'Several processes: how many.', flag_values=fv)
  i('process_id', None, 'Several processes: this one, in [0, --num_processes).', flag_values=fv)
  b('distributed', False, 'Call jax.distributed.initialize() with no arguments (TPU pod '
    'slices, SLURM: JAX finds the coordinator itself).', flag_values=fv)


# -- small helpers ------------------------------------------------------------------------------


def _one_line(e):
  msg = ' '.join(str(e).split())
  return msg or type(e).__name__


def _err(msg):
  print(f'{PROG}: error: {msg}', file=sys.stderr, flush=True)


def _info(msg):
  print(msg, file=sys.stderr, flush=True)


def _load_npy(path, flag):
  if not os.path.isfile(path):
    raise UsageError(f'--{flag} {path}: no such file')
  try:
    return np.load(path, allow_pickle=False)
  except Exception as e:  # numpy raises ValueError, OSError, EOFError, UnpicklingError...
    raise UsageError(f'--{flag} {path}: not a readable .npy array ({_one_line(e)})') from None


def load_kernel(path):
  """--kernel: (vertical, horizontal) float64 taps from a 1-D or (2, L) .npy array."""
  k = _load_npy(path, 'kernel')
  if not np.issubdtype(k.dtype, np.number) or np.iscomplexobj(k):
    raise UsageError(f'--kernel {path}: expected real numbers, got dtype {k.dtype}')
  k = k.astype(np.float64)
  if k.ndim == 1 and k.size >= 1:
    kv = kh = k
  elif k.ndim == 2 and k.shape[0] == 2 and k.shape[1] >= 1:
    kv, kh = k[0], k[1]
  else:
    raise UsageError(f'--kernel {path}: expected a 1-D kernel or shape (2, L), got {k.shape}')
  if not np.all(np.isfinite(k)):
    raise UsageError(f'--kernel {path}: has non-finite taps')
  if abs(kv.sum()) < 1e-8 or abs(kh.sum()) < 1e-8:
    raise UsageError(f'--kernel {path}: taps sum to 0 (a blur kernel sums to 1)')
  return kv, kh


def load_mask(path, size):
  """--mask: (H, W) float32 in {0, 1} (1 = kept) from a PNG/image (nonzero) or a .npy."""
  if path.lower().endswith('.npy'):
    m = _load_npy(path, 'mask')
    if m.ndim == 3 and m.shape[-1] == 1:
      m = m[..., 0]
    if not (np.issubdtype(m.dtype, np.number) or m.dtype == bool) or m.ndim != 2:
      raise UsageError(f'--mask {path}: expected a numeric (H, W) array, got {m.dtype} {m.shape}')
  else:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    if not os.path.isfile(path):
      raise UsageError(f'--mask {path}: no such file')
    try:
      with Image.open(path) as im:
        m = np.asarray(im.convert('L'))
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError...
      raise UsageError(f'--mask {path}: cannot read image ({_one_line(e)})') from None
  if tuple(m.shape) != tuple(size):
    raise UsageError(f'--mask {path}: is {m.shape[0]}x{m.shape[1]}, the images are '
                     f'{size[0]}x{size[1]}')
  m = (m != 0).astype(np.float32)
  if not m.any():
    raise UsageError(f'--mask {path}: keeps no pixel (nonzero = kept)')
  return m


def load_class_labels(path, files):
  """--class_labels CSV (file name, label) -> int label per input file (matched by name)."""
  if not os.path.isfile(path):
    raise UsageError(f'--class_labels {path}: no such file')
  table = {}
  try:
    with open(path, newline='') as fh:
      for n, row in enumerate(csv.reader(fh)):
        if not row or not ''.join(row).strip():
          continue
        if len(row) != 2:
          raise UsageError(f'--class_labels {path}: line {n + 1}: expected "file,label"')
        name, label = row[0].strip(), row[1].strip()
        try:
          table[name] = int(label)
        except ValueError:
          if n == 0:  # A header row.
            continue
          raise UsageError(f'--class_labels {path}: line {n + 1}: label {label!r} is not an '
                           'int') from None
  except (OSError, UnicodeDecodeError) as e:
    raise UsageError(f'--class_labels {path}: cannot read ({_one_line(e)})') from None
  labels, missing = [], []
  for f in files:
    for name in (f, os.path.basename(f), os.path.splitext(os.path.basename(f))[0]):
      if name in table:
        labels.append(table[name])
        break
    else:
      missing.append(os.path.basename(f))
  if missing:
    more = f' and {len(missing) - 3} more' if len(missing) > 3 else ''
    raise UsageError(f'--class_labels {path}: no label for {", ".join(missing[:3])}{more}')
  return labels


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


# -- the command --------------------------------------------------------------------------------


class _Run:
  """Everything resolved from the flags before any image is read."""


def _validate(f):
  """Checks the flags on their own (no files opened yet); returns resolved paths."""
  from ddrm_jax import operators  # pylint: disable=g-import-not-at-top
  names = tuple(operators.NAMES) + ('blur',)
  if f.deg not in names:
    raise UsageError(f'unknown --deg {f.deg!r}; known: {", ".join(names)}')
  if not 0.0 <= f.sigma_y <= 1.0 or not math.isfinite(f.sigma_y):
    raise UsageError(f'--sigma_y must be in [0, 1] (image units), got {f.sigma_y}')
  if not 1 <= f.steps <= 1000:
    raise UsageError(f'--steps must be in [1, 1000], got {f.steps}')
  if not 0.0 <= f.eta <= 1.0:
    raise UsageError(f'--eta must be in [0, 1], got {f.eta}')
  if not 0.0 <= f.eta_b <= 2.0:
    raise UsageError(f'--eta_b must be in [0, 2], got {f.eta_b}')
  if f.batch_size < 1:
    raise UsageError(f'--batch_size must be >= 1, got {f.batch_size}')
  if f.num_samples < 1:
    raise UsageError(f'--num_samples must be >= 1, got {f.num_samples}')
  if not math.isfinite(f.classifier_scale):
    raise UsageError('--classifier_scale must be finite')
  if f.deg == 'blur' and not f.kernel:
    raise UsageError('--deg blur needs --kernel (a .npy of the blur taps)')
  if f.kernel and f.deg != 'blur':
    raise UsageError(f'--kernel is for --deg blur, not --deg {f.deg}')
  if f.mask and f.deg != 'inp':
    raise UsageError(f'--mask is for --deg inp, not --deg {f.deg}')
  if f.perm and f.deg not in ('cs2', 'cs4'):
    raise UsageError(f'--perm is for --deg cs2/cs4, not --deg {f.deg}')
  if f.class_label is not None and f.class_labels:
    raise UsageError('give --class_label or --class_labels, not both')
  if f['classifier_scale'].present and not f.classifier_ckpt:
    raise UsageError('--classifier_scale needs --classifier_ckpt')
  if f.measurement:
    if f.deg in ('cs2', 'cs4'):
      raise UsageError(f'--measurement does not support --deg {f.deg} (its measurements are '
                       'not images)')
    if f.deg == 'inp' and not f.mask:
      raise UsageError('--measurement --deg inp needs --mask (which pixels of the photo are '
                       'missing)')
    if f.deg == 'deno' and f.sigma_y == 0:
      raise UsageError('--measurement --deg deno needs the photo\'s noise level --sigma_y > 0 '
                       '(with 0 the input is returned unchanged)')
  if f.resume and not f.output:
    raise UsageError('--resume needs the --output folder of the run to continue')
  if f.prefetch < 0 or f.read_threads < 1:
    raise UsageError('--prefetch must be >= 0 and --read_threads >= 1')
  if f.output and os.path.exists(f.output):
    if not os.path.isdir(f.output):
      raise UsageError(f'--output {f.output} exists and is not a folder')
    if not f.overwrite and not f.resume:
      raise UsageError(f'--output {f.output} already exists; pass --overwrite to write into it '
                       f'(or leave --output out for a new folder under {RUNS_DIR}/)')


def _load_config(path, flag):
  from ddrm_jax import checkpoints  # pylint: disable=g-import-not-at-top
  if os.path.isfile(path):
    raise UsageError(f'--{flag} {path}: is a file, not a ddrm-jax checkpoint directory (convert '
                     'PyTorch checkpoints with python -m weights_convert)')
  try:
    return checkpoints.load_config(path)
  except ValueError as e:
    raise UsageError(f'--{flag}: {_one_line(e)}') from None


def _resolve(f):
  """Reads configs, labels, kernel/mask/perm files and builds the operator."""
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  from ddrm_jax import operators  # pylint: disable=g-import-not-at-top
  from ddrm_jax.models import configs  # pylint: disable=g-import-not-at-top
  r = _Run()
  if f.ckpt:
    r.ckpt = f.ckpt
    if not os.path.exists(r.ckpt):
      raise UsageError(f'--ckpt {r.ckpt}: no such checkpoint directory')
  else:
    r.ckpt = BUNDLED_PRIOR
    if not os.path.isfile(os.path.join(BUNDLED_PRIOR, 'config.json')):
      raise UsageError('the bundled prior is not built yet (ddrm_jax/assets/prior is missing); '
                       'pass --ckpt with a checkpoint directory')
  r.config = _load_config(r.ckpt, 'ckpt')
  if r.config.family == 'adm_classifier':
    raise UsageError(f'--ckpt {r.ckpt} is a classifier; pass it as --classifier_ckpt')
  if f.config:
    try:
      named = configs.get_config(f.config)
    except ValueError as e:
      raise UsageError(f'--config: {_one_line(e)}') from None
    a, b = named.to_dict(), r.config.to_dict()
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
      raise UsageError(f'--config {f.config} disagrees with the config of --ckpt {r.ckpt} in '
                       + ', '.join(f'{k} ({a.get(k)!r} vs {b.get(k)!r})' for k in diff[:4]))
  input_spec = f.input or BUNDLED_SAMPLES
  try:
    r.files = io.expand_inputs(input_spec)
  except ValueError as e:
    raise UsageError(_one_line(e) if f.input else
                     f'no bundled sample images in {BUNDLED_SAMPLES}; pass --input') from None
  r.class_conditional = configs.is_class_conditional(r.config)
  r.classifier_config = None
  if f.classifier_ckpt:
    if not os.path.exists(f.classifier_ckpt):
      raise UsageError(f'--classifier_ckpt {f.classifier_ckpt}: no such checkpoint directory')
    r.classifier_config = _load_config(f.classifier_ckpt, 'classifier_ckpt')
    c = r.classifier_config
    if c.family != 'adm_classifier':
      raise UsageError(f'--classifier_ckpt {f.classifier_ckpt} is not a classifier (family '
                       f'{c.family!r})')
    if (c.image_size, c.in_channels) != (r.config.image_size, r.config.in_channels):
      raise UsageError(f'--classifier_ckpt is for {c.image_size}x{c.image_size}x{c.in_channels} '
                       f'images, --ckpt for {r.config.image_size}x{r.config.image_size}x'
                       f'{r.config.in_channels}')

  # Class labels.
  wants_labels = r.class_conditional or r.classifier_config is not None
  r.labels = None
  if f.class_label is not None or f.class_labels:
    if not wants_labels:
      raise UsageError('class labels need a class-conditional --ckpt or a --classifier_ckpt')
    r.labels = ([f.class_label] * len(r.files) if f.class_label is not None
                else load_class_labels(f.class_labels, r.files))
    limits = []
    if r.class_conditional:
      limits.append(r.config.num_classes)
    if r.classifier_config is not None:
      limits.append(r.classifier_config.out_channels)
    bad = sorted({lab for lab in r.labels if not 0 <= lab < min(limits)})
    if bad:
      raise UsageError(f'class labels must be in [0, {min(limits)}), got {bad[:5]}')
  elif wants_labels:
    raise UsageError('this network needs class labels: pass --class_label or --class_labels'
                     if r.class_conditional else
                     'classifier guidance needs class labels: pass --class_label or '
                     '--class_labels')

  # Operator.
  size = r.config.image_size
  r.x_shape = (size, size, r.config.in_channels)
  try:
    if f.deg == 'blur':
      kv, kh = load_kernel(f.kernel)
      r.op = operators.separable_blur(kv, kh, r.x_shape)
    elif f.deg == 'inp':
      if f.mask:
        r.op = operators.make('inp', r.x_shape, mask=load_mask(f.mask, r.x_shape[:2]))
      else:
        r.op = operators.make('inp', r.x_shape, key=f.seed)
    elif f.deg in ('cs2', 'cs4') and f.perm:
      perm = _load_npy(f.perm, 'perm')
      if not np.issubdtype(perm.dtype, np.integer):
        raise UsageError(f'--perm {f.perm}: expected integers, got dtype {perm.dtype}')
      r.op = operators.make(f.deg, r.x_shape, perm=perm)
    elif f.deg in ('cs2', 'cs4'):
      r.op = operators.make(f.deg, r.x_shape, key=f.seed)
    else:
      r.op = operators.make(f.deg, r.x_shape)
  except UsageError:
    raise
  except ValueError as e:
    what = {'blur': f'--kernel {f.kernel}', 'inp': f'--mask {f.mask}',
            'cs2': f'--perm {f.perm}', 'cs4': f'--perm {f.perm}'}.get(f.deg)
    what = what if what and not what.endswith('None') else f'--deg {f.deg}'
    raise UsageError(f'{what} for {size}x{size} images: {_one_line(e)}') from None

  # What one input file must look like.
  r.apply_h = f.measurement and f.deg.startswith('inp')
  r.in_shape = r.x_shape if (not f.measurement or r.apply_h) else tuple(r.op.y_shape)
  return r


def _read_input(path, r, f):
  """One input file as the step's input array (clean image or measurement)."""
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  h, w, c = r.in_shape
  x = io.to_channels(io.read_image(path), c)
  return io.fit(x, (h, w), f.resize, name=path)


def _resume_settings(f, r):
  """What must be the same for --resume to continue a run (not --batch_size: outputs do not
  depend on it)."""
  from ddrm_jax import runner  # pylint: disable=g-import-not-at-top
  path = lambda p: None if p is None else os.path.abspath(p)
  keys = ('deg', 'sigma_y', 'steps', 'eta', 'eta_b', 'seed', 'num_samples', 'measurement',
          'resize', 'classifier_scale', 'class_label')
  out = {k: f[k].value for k in keys}
  out.update({k: path(f[k].value) for k in ('kernel', 'mask', 'perm', 'class_labels',
                                             'classifier_ckpt')})
  out.update(checkpoint=path(r.ckpt), inputs=len(r.files),
             inputs_sha256=runner.inputs_digest(r.files))
  return out


def run_restore(f):
  """The command on parsed flags `f`; returns the exit status."""
  from ddrm_jax import runner  # pylint: disable=g-import-not-at-top
  _validate(f)
  try:
    runner.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id,
                                  auto=f.distributed)
  except runner.RunError as e:
    raise UsageError(_one_line(e)) from None
  r = _resolve(f)

  from ddrm_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  from ddrm_jax import restore  # pylint: disable=g-import-not-at-top

  job = runner.Job(
      files=r.files, names=io.unique_stems(r.files), read=lambda p: _read_input(p, r, f),
      seed=f.seed, batch_size=f.batch_size, num_samples=f.num_samples,
      paper=not f.measurement, labels=r.labels, out_dir=f.output,
      make_out_dir=lambda: new_run_dir(RUNS_DIR, f.deg), resume=f.resume,
      settings=_resume_settings(f, r), prefetch=f.prefetch, workers=f.read_threads, prog=PROG,
      info={'flags': {k: f[k].value for k in sorted(f) if k != 'traceback'},
            'ckpt': os.path.abspath(r.ckpt), 'image_shape': list(r.x_shape)})
  try:
    plan = runner.prepare(job)
  except runner.RunError as e:
    raise UsageError(_one_line(e)) from None
  n = len(r.files)
  if plan.finished:
    print(f'{PROG}: all {n} images of {f.output} are done; nothing to do')
    return 0

  try:
    net_fn, params, _ = checkpoints.load_model(r.ckpt)
    cls_fn, cls_params = None, None
    if r.classifier_config is not None:
      cls_fn, cls_params, _ = checkpoints.load_model(f.classifier_ckpt)
  except ValueError as e:
    raise UsageError(_one_line(e)) from None
  try:
    settings = restore.Settings(
        deg=f.deg, steps=f.steps, eta=f.eta, eta_b=f.eta_b, sigma_y=2.0 * f.sigma_y,
        num_samples=f.num_samples, classifier_scale=f.classifier_scale,
        measurement=f.measurement, apply_h=r.apply_h)
  except ValueError as e:
    raise UsageError(_one_line(e)) from None
  step = restore.make_restore_step(net_fn, settings, class_conditional=r.class_conditional,
                                   classifier_net_fn=cls_fn)
  res = runner.run(plan, step, (params, cls_params, r.op), log=_info, err=_err)

  who = ('' if plan.process_count == 1 else
         f' (process {plan.process_index} of {plan.process_count})')
  share = res.restored + len(res.failed) + res.skipped
  if res.restored + res.skipped == 0:
    if share > 1:
      _err(f'none of the {share} inputs could be restored{who}')
    return 1
  skipped = f', {res.skipped} done before' if res.skipped else ''
  print(f'{PROG}: restored {res.restored} of {share} images{who}{skipped} ({f.deg}, sigma_y '
        f'{f.sigma_y:g}, {f.steps} steps, {f.num_samples} sample{"s" if f.num_samples > 1 else ""}'
        f' each) in {res.run_s:.1f} s, {res.images_per_s:.2f} img/s -> {res.out_dir}')
  summary = res.mean
  if summary is not None:
    fmt = lambda v, d: '-' if v is None else f'{v:.{d}f}'
    every = '' if res.all_done == n and plan.process_count == 1 else f' (all {res.all_done})'
    print(f'  PSNR {fmt(summary["psnr"], 2)} dB  SSIM {fmt(summary["ssim"], 4)}   |   baseline '
          f'PSNR {fmt(summary["baseline_psnr"], 2)} dB  SSIM {fmt(summary["baseline_ssim"], 4)}'
          f'{every}')
    if f.num_samples > 1:
      print(f'  (posterior mean of {f.num_samples}; single samples: PSNR '
            f'{fmt(summary["sample_psnr"], 2)} dB  SSIM {fmt(summary["sample_ssim"], 4)})')
  if res.failed:
    _err(f'{len(res.failed)} of {share} inputs failed (see above); the others are in '
         f'{res.out_dir}')
    return 1
  return 0


def main(argv):
  """Runs the command on the full command line `argv` (program name first); returns the status."""
  fv = flags.FlagValues()
  define_flags(fv)
  argv = list(argv)
  if any(a in ('-h', '--help', '-help', '--helpfull', '--helpshort') for a in argv[1:]):
    try:
      print(__doc__)
      print(fv.get_help())
    except BrokenPipeError:  # e.g. piped into `head`.
      pass
    return 0
  try:
    rest = fv(argv)
  except flags.Error as e:
    _err(_one_line(e))
    return 1
  if len(rest) > 1:
    _err(f'unexpected arguments: {" ".join(rest[1:])} (flags are --name=value)')
    return 1
  try:
    return run_restore(fv)
  except UsageError as e:
    _err(_one_line(e))
    return 1
  except KeyboardInterrupt:
    _err('interrupted')
    return 130
  except Exception as e:  # pylint: disable=broad-except
    if fv.traceback:
      traceback.print_exc()
    _err(f'unexpected {type(e).__name__}: {_one_line(e)} (rerun with --traceback for details)')
    return 1


def run():
  """Console entry point `ddrm-restore`."""
  sys.exit(main(sys.argv))


if __name__ == '__main__':
  run()
