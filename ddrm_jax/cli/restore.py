"""`ddrm-restore`: restore images with DDRM from the command line.

Paper protocol (default): clean images are degraded with --deg and --sigma_y, restored, and
written as original / degraded / baseline / restored PNGs, a grid and metrics.json.
--measurement: the inputs are already degraded photos; they are restored without ground truth.

  ddrm-restore --ckpt CKPT --deg sr4 --sigma_y 0.05 --input photos/ --num_samples 8
  ddrm-restore --ckpt CKPT --deg inp --mask holes.png --measurement --input photo.png
  ddrm-restore --ckpt CKPT --deg sr4 --measurement --resize=tile --input photos/  # Any size.
  ddrm-restore --ckpt CKPT --input list.txt --output run/ --resume  # Continue a killed run.

With no --ckpt the bundled prior (ddrm_jax/assets/prior) is used, with no --input the bundled
sample images (ddrm_jax/assets/samples). Every bad input ends the command with one line on stderr
and a non-zero exit status.
"""

import csv
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import traceback

from absl import flags
import numpy as np

from ddrm_jax import bundled
from ddrm_jax import runner

PROG = 'ddrm-restore'
BUNDLED_PRIOR = bundled.PRIOR
BUNDLED_SAMPLES = bundled.SAMPLES
RUNS_DIR = 'ddrm_runs'
RESIZE_MODES = ('error', 'resize', 'center_crop', 'tile')
# The first run (no --ckpt): what the small bundled prior is good at, the posterior mean of
# several samples (with its std) at the paper's noise level.
BUNDLED_SIGMA_Y = 0.05
BUNDLED_NUM_SAMPLES = 8
BLIND_ETA_B = 0.7  # blind.sample_blind's default (see its docstring).
OUTPUT_DIRS = ('original', 'degraded', 'baseline', 'restored', 'samples', 'std', 'kernels',
               runner.PROGRESS_DIR)
OUTPUT_FILES = (runner.GRID_PNG, runner.METRICS_JSON, runner.RUN_JSON)
SEED_LIMIT = 2**32
CIRCULAR_DEGS = ('blur2d', 'deblur_motion', 'blind_blur')  # operators.circular_blur


class UsageError(ValueError):
  """A bad flag, file or combination; reported as one line."""


class Interrupted(KeyboardInterrupt):
  """SIGTERM, handled like Ctrl-C (what is done is written, then the command exits)."""


class SigmaYParser(flags.ArgumentParser):
  """--sigma_y: a number, or 'auto' (estimated from the photos in measurement mode)."""

  def parse(self, argument):
    if isinstance(argument, str) and argument.strip().lower() == 'auto':
      return 'auto'
    try:
      return float(argument)
    except (TypeError, ValueError):
      raise ValueError(f'expected a number or auto, got {argument!r}') from None

  def flag_type(self):
    return 'float or auto'


def define_flags(fv):
  """Defines the command's flags on FlagValues `fv` (a fresh one per call of `main`)."""
  s, f, i, b = flags.DEFINE_string, flags.DEFINE_float, flags.DEFINE_integer, flags.DEFINE_bool
  # Model.
  s('ckpt', None, 'Checkpoint directory (converted or trained). Default: the bundled prior.',
    flag_values=fv)
  s('config', None, 'Optional config name (e.g. celeba_hq); an error if it disagrees with the '
    "checkpoint's own config.", flag_values=fv)
  # Problem.
  s('deg', 'sr4', 'Degradation: a name of ddrm_jax.operators.NAMES, blur (with --kernel), or '
    'blind_blur (blind deblurring: the kernel is estimated with the image).', flag_values=fv)
  s('kernel', None, '.npy blur kernel for --deg blur: 1-D (both axes) or (2, L) = (vertical, '
    'horizontal); for --deg blur2d (circular 2-D blur): a .npy (kh, kw) or (kh, kw, C), used as '
    'given, or a grayscale PNG, normalised to sum 1 (default: a seeded 7x7 camera shake); for '
    '--deg blind_blur (paper protocol) the true kernel that blurs the images (default: the '
    'deblur_motion kernel of --kernel_size), never shown to the restoration.', flag_values=fv)
  i('kernel_size', None, '--deg blind_blur: size of the estimated kernel (odd, >= 3; default '
    "deblur_motion's size for the image, 5 at 64x64, 17 at 256x256).", flag_values=fv)
  s('mask', None, 'Inpainting mask for --deg inp: PNG or .npy of (H, W), nonzero = kept.',
    flag_values=fv)
  s('perm', None, '.npy permutation of 0..H*W-1 for --deg cs2/cs4 (the kept Walsh-Hadamard '
    'coefficients come first).', flag_values=fv)
  flags.DEFINE(SigmaYParser(), 'sigma_y', None, 'Measurement noise std in [0, 1] image units, as '
               'in the paper (doubled for the [-1, 1] model); with --measurement also "auto": '
               'estimated from the photos (metrics.noise_sigma, the median over the inputs). '
               f'Default: {BUNDLED_SIGMA_Y} with the bundled prior, else 0.', flag_values=fv)
  # Sampler.
  i('steps', 20, 'Number of DDRM steps (network calls).', flag_values=fv)
  f('eta', 0.85, 'DDRM eta (Eq. 8).', flag_values=fv)
  f('eta_b', None, 'DDRM eta_b (Eq. 8); default 1.0, 0.7 for --deg blind_blur.', flag_values=fv)
  i('seed', 0, 'Random seed: image i uses fold_in(key(seed), i).', flag_values=fv)
  i('batch_size', 4, 'Images read, dispatched and written together by each process (rounded up '
    'to a multiple of the local device count); each device restores one image at a time, with '
    'its --num_samples chains as the network batch, so results do not depend on it.',
    flag_values=fv)
  i('num_samples', None, 'Posterior samples per image; > 1 restores their mean and also writes '
    f'each sample and their std. Default: {BUNDLED_NUM_SAMPLES} with the bundled prior, else 1.',
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
  b('overwrite', False, 'Replace the earlier run in an existing --output folder (its outputs '
    'are deleted first; a folder that holds no run is refused).', flag_values=fv)
  flags.DEFINE_enum('resize', 'error', RESIZE_MODES, 'Inputs of another size than the model '
                    'expects: error, resize, center_crop (crop to the aspect, then resize), or '
                    'tile (restore at their own size, at least the network\'s, by overlapping '
                    'tiles of the network\'s size).', flag_values=fv)
  i('tile_overlap', None, '--resize=tile: pixels shared by neighbouring tiles, in [0, tile). '
    'Default: a quarter of the tile.', flag_values=fv)
  i('tiles_per_call', None, '--resize=tile: at most this many tiles per network call (the memory '
    'bound). Default: --batch_size x --num_samples.', flag_values=fv)
  b('measurement', False, 'Inputs are real degraded photos (no ground truth, no metrics).',
    flag_values=fv)
  b('traceback', False, 'Show the Python traceback of an unexpected error.', flag_values=fv)
  # Dataset-scale runs (ddrm_jax/runner.py).
  b('resume', False, 'Continue the run in --output: restore only the images not done yet '
    '(refused if its run.json has other settings; not with --overwrite).', flag_values=fv)
  i('prefetch', 2, 'Batches read and decoded ahead of the device; 0 reads in the loop.',
    flag_values=fv)
  i('read_threads', 4, 'Threads that read and decode input files.', flag_values=fv)
  i('images_per_device', 1, 'Images each device restores together in one program. 1 (the '
    'default): every file is the same bits whatever --batch_size and device count. More: '
    'network batches of images_per_device x --num_samples, faster on GPUs/TPUs with '
    '--num_samples 1; files then agree across --batch_size only to within float rounding.',
    flag_values=fv)
  s('coordinator_address', None, 'Several processes: host:port of process 0, for '
    'jax.distributed.initialize (with --num_processes, --process_id).', flag_values=fv)
  i('num_processes', None, 'Several processes: how many.', flag_values=fv)
  i('process_id', None, 'Several processes: this one, in [0, --num_processes).', flag_values=fv)
  b('distributed', False, 'Call jax.distributed.initialize() with no arguments (TPU pod '
    'slices, SLURM: JAX finds the coordinator itself).', flag_values=fv)


# -- small helpers ------------------------------------------------------------------------------


def _err(msg):
  print(f'{PROG}: error: {msg}', file=sys.stderr, flush=True)


def _info(msg):
  print(msg, file=sys.stderr, flush=True)


def _load_npy(path, flag):
  if not os.path.isfile(path):
    raise UsageError(f'--{flag} {path}: no such file')
  try:
    with open(path, 'rb') as fh:
      magic = fh.read(len(np.lib.format.MAGIC_PREFIX))
  except OSError as e:
    raise UsageError(f'--{flag} {path}: cannot read ({runner.one_line(e)})') from None
  if magic != np.lib.format.MAGIC_PREFIX:
    raise UsageError(f'--{flag} {path}: not a readable .npy array (no NumPy header; save it '
                     'with numpy.save)')
  try:
    return np.load(path, allow_pickle=False)
  except ValueError as e:
    if 'pickle' in str(e):  # an object array: never unpickled
      raise UsageError(f'--{flag} {path}: not a readable .npy array (it holds Python objects, '
                       'not numbers)') from None
    raise UsageError(f'--{flag} {path}: not a readable .npy array ({runner.one_line(e)})') from None
  except Exception as e:  # numpy raises OSError, EOFError...: a truncated or corrupt file
    raise UsageError(f'--{flag} {path}: not a readable .npy array (corrupt or truncated: '
                     f'{type(e).__name__})') from None


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


def load_kernel2d(path):
  """--kernel for blur2d: a .npy (kh, kw) or (kh, kw, C) as given, or an image file (a grayscale
  PNG, as blind-deblurring data sets ship kernels) normalised to sum 1."""
  if path.lower().endswith('.npy'):
    k = _load_npy(path, 'kernel')
    if not np.issubdtype(k.dtype, np.number) or np.iscomplexobj(k):
      raise UsageError(f'--kernel {path}: expected real numbers, got dtype {k.dtype}')
    return k.astype(np.float64)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise UsageError(f'--kernel {path}: no such file')
  try:
    with Image.open(path) as im:
      k = np.asarray(im.convert('RGB') if im.mode not in ('L', 'I', 'I;16', 'F') else im,
                     np.float64)
  except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError...
    raise UsageError(f'--kernel {path}: cannot read image ({runner.one_line(e)})') from None
  if k.ndim == 3:
    if np.ptp(k, axis=-1).max() > 0:
      raise UsageError(f'--kernel {path}: a colour image, not a blur kernel (expected grayscale)')
    k = k[..., 0]
  if k.sum() <= 0:
    raise UsageError(f'--kernel {path}: all black, not a blur kernel')
  return k / k.sum()


def load_mask(path):
  """--mask: (H, W) float32 in {0, 1} (1 = kept) from a PNG/image (nonzero) or a .npy; its size
  is checked by `make_operator`, image by image."""
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
      raise UsageError(f'--mask {path}: cannot read image ({runner.one_line(e)})') from None
  m = (m != 0).astype(np.float32)
  if not m.any():
    raise UsageError(f'--mask {path}: keeps no pixel (nonzero = kept)')
  return m


def _label_names(f):
  """The names by which a --class_labels row may name input file `f`."""
  return (f, os.path.basename(f), os.path.splitext(os.path.basename(f))[0])


def _names_an_input(name, files):
  return any(name in _label_names(f) for f in files)


def _check_mask_size(path, m, size):
  if tuple(m.shape) != tuple(size):
    raise UsageError(f'--mask {path}: is {m.shape[0]}x{m.shape[1]}, the images are '
                     f'{size[0]}x{size[1]}')


def load_side_files(f):
  """The arrays of --kernel, --mask and --perm that --deg uses (read once per run)."""
  side = {}
  if f.deg == 'blur':
    side['kernel'] = load_kernel(f.kernel)
  elif f.deg in ('blur2d', 'blind_blur') and f.kernel:  # blind_blur: the true kernel.
    side['kernel2d'] = load_kernel2d(f.kernel)
  elif f.deg == 'inp' and f.mask:
    side['mask'] = load_mask(f.mask)
  elif f.deg in ('cs2', 'cs4') and f.perm:
    perm = _load_npy(f.perm, 'perm')
    if not np.issubdtype(perm.dtype, np.integer):
      raise UsageError(f'--perm {f.perm}: expected integers, got dtype {perm.dtype}')
    side['perm'] = perm
  return side


def make_operator(f, side, x_shape):
  """The operator of --deg for images of x_shape (H, W, C); bad combinations: UsageError."""
  from ddrm_jax import operators  # pylint: disable=g-import-not-at-top
  h, w = x_shape[:2]
  try:
    if f.deg == 'blur':
      return operators.separable_blur(*side['kernel'], x_shape)
    if f.deg == 'blur2d' and 'kernel2d' in side:
      return operators.make('blur2d', x_shape, kernel=side['kernel2d'])
    if f.deg == 'inp' and 'mask' in side:
      _check_mask_size(f.mask, side['mask'], (h, w))
      return operators.make('inp', x_shape, mask=side['mask'])
    if f.deg == 'inp' or (f.deg in ('cs2', 'cs4') and 'perm' not in side):
      return operators.make(f.deg, x_shape, key=f.seed)
    if f.deg in ('cs2', 'cs4'):
      return operators.make(f.deg, x_shape, perm=side['perm'])
    return operators.make(f.deg, x_shape)
  except UsageError:
    raise
  except ValueError as e:
    what = {'blur': f'--kernel {f.kernel}', 'blur2d': f'--kernel {f.kernel}',
            'inp': f'--mask {f.mask}',
            'cs2': f'--perm {f.perm}', 'cs4': f'--perm {f.perm}'}.get(f.deg)
    what = what if what and not what.endswith('None') else f'--deg {f.deg}'
    raise UsageError(f'{what} for {h}x{w} images: {runner.one_line(e)}') from None


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
          if n == 0 and not _names_an_input(name, files):  # A header row, e.g. "file,label".
            continue
          raise UsageError(f'--class_labels {path}: line {n + 1}: label {label!r} of {name!r} '
                           'is not an int') from None
  except (OSError, UnicodeDecodeError) as e:
    raise UsageError(f'--class_labels {path}: cannot read ({runner.one_line(e)})') from None
  labels, missing = [], []
  for f in files:
    for name in _label_names(f):
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
  bundled_prior = not f.ckpt
  if f.sigma_y is None:
    f.sigma_y = BUNDLED_SIGMA_Y if bundled_prior else 0.0
  if f.num_samples is None:
    f.num_samples = BUNDLED_NUM_SAMPLES if bundled_prior else 1
  if f.eta_b is None:
    f.eta_b = BLIND_ETA_B if f.deg == 'blind_blur' else 1.0
  empty = [f'--{name}' for name in sorted(f)
           if f[name].present and isinstance(f[name].value, str) and not f[name].value.strip()]
  if empty:
    raise UsageError(f'{", ".join(empty)} is empty (leave the flag out for its default)')
  names = tuple(operators.NAMES) + ('blur', 'blind_blur')
  if f.deg not in names:
    raise UsageError(f'unknown --deg {f.deg!r}; known: {", ".join(names)}')
  if f.sigma_y == 'auto':
    if not f.measurement:
      raise UsageError('--sigma_y auto estimates the noise of real photos: it needs --measurement')
  elif not 0.0 <= f.sigma_y <= 1.0 or not math.isfinite(f.sigma_y):
    raise UsageError(f'--sigma_y must be in [0, 1] (image units), got {f.sigma_y}')
  if not 1 <= f.steps <= 1000:
    raise UsageError(f'--steps must be in [1, 1000], got {f.steps}')
  if not 0.0 <= f.eta <= 1.0:
    raise UsageError(f'--eta must be in [0, 1], got {f.eta}')
  if not 0.0 <= f.eta_b <= 2.0:
    raise UsageError(f'--eta_b must be in [0, 2], got {f.eta_b}')
  if not 0 <= f.seed < SEED_LIMIT:
    raise UsageError(f'--seed must be in [0, 2^32), got {f.seed}')
  if f.batch_size < 1:
    raise UsageError(f'--batch_size must be >= 1, got {f.batch_size}')
  if f.num_samples < 1:
    raise UsageError(f'--num_samples must be >= 1, got {f.num_samples}')
  if not math.isfinite(f.classifier_scale):
    raise UsageError('--classifier_scale must be finite')
  if f.deg == 'blur' and not f.kernel:
    raise UsageError('--deg blur needs --kernel (a .npy of the blur taps)')
  if f.kernel and f.deg not in ('blur', 'blur2d', 'blind_blur'):
    raise UsageError(f'--kernel is for --deg blur, blur2d or blind_blur, not --deg {f.deg}')
  if f.kernel_size is not None and f.deg != 'blind_blur':
    raise UsageError(f'--kernel_size is for --deg blind_blur, not --deg {f.deg}')
  if f.deg == 'blind_blur' and f.kernel and f.measurement:
    raise UsageError('--deg blind_blur --measurement estimates the kernel: leave --kernel out '
                     '(or restore with --deg blur2d --kernel if you know it)')
  if f.deg == 'blind_blur' and f.classifier_ckpt:
    raise UsageError('--deg blind_blur does not take classifier guidance (--classifier_ckpt)')
  if f.mask and f.deg != 'inp':
    raise UsageError(f'--mask is for --deg inp, not --deg {f.deg}')
  if f.perm and f.deg not in ('cs2', 'cs4'):
    raise UsageError(f'--perm is for --deg cs2/cs4, not --deg {f.deg}')
  if f.class_label is not None and f.class_labels:
    raise UsageError('give --class_label or --class_labels, not both')
  if f['classifier_scale'].present and not f.classifier_ckpt:
    raise UsageError('--classifier_scale needs --classifier_ckpt')
  for name in ('tile_overlap', 'tiles_per_call'):
    if f[name].present and f.resize != 'tile':
      raise UsageError(f'--{name} is for --resize=tile')
  if f.tiles_per_call is not None and f.tiles_per_call < 1:
    raise UsageError(f'--tiles_per_call must be >= 1, got {f.tiles_per_call}')
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
  if f.resume and f.overwrite:
    raise UsageError('give --resume (continue the run in --output) or --overwrite (replace it), '
                     'not both')
  if f.prefetch < 0 or f.read_threads < 1:
    raise UsageError('--prefetch must be >= 0 and --read_threads >= 1')
  if f.images_per_device < 1:
    raise UsageError(f'--images_per_device must be >= 1, got {f.images_per_device}')


def _load_config(path, flag):
  from ddrm_jax import checkpoints  # pylint: disable=g-import-not-at-top
  if os.path.isfile(path):
    raise UsageError(f'--{flag} {path}: is a file, not a ddrm-jax checkpoint directory (convert '
                     'PyTorch checkpoints with python -m weights_convert)')
  try:
    return checkpoints.load_config(path)
  except ValueError as e:
    raise UsageError(f'--{flag}: {runner.one_line(e)}') from None


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
      raise UsageError(f'--config: {runner.one_line(e)}') from None
    a, b = named.to_dict(), r.config.to_dict()
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
      raise UsageError(f'--config {f.config} disagrees with the config of --ckpt {r.ckpt} in '
                       + ', '.join(f'{k} ({a.get(k)!r} vs {b.get(k)!r})' for k in diff[:4]))
  input_spec = f.input or BUNDLED_SAMPLES
  try:
    r.files = io.expand_inputs(input_spec)
  except ValueError as e:
    raise UsageError(runner.one_line(e) if f.input else
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

  # Operator (at the network's size; by tiles, one per image size, see `_tile_groups`).
  size = r.config.image_size
  r.x_shape = (size, size, r.config.in_channels)
  r.side = load_side_files(f)
  r.apply_h = f.measurement and f.deg.startswith('inp')
  r.tiled = f.resize == 'tile'
  # Set by _circular: the blur kernel, measurement mode's border padding (with `extend`, which
  # fills it) and blind_blur's true kernel and kernel size.
  r.kernel = r.padding = r.extend = r.true_kernel = None
  r.kernel_size = 0
  if r.tiled:
    if f.deg == 'blind_blur' or (f.measurement and f.deg in CIRCULAR_DEGS):
      raise UsageError(f'--resize=tile does not support --deg {f.deg}'
                       + (' with --measurement' if f.deg != 'blind_blur' else ''))
    _resolve_tiles(f, r)
    return r
  if f.deg in CIRCULAR_DEGS:
    try:
      r.kernel, r.op = _circular(f, r, operators)
    except UsageError:
      raise
    except ValueError as e:
      what = (f'--kernel {f.kernel}' if f.kernel else
              f'--kernel_size {f.kernel_size}' if f.kernel_size else f'--deg {f.deg}')
      raise UsageError(f'{what} for {size}x{size} images: {runner.one_line(e)}') from None
  else:
    r.op = make_operator(f, r.side, r.x_shape)

  # What one input file must look like.
  r.in_shape = r.x_shape if (not f.measurement or r.apply_h) else tuple(r.op.y_shape)
  if r.padding is not None:
    r.in_shape = r.x_shape  # The photo; _read_input pads it to op.y_shape.
  return r


def _circular(f, r, operators):
  """(kernel, operator) of blur2d / deblur_motion / blind_blur, a --kernel file read once by
  `load_side_files`. In measurement mode the photo's borders are
  not circular: the operator is for the photo padded by `operators.border_padding` (sizes the
  network's down-sampling accepts), which `_read_input` fills by `reflect_extension`."""
  import jax  # pylint: disable=g-import-not-at-top
  from ddrm_jax.operators import registry  # pylint: disable=g-import-not-at-top
  if f.deg == 'blind_blur':
    from ddrm_jax import blind  # pylint: disable=g-import-not-at-top
    size = f.kernel_size if f.kernel_size is not None else registry.motion_kernel_size(r.x_shape)
    try:
      r.kernel_size = blind.check_kernel_size(size, r.x_shape)
    except ValueError as e:
      raise UsageError(f'--kernel_size: {runner.one_line(e)}') from None
    if f.measurement:  # Unknown: the initial guess only fills the padded borders.
      kernel = blind.gaussian_kernel2d(r.kernel_size)
    else:
      kernel = (r.side['kernel2d'] if f.kernel else
                operators.motion_kernel(registry.MOTION_SEED, r.kernel_size))
      r.true_kernel = np.asarray(kernel, np.float64)
  elif f.deg == 'blur2d':
    kernel = (r.side['kernel2d'] if f.kernel else
              operators.motion_kernel(registry.MOTION_SEED, registry.BLUR2D_DEFAULT_SIZE))
  else:
    kernel = operators.motion_kernel(registry.MOTION_SEED,
                                     registry.motion_kernel_size(r.x_shape))
  op = operators.circular_blur(kernel, r.x_shape)  # Checks the kernel.
  if f.measurement:
    h, w, c = r.x_shape
    mult = getattr(r.config, 'ch_mult', None) or getattr(r.config, 'channel_mult', None) or (1,)
    r.padding = operators.border_padding(h, w, np.shape(kernel), 2**(len(mult) - 1))
    (top, bottom), (left, right) = r.padding
    op = operators.circular_blur(kernel, (h + top + bottom, w + left + right, c))
    r.extend = jax.jit(lambda y: operators.reflect_extension(y, kernel, r.padding))
  return kernel, op


def _resolve_tiles(f, r):
  """--resize=tile: the tiling, and how an input's size gives the restored image's size."""
  from ddrm_jax import tiling  # pylint: disable=g-import-not-at-top
  r.tile = r.x_shape[0]
  r.overlap = tiling.default_overlap(r.tile) if f.tile_overlap is None else f.tile_overlap
  if not 0 <= r.overlap < r.tile:
    raise UsageError(f'--tile_overlap must be in [0, {r.tile}) pixels (the network\'s tiles are '
                     f'{r.tile}x{r.tile}), got {r.overlap}')
  r.tiles_per_call = f.tiles_per_call or f.batch_size * f.num_samples
  r.op = None
  r.scale = (1, 1)  # Restored size = input size x scale.
  r.in_channels = r.x_shape[2]
  if f.measurement and not r.apply_h:
    op = make_operator(f, r.side, r.x_shape)  # The measurement's size at the network's size.
    (h, w, c), (yh, yw) = r.x_shape, tuple(op.y_shape)[:2]
    if len(op.y_shape) != 3 or h % yh or w % yw:
      raise UsageError(f'--resize=tile: --deg {f.deg} measurements are not images of a whole '
                       'fraction of the restored size')
    r.scale, r.in_channels = (h // yh, w // yw), op.y_shape[2]


def _tile_groups(f, r, report):
  """--resize=tile: [(x_shape, op, file indices)] by restored size, in order of appearance.

  Inputs that cannot be read, are too small or have no operator at their size go to
  `report(index, message)`.
  """
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  by_size = {}
  for i, path in enumerate(r.files):
    try:
      h, w = io.read_image(path).shape[:2]
    except ValueError as e:
      report(i, runner.one_line(e))
      continue
    x_shape = (h * r.scale[0], w * r.scale[1], r.x_shape[2])
    if min(x_shape[:2]) < r.tile:
      implied = '' if r.scale == (1, 1) else f' (restored {x_shape[0]}x{x_shape[1]})'
      report(i, f'{path}: size {h}x{w}{implied} is smaller than the network\'s {r.tile}x'
             f'{r.tile} tiles (use --resize=resize or --resize=center_crop)')
      continue
    by_size.setdefault(x_shape, []).append(i)
  groups = []
  for x_shape, members in by_size.items():
    try:
      groups.append((x_shape, make_operator(f, r.side, x_shape), members))
    except UsageError as e:
      for i in members:
        report(i, f'{r.files[i]}: {runner.one_line(e)}')
  return groups


def _tiled_net_fn(net_fn, cls_fn, r, f):
  """--resize=tile: `fn((params, classifier_params), x, t, labels)` -> eps of whole images.

  Each tile's eps (classifier guidance folded in as the sampler does: eps - sqrt(1 - alpha_bar_t)
  grad) is blended by `tiling.tiled`; labels go with each tile.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ddrm_jax import diffusion  # pylint: disable=g-import-not-at-top
  from ddrm_jax import restore  # pylint: disable=g-import-not-at-top
  from ddrm_jax import tiling  # pylint: disable=g-import-not-at-top
  b = diffusion.sqrt_one_minus_alpha_bars(diffusion.alpha_bars(diffusion.linear_betas()))

  def eps_of_tiles(both, x, t, *labels):
    params, cls_params = both
    eps = net_fn(params, x, t, *labels) if r.class_conditional else net_fn(params, x, t)
    if cls_fn is None:
      return eps
    grad = sampler.classifier_guidance(lambda x_t, t_: cls_fn(cls_params, x_t, t_), labels[0],
                                       f.classifier_scale)(x, t)
    c = x.shape[-1]
    guided = eps[..., :c] - jnp.asarray(b)[t + 1][:, None, None, None] * grad
    return jnp.concatenate([guided.astype(eps.dtype), eps[..., c:]], axis=-1)

  def fn(both, x, t, labels):
    whole = tiling.tiled(lambda x_, t_, *lab: eps_of_tiles(both, x_, t_, *lab), r.tile,
                         overlap=r.overlap, tiles_per_call=r.tiles_per_call)
    return whole(x, t) if labels is None else whole(x, t, labels)
  return fn


def _read_input(path, r, f, x_shape=None):
  """One input file as the step's input array (clean image or measurement)."""
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  if r.tiled:
    x = io.to_channels(io.read_image(path), r.in_channels)
    if x_shape is not None and x.shape[:2] != (x_shape[0] // r.scale[0],
                                               x_shape[1] // r.scale[1]):
      raise io.ImageError(f'{path}: changed size during the run')
    return x
  h, w, c = r.in_shape
  x = io.to_channels(io.read_image(path), c)
  x = io.fit(x, (h, w), f.resize, name=path)
  if r.padding is not None:  # A real blurred photo: extend its borders (`_circular`).
    x = np.asarray(r.extend(x))
  return x


def _estimate_sigma_y(r, f):
  """--sigma_y auto: metrics.noise_sigma of every readable photo ([0, 1] units); the median."""
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  from ddrm_jax import metrics  # pylint: disable=g-import-not-at-top
  padding, r.padding = r.padding, None  # Estimate on the photo itself.
  per_image = {}
  for path in r.files:
    try:
      per_image[path] = metrics.noise_sigma(io.to_unit(_read_input(path, r, f)))
    except ValueError:
      continue  # Reported by the restore loop.
  r.padding = padding
  if not per_image:
    return 0.0, per_image
  return float(np.median(list(per_image.values()))), per_image


def _earlier_run(path):
  """Whether folder `path` holds an earlier ddrm-restore run (its run.json)."""
  try:
    info = runner.read_json(os.path.join(path, runner.RUN_JSON))
  except runner.RunError:
    return False
  return isinstance(info, dict) and (info.get('program') == PROG or {'flags', 'ckpt'} <= set(info))


def clear_earlier_run(path):
  """Deletes what an earlier run wrote into `path` (its PNGs and kernels under the output
  folders, its journals, the grid, metrics.json, run.json and unfinished temporary files); any
  other file is left alone."""
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
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


def prepare_output(f):
  """The output folder, made (and checked writable) before any model is loaded.

  A new numbered folder under RUNS_DIR by default. An existing --output needs --overwrite or
  --resume. --overwrite: it must be empty or hold an earlier ddrm-restore run, whose outputs are
  then deleted (other files stay); any other folder is refused. --resume: it is kept as it is
  (the runner checks that it holds a run of the same settings). Returns (path, whether this run
  created it).
  """
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  if f.output and os.path.exists(f.output):
    if not os.path.isdir(f.output):
      raise UsageError(f'--output {f.output} exists and is not a folder')
    if not f.overwrite and not f.resume:
      raise UsageError(f'--output {f.output} already exists; pass --overwrite to write into it '
                       f'or --resume to continue its run (or leave --output out for a new folder '
                       f'under {RUNS_DIR}/)')
  where = f'--output {f.output}' if f.output else f'{RUNS_DIR}/'
  try:
    if not f.output:
      path, created = new_run_dir(RUNS_DIR, f.deg), True
    elif os.path.isdir(f.output):
      path, created = f.output, False
      if os.listdir(path) and not f.resume:
        if not _earlier_run(path):
          raise UsageError(f'--output {path} holds files but no earlier {PROG} run (run.json); '
                           'not writing into it (choose a new or empty folder)')
        clear_earlier_run(path)
    else:
      path, created = f.output, True
      os.makedirs(path)
    if f.resume:  # Its run.json stays: only check that files can be made there.
      with tempfile.NamedTemporaryFile(dir=path, prefix=f'.probe{io.TMP_MARK}'):
        pass
    else:
      runner.write_json(os.path.join(path, runner.RUN_JSON),
                        {'program': PROG, 'status': 'running'})
  except OSError as e:
    raise UsageError(f'{where}: cannot write there ({runner.one_line(e)})') from None
  return path, created


def _resume_settings(f, r):
  """What must be the same for --resume to continue a run (not --batch_size: outputs do not
  depend on it, but --tiles_per_call does)."""
  path = lambda p: None if p is None else os.path.abspath(p)
  keys = ('deg', 'sigma_y', 'steps', 'eta', 'eta_b', 'seed', 'num_samples', 'measurement',
          'resize', 'classifier_scale', 'class_label', 'kernel_size')
  out = {k: f[k].value for k in keys}
  out.update({k: path(f[k].value) for k in ('kernel', 'mask', 'perm', 'class_labels',
                                             'classifier_ckpt')})
  if r.tiled:
    out.update(tile_overlap=r.overlap, tiles_per_call=r.tiles_per_call)
  out.update(checkpoint=path(r.ckpt), inputs=len(r.files),
             inputs_sha256=runner.inputs_digest(r.files))
  return out


def _sigma_y(f, r):
  """--sigma_y, estimated from the photos for auto (`r.sigma_y_auto`); sets `r.sigma_y`."""
  r.sigma_y_auto = None
  sigma_y = f.sigma_y
  if sigma_y == 'auto':
    sigma_y, per_image = _estimate_sigma_y(r, f)
    r.sigma_y_auto = {'sigma_y': sigma_y, 'per_image': per_image}
    _info(f'{PROG}: --sigma_y auto: estimated noise std {sigma_y:.4f} ([0, 1] units; median of '
          f'{len(per_image)} photo{"s" if len(per_image) != 1 else ""}: '
          + ', '.join(f'{v:.4f}' for v in list(per_image.values())[:8])
          + (' ...' if len(per_image) > 8 else '') + ')')
  r.sigma_y = sigma_y
  return sigma_y


def _job(f, r, out_dir):
  """The runner's job: files, groups by size (--resize=tile), what run.json records."""
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  from ddrm_jax import tiling  # pylint: disable=g-import-not-at-top
  n = len(r.files)
  errors, tiles_info, read = {}, None, lambda p: _read_input(p, r, f)
  if r.tiled:  # One compilation per image size; eps blended from tiles of the network's size.
    groups, shape_of = [], {}
    for x_shape, op, members in _tile_groups(f, r, errors.__setitem__):
      k = tiling.num_tiles(x_shape[:2], r.tile, r.overlap)
      groups.append(runner.Group(
          key=x_shape, indices=members, consts=(op,), info={'shape': list(x_shape), 'tiles': k},
          note=f' by {k} tile{"s" if k > 1 else ""} of {r.tile}x{r.tile}, {f.steps} steps'))
      shape_of.update({r.files[i]: x_shape for i in members})
    read = lambda p: _read_input(p, r, f, shape_of[p])
    tiles_info = {'tile': r.tile, 'overlap': r.overlap, 'tiles_per_call': r.tiles_per_call}
  else:
    groups = [runner.Group(key=r.x_shape, indices=list(range(n)), consts=(r.op,),
                           note=f', {f.steps} steps')]
  return runner.Job(
      files=r.files, names=io.unique_stems(r.files), read=read, seed=f.seed,
      batch_size=f.batch_size, num_samples=f.num_samples,
      images_per_device=f.images_per_device, paper=not f.measurement,
      labels=r.labels, groups=groups, errors=errors, padding=r.padding,
      kernels=f.deg == 'blind_blur', true_kernel=r.true_kernel,
      out_dir=out_dir, resume=f.resume, settings=_resume_settings(f, r), tiling=tiles_info,
      prefetch=f.prefetch, workers=f.read_threads, prog=PROG,
      info={'program': PROG, 'flags': {k: f[k].value for k in sorted(f) if k != 'traceback'},
            'sigma_y': r.sigma_y, 'sigma_y_estimate': r.sigma_y_auto,
            'border_padding': r.padding, 'num_samples': f.num_samples,
            'ckpt': os.path.abspath(r.ckpt), 'image_shape': list(r.x_shape)})


def _restore_all(f, r, plan):
  """Loads the model and restores the plan's images (`runner.run`); returns its Result."""
  from ddrm_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from ddrm_jax import restore  # pylint: disable=g-import-not-at-top
  try:
    net_fn, params, _ = checkpoints.load_model(r.ckpt)
    cls_fn, cls_params = None, None
    if r.classifier_config is not None:
      cls_fn, cls_params, _ = checkpoints.load_model(f.classifier_ckpt)
  except ValueError as e:
    raise UsageError(runner.one_line(e)) from None
  try:
    settings = restore.BatchSettings(
        deg=f.deg, steps=f.steps, eta=f.eta, eta_b=f.eta_b, sigma_y=2.0 * r.sigma_y,
        num_samples=f.num_samples, classifier_scale=f.classifier_scale,
        measurement=f.measurement, apply_h=r.apply_h,
        blind_kernel_size=r.kernel_size if f.deg == 'blind_blur' else 0)
  except ValueError as e:
    raise UsageError(runner.one_line(e)) from None
  if r.tiled:
    step = restore.make_restore_step(_tiled_net_fn(net_fn, cls_fn, r, f), settings,
                                     class_conditional=True)
    consts = ((params, cls_params), None)
  else:
    step = restore.make_restore_step(net_fn, settings, class_conditional=r.class_conditional,
                                     classifier_net_fn=cls_fn)
    consts = (params, cls_params)
  try:
    return runner.run(plan, step, consts, log=_info, err=_err)
  except runner.OutOfMemory as e:
    raise UsageError(
        f'out of memory restoring {"x".join(map(str, e.shape))} images with {f.num_samples} '
        f'samples each, {e.images} at a time: lower --num_samples (now {f.num_samples}) or '
        f'--batch_size (now {f.batch_size})' + (' or --tiles_per_call' if r.tiled else '')
    ) from None


def run_restore(f):
  """The command on parsed flags `f`; returns the exit status."""
  import jax  # pylint: disable=g-import-not-at-top
  _validate(f)
  try:
    runner.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id,
                                  auto=f.distributed)
  except runner.RunError as e:
    raise UsageError(runner.one_line(e)) from None
  r = _resolve(f)
  n = len(r.files)
  # Before the model loads: an unwritable place fails now. One process prepares a shared folder.
  out_dir, created = prepare_output(f) if jax.process_index() == 0 else (f.output, False)
  nothing = lambda res: res is None or res.restored + res.skipped == 0

  def drop_if_empty(res):
    if created and nothing(res):  # No folder of nothing (failures were reported).
      shutil.rmtree(out_dir, ignore_errors=True)

  try:
    _sigma_y(f, r)
    job = _job(f, r, out_dir)
    try:
      plan = runner.prepare(job)
    except runner.RunError as e:
      raise UsageError(runner.one_line(e)) from None
    if plan.finished:
      print(f'{PROG}: all {n} images of {out_dir} are done; nothing to do')
      return 0
    res = _restore_all(f, r, plan)
  except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: what is done is merged (runner.run).
    res = getattr(e, 'result', None)
    drop_if_empty(res)
    if nothing(res):
      raise
    done = res.all_done if res.all_done is not None else res.restored + res.skipped
    _err(f'interrupted: {done} of {n} images restored; their files, metrics.json and '
         f'run.json are in {out_dir} (--resume continues the run)')
    return 143 if isinstance(e, Interrupted) else 130
  except BaseException as e:
    drop_if_empty(getattr(e, 'result', None))
    raise
  who = ('' if plan.process_count == 1 else
         f' (process {plan.process_index} of {plan.process_count})')
  share = res.restored + len(res.failed) + res.skipped
  if nothing(res):
    drop_if_empty(res)
    if share > 1:
      _err(f'none of the {share} inputs could be restored{who}')
    return 1
  what = (f'the posterior mean of {f.num_samples} samples each, with their std'
          if f.num_samples > 1 else 'one posterior sample each')
  model = 'the bundled prior' if not f.ckpt else r.ckpt
  skipped = f', {res.skipped} done before' if res.skipped else ''
  print(f'{PROG}: restored {res.restored} of {share} images{who}{skipped} with {model}: {f.deg}, '
        f'sigma_y {r.sigma_y:g}, {f.steps} steps, {what} ({res.run_s:.1f} s, '
        f'{res.images_per_s:.2f} img/s) -> {res.out_dir}')
  summary = res.mean
  if summary is not None:
    fmt = lambda v, d: '-' if v is None else f'{v:.{d}f}'
    label = 'posterior mean' if f.num_samples > 1 else 'DDRM'
    every = '' if res.all_done == n and plan.process_count == 1 else f' (all {res.all_done})'
    print(f'  {label}: PSNR {fmt(summary["psnr"], 2)} dB  SSIM {fmt(summary["ssim"], 4)}   |   '
          f'{_baseline_name(f.deg)}: PSNR {fmt(summary["baseline_psnr"], 2)} dB  SSIM '
          f'{fmt(summary["baseline_ssim"], 4)}{every}')
    if f.num_samples > 1:
      print(f'  single samples: PSNR {fmt(summary["sample_psnr"], 2)} dB  SSIM '
            f'{fmt(summary["sample_ssim"], 4)} (sharper, farther from the original)')
  if res.failed:
    _err(f'{len(res.failed)} of {share} inputs failed (see above); the others are in '
         f'{res.out_dir}')
    return 1
  return 0


def _baseline_name(deg):
  from ddrm_jax import metrics  # pylint: disable=g-import-not-at-top
  if metrics.is_super_resolution(deg):
    return 'bicubic baseline'
  if metrics.is_blur(deg):
    return 'baseline (the blurry image)'
  return 'baseline (H^+ y)'


def _raise_interrupted(signum, frame):
  del signum, frame
  raise Interrupted()


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
    _err(runner.one_line(e))
    return 1
  if len(rest) > 1:
    _err(f'unexpected arguments: {" ".join(rest[1:])} (flags are --name=value)')
    return 1
  handler = None
  try:
    handler = signal.signal(signal.SIGTERM, _raise_interrupted)
  except ValueError:  # not the main thread: leave signals alone
    pass
  try:
    return run_restore(fv)
  except UsageError as e:
    _err(runner.one_line(e))
    return 1
  except KeyboardInterrupt as e:  # before any image was done
    _err('interrupted')
    return 143 if isinstance(e, Interrupted) else 130
  except Exception as e:  # pylint: disable=broad-except
    if fv.traceback:
      traceback.print_exc()
    _err(f'unexpected {type(e).__name__}: {runner.one_line(e)} (rerun with --traceback for '
         'details)')
    return 1
  finally:
    if handler is not None:
      signal.signal(signal.SIGTERM, handler)


def run():
  """Console entry point `ddrm-restore`."""
  sys.exit(main(sys.argv))


if __name__ == '__main__':
  run()
