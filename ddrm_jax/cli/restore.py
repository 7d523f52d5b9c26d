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
  i('batch_size', 4, 'Images per network batch (each with --num_samples chains).', flag_values=fv)
  i('num_samples', 1, 'Posterior samples per image; > 1 also writes their mean and std.',
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


def _check_mask_size(path, m, size):
  if tuple(m.shape) != tuple(size):
    raise UsageError(f'--mask {path}: is {m.shape[0]}x{m.shape[1]}, the images are '
                     f'{size[0]}x{size[1]}')


def load_side_files(f):
  """The arrays of --kernel, --mask and --perm that --deg uses (read once per run)."""
  side = {}
  if f.deg == 'blur':
    side['kernel'] = load_kernel(f.kernel)
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
    what = {'blur': f'--kernel {f.kernel}', 'inp': f'--mask {f.mask}',
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
  if r.tiled:
    _resolve_tiles(f, r)
    return r
  r.op = make_operator(f, r.side, r.x_shape)

  # What one input file must look like.
  r.in_shape = r.x_shape if (not f.measurement or r.apply_h) else tuple(r.op.y_shape)
  return r


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
    if x.shape[:2] != (x_shape[0] // r.scale[0], x_shape[1] // r.scale[1]):
      raise io.ImageError(f'{path}: changed size during the run')
    return x
  h, w, c = r.in_shape
  x = io.to_channels(io.read_image(path), c)
  return io.fit(x, (h, w), f.resize, name=path)


def _write_outputs(out_dir, stem, res, j, f, is_paper):
  """Writes the images of batch row j."""
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  p = lambda sub, name: os.path.join(out_dir, sub, name + '.png')
  io.write_image(p('restored', stem), res['restored'][j])
  io.write_image(p('degraded', stem), res['degraded'][j])
  if is_paper:
    io.write_image(p('original', stem), res['original'][j])
    io.write_image(p('baseline', stem), res['baseline'][j])
  if f.num_samples > 1:
    for k in range(f.num_samples):
      io.write_image(p('samples', f'{stem}_{k}'), res['samples'][j, k])
    # std in [0, 1] image units = std_model / 2; write_image maps [-1, 1] -> [0, 1].
    io.write_image(p('std', stem), res['std'][j] - 1.0)


def run_restore(f):
  """The command on parsed flags `f`; returns the exit status."""
  _validate(f)
  r = _resolve(f)

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
  try:
    settings = restore.Settings(
        deg=f.deg, steps=f.steps, eta=f.eta, eta_b=f.eta_b, sigma_y=2.0 * f.sigma_y,
        num_samples=f.num_samples, classifier_scale=f.classifier_scale,
        measurement=f.measurement, apply_h=r.apply_h)
  except ValueError as e:
    raise UsageError(_one_line(e)) from None
  is_paper = not f.measurement
  n = len(r.files)
  stems = io.unique_stems(r.files)
  out_dir = None
  failures, records, grid_rows = [], [], []
  compile_s, t_start = None, time.time()
  if r.tiled:  # One compilation per image size; eps blended from tiles of the network's size.
    step = restore.make_restore_step(_tiled_net_fn(net_fn, cls_fn, r, f), settings,
                                     class_conditional=True)
    net_params, cls_params = (params, cls_params), None

    def report(path, msg):
      failures.append(path)
      _err(msg)

    groups = _tile_groups(f, r, report)
    tiles = {}
  else:
    step = restore.make_restore_step(net_fn, settings, class_conditional=r.class_conditional,
                                     classifier_net_fn=cls_fn)
    net_params, groups, tiles = params, [(r.x_shape, r.op, list(range(n)))], None
  bar = tqdm(total=n, initial=len(failures), unit='img', desc=PROG, disable=None,
             file=sys.stderr)
  batches = [(x_shape, op, members[lo:lo + batch], batch)
             for x_shape, op, members in groups for batch in [min(f.batch_size, len(members))]
             for lo in range(0, len(members), batch)]
  compiled_by_shape = {}
  for x_shape, op, idx, batch in batches:
    arrays, ok = [], []
    for i in idx:
      try:
        arrays.append(_read_input(r.files[i], r, f, x_shape))
        ok.append(i)
      except ValueError as e:  # io.ImageError and size mismatches: report, go on.
        failures.append(r.files[i])
        bar.clear()
        _err(_one_line(e))
        bar.update(1)
    if not ok:
      continue
    pad = batch - len(ok)  # Pad to one static batch shape (one compilation).
    inputs = np.stack(arrays + [arrays[-1]] * pad).astype(np.float32)
    rows = ok + [ok[-1]] * pad
    keys = restore.image_keys(f.seed, rows)
    labels = None if r.labels is None else np.asarray([r.labels[i] for i in rows], np.int32)
    args = (net_params, cls_params, op, inputs, keys, labels)
    if x_shape not in compiled_by_shape:
      t0 = time.time()
      compiled_by_shape[x_shape] = step.lower(*args).compile()
      seconds = time.time() - t0
      compile_s = (compile_s or 0.0) + seconds
      bar.clear()
      by_tiles = ''
      if r.tiled:
        k = tiling.num_tiles(x_shape[:2], r.tile, r.overlap)
        by_tiles = f' by {k} tile{"s" if k > 1 else ""} of {r.tile}x{r.tile}'
      _info(f'{PROG}: compiled the restore step in {seconds:.1f} s (batch {batch} x '
            f'{f.num_samples} samples, {"x".join(map(str, x_shape))} images{by_tiles}, '
            f'{f.steps} steps)')
    res = jax.device_get(compiled_by_shape[x_shape](*args))
    if is_paper:
      res['original'] = inputs
    if out_dir is None:
      out_dir = f.output or new_run_dir(RUNS_DIR, f.deg)
      os.makedirs(out_dir, exist_ok=True)
    for j, i in enumerate(ok):
      _write_outputs(out_dir, stems[i], res, j, f, is_paper)
      if tiles is not None:
        tiles[r.files[i]] = {'shape': list(x_shape),
                             'tiles': tiling.num_tiles(x_shape[:2], r.tile, r.overlap)}
      if len(grid_rows) < GRID_ROWS and res['restored'][j].shape == (
          grid_rows[0][-1].shape if grid_rows else res['restored'][j].shape):  # One size.
        grid_rows.append(([res['original'][j]] if is_paper else []) +
                         [res['degraded'][j], res['restored'][j]])
      if is_paper:
        rec = {'file': r.files[i]}
        keys_out = ['psnr', 'ssim', 'baseline_psnr', 'baseline_ssim']
        if f.num_samples > 1:
          keys_out += ['sample_psnr', 'sample_ssim']
        rec.update({k: _json_number(res[k][j]) for k in keys_out})
        records.append(rec)
    bar.update(len(ok))
  bar.close()
  run_s = time.time() - t_start

  position = {path: k for k, path in enumerate(r.files)}  # By size (tiles): back to input order.
  records.sort(key=lambda rec: position[rec['file']])
  failures.sort(key=position.get)
  if out_dir is None:  # Nothing restored: the failures were reported above.
    if n > 1:
      _err(f'none of the {n} inputs could be restored')
    return 1
  io.write_image(os.path.join(out_dir, 'grid.png'), io.make_grid(grid_rows))
  summary = None
  if is_paper:
    fields = [k for k in records[0] if k != 'file']
    mean = {}
    for k in fields:
      vals = [rec[k] for rec in records if rec[k] is not None]
      mean[k] = _json_number(np.mean(vals)) if vals else None
    with open(os.path.join(out_dir, 'metrics.json'), 'w') as fh:
      json.dump({'mean': mean, 'images': records}, fh, indent=1)
    summary = mean
  _write_run_info(out_dir, f, r, compile_s, run_s, len(records) if is_paper else n - len(
      failures), failures, tiles)
  done = n - len(failures)
  print(f'{PROG}: restored {done} of {n} images ({f.deg}, sigma_y {f.sigma_y:g}, {f.steps} '
        f'steps, {f.num_samples} sample{"s" if f.num_samples > 1 else ""} each) in {run_s:.1f} s '
        f'-> {out_dir}')
  if summary is not None:
    fmt = lambda v, d: '-' if v is None else f'{v:.{d}f}'
    print(f'  PSNR {fmt(summary["psnr"], 2)} dB  SSIM {fmt(summary["ssim"], 4)}   |   baseline '
          f'PSNR {fmt(summary["baseline_psnr"], 2)} dB  SSIM {fmt(summary["baseline_ssim"], 4)}')
    if f.num_samples > 1:
      print(f'  (posterior mean of {f.num_samples}; single samples: PSNR '
            f'{fmt(summary["sample_psnr"], 2)} dB  SSIM {fmt(summary["sample_ssim"], 4)})')
  if failures:
    _err(f'{len(failures)} of {n} inputs failed (see above); the others are in {out_dir}')
    return 1
  return 0


def _write_run_info(out_dir, f, r, compile_s, run_s, done, failures, tiles=None):
  import jax  # pylint: disable=g-import-not-at-top
  info = {
      'flags': {k: f[k].value for k in sorted(f) if k != 'traceback'},
      'ckpt': os.path.abspath(r.ckpt),
      'image_shape': list(r.x_shape),
      'images_restored': done,
      'failed': failures,
      'compile_seconds': compile_s,
      'total_seconds': run_s,
      'device': str(jax.devices()[0].device_kind),
      'jax': jax.__version__,
      'python': platform.python_version(),
  }
  if tiles is not None:  # --resize=tile: each restored image's size and number of tiles.
    info['tiling'] = {'tile': r.tile, 'overlap': r.overlap, 'tiles_per_call': r.tiles_per_call,
                      'images': tiles}
  with open(os.path.join(out_dir, 'run.json'), 'w') as fh:
    json.dump(info, fh, indent=1, default=str)


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
