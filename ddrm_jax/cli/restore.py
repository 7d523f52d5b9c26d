"""`ddrm-restore`: restore images with DDRM from the command line.

Paper protocol (default): clean images are degraded with --deg and --sigma_y, restored, and
written as original / degraded / baseline / restored PNGs, a grid and metrics.json.
--measurement: the inputs are already degraded photos; they are restored without ground truth.

  ddrm-restore --ckpt CKPT --deg sr4 --sigma_y 0.05 --input photos/ --num_samples 8
  ddrm-restore --ckpt CKPT --deg inp --mask holes.png --measurement --input photo.png
  ddrm-restore --ckpt CKPT --deg sr4 --measurement --resize=tile --input photos/  # Any size.

With no --ckpt the bundled prior (ddrm_jax/assets/prior) is used, with no --input the bundled
sample images (ddrm_jax/assets/samples). Every bad input ends the command with one line on stderr
and a non-zero exit status.
"""

import csv
import json
import math
import os
import platform
import re
import shutil
import signal
import sys
import time
import traceback

from absl import flags
import numpy as np

from ddrm_jax import bundled

PROG = 'ddrm-restore'
BUNDLED_PRIOR = bundled.PRIOR
BUNDLED_SAMPLES = bundled.SAMPLES
RUNS_DIR = 'ddrm_runs'
RESIZE_MODES = ('error', 'resize', 'center_crop', 'tile')
GRID_ROWS = 16
# The first run (no --ckpt): what the small bundled prior is good at, the posterior mean of
# several samples (with its std) at the paper's noise level.
BUNDLED_SIGMA_Y = 0.05
BUNDLED_NUM_SAMPLES = 8
BLIND_ETA_B = 0.7  # blind.sample_blind's default (see its docstring).
GRID_MIN_CELL = 256  # grid cells smaller than this are enlarged (nearest neighbour)
OUTPUT_DIRS = ('original', 'degraded', 'baseline', 'restored', 'samples', 'std', 'kernels')
OUTPUT_FILES = ('grid.png', 'metrics.json', 'run.json')
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
  i('batch_size', 4, 'Images per network batch (each with --num_samples chains).', flag_values=fv)
  i('num_samples', None, 'Posterior samples per image; > 1 restores their mean and also writes '
    f'each sample and their std. Default: {BUNDLED_NUM_SAMPLES} with the bundled prior, else 1.',
    flag_values=fv)
  s('classifier_ckpt', None, 'Classifier checkpoint for classifier guidance.', flag_values=fv)
  f('classifier_scale', 1.0, 'Classifier guidance scale.', flag_values=fv)
  i('class_label', None, 'One class label for every image (class-conditional network or '
    'classifier guidance).', flag_values=fv)
  s('class_labels', None, 'CSV of file name, label (one row per input image).', flag_values=fv)
  # Files.
  s('input', None, 'An image file, a folder of images or a glob. Default: the bundled samples.',
    flag_values=fv)
  s('output', None, f'Output folder. Default: a new numbered folder under {RUNS_DIR}/.',
    flag_values=fv)
  b('overwrite', False, 'Allow writing into an existing --output folder.', flag_values=fv)
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


# -- small helpers ------------------------------------------------------------------------------


def _one_line(e):
  msg = ' '.join(str(e).split())
  return msg or type(e).__name__


def _err(msg):
  print(f'{PROG}: error: {msg}', file=sys.stderr, flush=True)


def _info(msg):
  print(msg, file=sys.stderr, flush=True)


def _json_number(v):
  v = float(v)
  return v if math.isfinite(v) else None


def _load_npy(path, flag):
  if not os.path.isfile(path):
    raise UsageError(f'--{flag} {path}: no such file')
  try:
    with open(path, 'rb') as fh:
      magic = fh.read(len(np.lib.format.MAGIC_PREFIX))
  except OSError as e:
    raise UsageError(f'--{flag} {path}: cannot read ({_one_line(e)})') from None
  if magic != np.lib.format.MAGIC_PREFIX:
    raise UsageError(f'--{flag} {path}: not a readable .npy array (no NumPy header; save it '
                     'with numpy.save)')
  try:
    return np.load(path, allow_pickle=False)
  except ValueError as e:
    if 'pickle' in str(e):  # an object array: never unpickled
      raise UsageError(f'--{flag} {path}: not a readable .npy array (it holds Python objects, '
                       'not numbers)') from None
    raise UsageError(f'--{flag} {path}: not a readable .npy array ({_one_line(e)})') from None
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
    raise UsageError(f'--kernel {path}: cannot read image ({_one_line(e)})') from None
  if k.ndim == 3:
    if np.ptp(k, axis=-1).max() > 0:
      raise UsageError(f'--kernel {path}: a colour image, not a blur kernel (expected grayscale)')
    k = k[..., 0]
  if k.sum() <= 0:
    raise UsageError(f'--kernel {path}: all black, not a blur kernel')
  return k / k.sum()


def load_mask(path, size=None):
  """--mask: (H, W) float32 in {0, 1} (1 = kept) from a PNG/image (nonzero) or a .npy.

  `size` (H, W), when given, is checked (else by `make_operator`, image by image)."""
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
  if size is not None:
    _check_mask_size(path, m, size)
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
  elif f.deg == 'blur2d' and f.kernel:
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
    raise UsageError(f'{what} for {h}x{w} images: {_one_line(e)}') from None


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
    raise UsageError(f'--class_labels {path}: cannot read ({_one_line(e)})') from None
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
  if f.output and os.path.exists(f.output):
    if not os.path.isdir(f.output):
      raise UsageError(f'--output {f.output} exists and is not a folder')
    if not f.overwrite:
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

  # Operator (at the network's size; by tiles, one per image size, see `_tile_groups`).
  size = r.config.image_size
  r.x_shape = (size, size, r.config.in_channels)
  r.side = load_side_files(f)
  r.apply_h = f.measurement and f.deg.startswith('inp')
  r.tiled = f.resize == 'tile'
  r.kernel = None
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
      raise UsageError(f'{what} for {size}x{size} images: {_one_line(e)}') from None
  else:
    r.op = make_operator(f, r.side, r.x_shape)

  # What one input file must look like.
  r.in_shape = r.x_shape if (not f.measurement or r.apply_h) else tuple(r.op.y_shape)
  if getattr(r, 'padding', None) is not None:
    r.in_shape = r.x_shape  # The photo; _read_input pads it to op.y_shape.
  return r


def _circular(f, r, operators):
  """(kernel, operator) of blur2d / deblur_motion. In measurement mode the photo's borders are
  not circular: the operator is for the photo padded by `operators.border_padding` (sizes the
  network's down-sampling accepts), which `_read_input` fills by `reflect_extension`."""
  from ddrm_jax.operators import registry  # pylint: disable=g-import-not-at-top
  r.true_kernel = None
  if f.deg == 'blind_blur':
    from ddrm_jax import blind  # pylint: disable=g-import-not-at-top
    size = f.kernel_size if f.kernel_size is not None else registry.motion_kernel_size(r.x_shape)
    try:
      r.kernel_size = blind.check_kernel_size(size, r.x_shape)
    except ValueError as e:
      raise UsageError(f'--kernel_size: {_one_line(e)}') from None
    if f.measurement:  # Unknown: the initial guess only fills the padded borders.
      kernel = blind.gaussian_kernel(r.kernel_size)
    else:
      kernel = (load_kernel2d(f.kernel) if f.kernel else
                operators.motion_kernel(registry.MOTION_SEED, r.kernel_size))
      r.true_kernel = np.asarray(kernel, np.float64)
  elif f.deg == 'blur2d':
    kernel = (load_kernel2d(f.kernel) if f.kernel else
              operators.motion_kernel(registry.MOTION_SEED, registry.BLUR2D_DEFAULT_SIZE))
  else:
    kernel = operators.motion_kernel(registry.MOTION_SEED,
                                     registry.motion_kernel_size(r.x_shape))
  op = operators.circular_blur(kernel, r.x_shape)  # Checks the kernel.
  r.padding = None
  if f.measurement:
    h, w, c = r.x_shape
    mult = getattr(r.config, 'ch_mult', None) or getattr(r.config, 'channel_mult', None) or (1,)
    r.padding = operators.border_padding(h, w, np.shape(kernel), 2**(len(mult) - 1))
    (top, bottom), (left, right) = r.padding
    op = operators.circular_blur(kernel, (h + top + bottom, w + left + right, c))
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
  `report(path, message)`.
  """
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  by_size = {}
  for i, path in enumerate(r.files):
    try:
      h, w = io.read_image(path).shape[:2]
    except ValueError as e:
      report(path, _one_line(e))
      continue
    x_shape = (h * r.scale[0], w * r.scale[1], r.x_shape[2])
    if min(x_shape[:2]) < r.tile:
      implied = '' if r.scale == (1, 1) else f' (restored {x_shape[0]}x{x_shape[1]})'
      report(path, f'{path}: size {h}x{w}{implied} is smaller than the network\'s {r.tile}x'
             f'{r.tile} tiles (use --resize=resize or --resize=center_crop)')
      continue
    by_size.setdefault(x_shape, []).append(i)
  groups = []
  for x_shape, members in by_size.items():
    try:
      groups.append((x_shape, make_operator(f, r.side, x_shape), members))
    except UsageError as e:
      for i in members:
        report(r.files[i], f'{r.files[i]}: {_one_line(e)}')
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
    grad = restore.classifier_guidance(lambda x_t, t_: cls_fn(cls_params, x_t, t_), labels[0],
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
  if getattr(r, 'padding', None) is not None:  # A real blurred photo: extend its borders.
    import jax  # pylint: disable=g-import-not-at-top
    from ddrm_jax import operators  # pylint: disable=g-import-not-at-top
    if not hasattr(r, 'extend'):
      r.extend = jax.jit(lambda y: operators.reflect_extension(y, r.kernel, r.padding))
    x = np.asarray(r.extend(x))
  return x


def _estimate_sigma_y(r, f):
  """--sigma_y auto: metrics.noise_sigma of every readable photo ([0, 1] units); the median."""
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  from ddrm_jax import metrics  # pylint: disable=g-import-not-at-top
  padding, r.padding = getattr(r, 'padding', None), None  # Estimate on the photo itself.
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
    with open(os.path.join(path, 'run.json')) as fh:
      info = json.load(fh)
  except (OSError, UnicodeDecodeError, ValueError):
    return False
  return isinstance(info, dict) and (info.get('program') == PROG or {'flags', 'ckpt'} <= set(info))


def clear_earlier_run(path):
  """Deletes what an earlier run wrote into `path` (its PNGs under the output folders, the grid,
  metrics.json, run.json and unfinished temporary files); any other file is left alone."""
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  for name in OUTPUT_FILES:
    if os.path.isfile(os.path.join(path, name)):
      os.remove(os.path.join(path, name))
  for sub in OUTPUT_DIRS:
    top = os.path.join(path, sub)
    for d, _, files in os.walk(top, topdown=False):
      for name in files:
        if name.lower().endswith(('.png', '.npy')) or io.TMP_MARK in name:
          os.remove(os.path.join(d, name))
      if not os.listdir(d):
        os.rmdir(d)
  for name in os.listdir(path):  # unfinished grid / metrics / run info
    if io.TMP_MARK in name and os.path.isfile(os.path.join(path, name)):
      os.remove(os.path.join(path, name))


def prepare_output(f):
  """The output folder, made (and checked writable) before any model is loaded.

  A new numbered folder under RUNS_DIR by default. An existing --output needs --overwrite and must
  be empty or hold an earlier ddrm-restore run, whose outputs are then deleted (other files stay);
  any other folder is refused. Returns (path, whether this run created it).
  """
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  where = f'--output {f.output}' if f.output else f'{RUNS_DIR}/'
  try:
    if not f.output:
      path, created = new_run_dir(RUNS_DIR, f.deg), True
    elif os.path.isdir(f.output):
      path, created = f.output, False
      if os.listdir(path):
        if not _earlier_run(path):
          raise UsageError(f'--output {path} holds files but no earlier {PROG} run (run.json); '
                           'not writing into it (choose a new or empty folder)')
        clear_earlier_run(path)
    else:
      path, created = f.output, True
      os.makedirs(path)
    probe = os.path.join(path, 'run.json')
    io.atomic_write(probe, lambda fh: fh.write(json.dumps({'program': PROG,
                                                           'status': 'running'})), binary=False)
  except OSError as e:
    raise UsageError(f'{where}: cannot write there ({_one_line(e)})') from None
  return path, created


def _output_paths(stem, f, is_paper):
  """{kind: path relative to the output folder} of one image's files."""
  p = lambda sub, name: f'{sub}/{name}.png'
  out = {'restored': p('restored', stem), 'degraded': p('degraded', stem)}
  if is_paper:
    out['original'] = p('original', stem)
    out['baseline'] = p('baseline', stem)
  if f.num_samples > 1:
    out['std'] = p('std', stem)
    out['samples'] = [p('samples', f'{stem}_{k}') for k in range(f.num_samples)]
  if f.deg == 'blind_blur':
    out['kernel'] = f'kernels/{stem}.npy'
    out['kernel_png'] = p('kernels', stem)
  return out


def _write_outputs(out_dir, paths, res, j):
  """Writes the images of batch row j to `paths` (`_output_paths`), each atomically."""
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
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
    view = np.kron(view, np.ones((scale, scale), np.float32))
    io.write_image(full(paths['kernel_png']), view[..., None] * 2.0 - 1.0)


def _finish(out_dir, f, r, state, interrupted):
  """Writes the grid, metrics.json and run.json of the images done so far (atomically)."""
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  summary = None
  position = {path: k for k, path in enumerate(r.files)}  # By size (tiles): back to input order.
  state.records.sort(key=lambda rec: position[rec['file']])
  state.written.sort(key=lambda rec: position[rec['file']])
  state.failures.sort(key=position.get)
  if state.grid_rows:
    io.write_image(os.path.join(out_dir, 'grid.png'),
                   io.make_grid(state.grid_rows, min_cell=GRID_MIN_CELL))
  if state.records:
    fields = [k for k in state.records[0] if k not in ('file', 'name', 'outputs')]
    mean = {}
    for k in fields:
      vals = [rec[k] for rec in state.records if rec[k] is not None]
      mean[k] = _json_number(np.mean(vals)) if vals else None
    text = json.dumps({'mean': mean, 'images': state.records}, indent=1)
    io.atomic_write(os.path.join(out_dir, 'metrics.json'), lambda fh: fh.write(text),
                    binary=False)
    summary = mean
  _write_run_info(out_dir, f, r, state, interrupted)
  return summary


def _write_run_info(out_dir, f, r, state, interrupted):
  import jax  # pylint: disable=g-import-not-at-top
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  info = {
      'program': PROG,
      'status': 'interrupted' if interrupted else 'complete',
      'flags': {k: f[k].value for k in sorted(f) if k != 'traceback'},
      'sigma_y': getattr(r, 'sigma_y', f.sigma_y),
      'sigma_y_estimate': getattr(r, 'sigma_y_auto', None),
      'border_padding': getattr(r, 'padding', None),
      'num_samples': f.num_samples,
      'ckpt': os.path.abspath(r.ckpt),
      'image_shape': list(r.x_shape),
      'images_restored': state.done,
      'images': state.written,
      'failed': state.failures,
      'compile_seconds': state.compile_s,
      'total_seconds': time.time() - state.t_start,
      'device': str(jax.devices()[0].device_kind),
      'jax': jax.__version__,
      'python': platform.python_version(),
  }
  if state.tiles is not None:  # --resize=tile: each restored image's size and number of tiles.
    info['tiling'] = {'tile': r.tile, 'overlap': r.overlap, 'tiles_per_call': r.tiles_per_call,
                      'images': state.tiles}
  text = json.dumps(info, indent=1, default=str)
  io.atomic_write(os.path.join(out_dir, 'run.json'), lambda fh: fh.write(text), binary=False)


def _is_out_of_memory(e):
  text = f'{type(e).__name__} {e}'
  return isinstance(e, MemoryError) or 'RESOURCE_EXHAUSTED' in text or (
      'out of memory' in text.lower())


class _State:
  """What a run has done so far (written on completion and on interruption alike)."""

  def __init__(self):
    self.failures, self.records, self.grid_rows, self.written = [], [], [], []
    self.done, self.compile_s, self.t_start = 0, None, time.time()
    self.tiles = None  # --resize=tile: {file: {'shape', 'tiles'}}.


def _restore_all(f, r, out_dir, state):
  """Restores every input batch by batch, writing each image's files as it is done."""
  import jax  # pylint: disable=g-import-not-at-top
  from ddrm_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  from ddrm_jax import restore  # pylint: disable=g-import-not-at-top
  from ddrm_jax import tiling  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  try:
    net_fn, params, _ = checkpoints.load_model(r.ckpt)
    cls_fn, cls_params = None, None
    if r.classifier_config is not None:
      cls_fn, cls_params, _ = checkpoints.load_model(f.classifier_ckpt)
  except ValueError as e:
    raise UsageError(_one_line(e)) from None
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
  try:
    settings = restore.Settings(
        deg=f.deg, steps=f.steps, eta=f.eta, eta_b=f.eta_b, sigma_y=2.0 * sigma_y,
        num_samples=f.num_samples, classifier_scale=f.classifier_scale,
        measurement=f.measurement, apply_h=r.apply_h,
        blind_kernel_size=getattr(r, 'kernel_size', 0) if f.deg == 'blind_blur' else 0)
  except ValueError as e:
    raise UsageError(_one_line(e)) from None
  is_paper = not f.measurement
  n = len(r.files)
  stems = io.unique_stems(r.files)
  if r.tiled:  # One compilation per image size; eps blended from tiles of the network's size.
    step = restore.make_restore_step(_tiled_net_fn(net_fn, cls_fn, r, f), settings,
                                     class_conditional=True)
    net_params, cls_params = (params, cls_params), None
    state.tiles = {}

    def report(path, msg):
      state.failures.append(path)
      _err(msg)

    groups = _tile_groups(f, r, report)
  else:
    step = restore.make_restore_step(net_fn, settings, class_conditional=r.class_conditional,
                                     classifier_net_fn=cls_fn)
    net_params, groups = params, [(r.x_shape, r.op, list(range(n)))]
  bar = tqdm(total=n, initial=len(state.failures), unit='img', desc=PROG, disable=None,
             file=sys.stderr)
  compiled_by_shape = {}

  def fail(i, message):
    state.failures.append(r.files[i])
    bar.clear()
    _err(message)

  def out_of_memory(x_shape, batch):
    return UsageError(
        f'out of memory restoring {"x".join(map(str, x_shape))} images with {f.num_samples} '
        f'samples each, {batch} at a time: lower --num_samples (now {f.num_samples}) or '
        f'--batch_size (now {f.batch_size})' + (' or --tiles_per_call' if r.tiled else ''))

  batches = [(x_shape, op, members[lo:lo + batch])
             for x_shape, op, members in groups for batch in [min(f.batch_size, len(members))]
             for lo in range(0, len(members), batch)]
  try:
    for x_shape, op, idx in batches:
      arrays, ok = [], []
      for i in idx:
        try:
          arrays.append(_read_input(r.files[i], r, f, x_shape))
          ok.append(i)
        except ValueError as e:  # io.ImageError and size mismatches: report, go on.
          fail(i, _one_line(e))
          bar.update(1)
      if not ok:
        continue
      # Every image runs alone through one compiled program (its --num_samples chains are the
      # network batch), so its files are the same bits whatever --batch_size; the images of a
      # group are dispatched together and fetched together.
      try:
        outs = []
        for j, i in enumerate(ok):
          labels = None if r.labels is None else np.asarray([r.labels[i]], np.int32)
          args = (net_params, cls_params, op, arrays[j][None].astype(np.float32),
                  restore.image_keys(f.seed, [i]), labels)
          if x_shape not in compiled_by_shape:
            t0 = time.time()
            compiled_by_shape[x_shape] = step.lower(*args).compile()
            seconds = time.time() - t0
            state.compile_s = (state.compile_s or 0.0) + seconds
            bar.clear()
            by_tiles = ''
            if r.tiled:
              k = tiling.num_tiles(x_shape[:2], r.tile, r.overlap)
              by_tiles = f' by {k} tile{"s" if k > 1 else ""} of {r.tile}x{r.tile}'
            _info(f'{PROG}: compiled the restore step in {seconds:.1f} s (1 image x '
                  f'{f.num_samples} samples per network batch, '
                  f'{"x".join(map(str, x_shape))} images{by_tiles}, {f.steps} steps)')
          outs.append(compiled_by_shape[x_shape](*args))
        outs = jax.device_get(outs)
      except Exception as e:  # pylint: disable=broad-except
        if _is_out_of_memory(e):
          raise out_of_memory(x_shape, len(ok)) from None
        raise
      res = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
      inputs = np.stack(arrays).astype(np.float32)
      if getattr(r, 'padding', None) is not None:  # Back to the photo's own size.
        from ddrm_jax import operators  # pylint: disable=g-import-not-at-top
        for name in ('y', 'degraded', 'samples', 'restored', 'std'):
          res[name] = operators.crop_padding(res[name], r.padding)
      if is_paper:
        res['original'] = inputs
      for j, i in enumerate(ok):
        if not all(np.isfinite(res[k][j]).all() for k in ('samples', 'restored')):
          fail(i, f'{r.files[i]}: the restoration has non-finite values (NaN or inf); nothing '
               'written for it (check the checkpoint and --sigma_y)')
          continue
        paths = _output_paths(stems[i], f, is_paper)
        _write_outputs(out_dir, paths, res, j)
        state.done += 1
        state.written.append({'file': r.files[i], 'name': stems[i], 'outputs': paths})
        if r.tiled:
          state.tiles[r.files[i]] = {'shape': list(x_shape),
                                     'tiles': tiling.num_tiles(x_shape[:2], r.tile, r.overlap)}
        if len(state.grid_rows) < GRID_ROWS and res['restored'][j].shape == (
            state.grid_rows[0][-1].shape if state.grid_rows
            else res['restored'][j].shape):  # One size (--resize=tile: the first).
          state.grid_rows.append(([res['original'][j]] if is_paper else []) +
                                 [res['degraded'][j], res['restored'][j]])
        if is_paper:
          rec = {'file': r.files[i], 'name': stems[i], 'outputs': paths}
          keys_out = ['psnr', 'ssim', 'baseline_psnr', 'baseline_ssim']
          if f.num_samples > 1:
            keys_out += ['sample_psnr', 'sample_ssim']
          rec.update({k: _json_number(res[k][j]) for k in keys_out})
          if f.deg == 'blind_blur':
            from ddrm_jax import blind  # pylint: disable=g-import-not-at-top
            rec['kernel_ncc'] = _json_number(blind.kernel_ncc(res['kernel'][j], r.true_kernel))
          state.records.append(rec)
      bar.update(len(ok))
  finally:
    bar.close()


def run_restore(f):
  """The command on parsed flags `f`; returns the exit status."""
  _validate(f)
  r = _resolve(f)
  out_dir, created = prepare_output(f)  # before the model loads: an unwritable place fails now
  state = _State()
  interrupted = None
  try:
    _restore_all(f, r, out_dir, state)
  except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: keep what is done.
    interrupted = e
  except BaseException:
    if state.done:
      _finish(out_dir, f, r, state, interrupted=True)
    elif created:
      shutil.rmtree(out_dir, ignore_errors=True)
    raise
  n = len(r.files)
  if not state.done:  # Nothing restored (failures were reported above): no folder of nothing.
    if created:
      shutil.rmtree(out_dir, ignore_errors=True)
    else:
      _finish(out_dir, f, r, state, interrupted=interrupted is not None)
    if interrupted is not None:
      raise interrupted
    if n > 1:
      _err(f'none of the {n} inputs could be restored')
    return 1
  summary = _finish(out_dir, f, r, state, interrupted=interrupted is not None)
  run_s = time.time() - state.t_start
  if interrupted is not None:
    _err(f'interrupted: {state.done} of {n} images restored; their files, metrics.json and '
         f'run.json are in {out_dir}')
    return 143 if isinstance(interrupted, Interrupted) else 130
  what = (f'the posterior mean of {f.num_samples} samples each, with their std'
          if f.num_samples > 1 else 'one posterior sample each')
  model = 'the bundled prior' if not f.ckpt else r.ckpt
  print(f'{PROG}: restored {state.done} of {n} images with {model}: {f.deg}, sigma_y '
        f'{getattr(r, "sigma_y", f.sigma_y):g}, {f.steps} steps, {what} ({run_s:.1f} s) -> {out_dir}')
  if summary is not None:
    fmt = lambda v, d: '-' if v is None else f'{v:.{d}f}'
    label = 'posterior mean' if f.num_samples > 1 else 'DDRM'
    print(f'  {label}: PSNR {fmt(summary["psnr"], 2)} dB  SSIM {fmt(summary["ssim"], 4)}   |   '
          f'{_baseline_name(f.deg)}: PSNR {fmt(summary["baseline_psnr"], 2)} dB  SSIM '
          f'{fmt(summary["baseline_ssim"], 4)}')
    if f.num_samples > 1:
      print(f'  single samples: PSNR {fmt(summary["sample_psnr"], 2)} dB  SSIM '
            f'{fmt(summary["sample_ssim"], 4)} (sharper, farther from the original)')
  if state.failures:
    _err(f'{len(state.failures)} of {n} inputs failed (see above); the others are in {out_dir}')
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
    _err(_one_line(e))
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
    _err(_one_line(e))
    return 1
  except KeyboardInterrupt as e:  # before any image was done
    _err('interrupted')
    return 143 if isinstance(e, Interrupted) else 130
  except Exception as e:  # pylint: disable=broad-except
    if fv.traceback:
      traceback.print_exc()
    _err(f'unexpected {type(e).__name__}: {_one_line(e)} (rerun with --traceback for details)')
    return 1
  finally:
    if handler is not None:
      signal.signal(signal.SIGTERM, handler)


def run():
  """Console entry point `ddrm-restore`."""
  sys.exit(main(sys.argv))


if __name__ == '__main__':
  run()
