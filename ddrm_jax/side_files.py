"""A run's side files: blur kernels, inpainting masks, compressed-sensing permutations and class
labels, read with a one-line error for every way a file can be wrong (`errors.SettingError`,
naming the setting that names the file).

.npy files are read without pickles (`allow_pickle=False`); images with Pillow.
"""

import csv
import os

import numpy as np

from ddrm_jax.errors import SettingError
from ddrm_jax.errors import one_line


def _load_npy(path, setting):
  if not os.path.isfile(path):
    raise SettingError(f'§{setting} {path}: no such file')
  try:
    with open(path, 'rb') as fh:
      magic = fh.read(len(np.lib.format.MAGIC_PREFIX))
  except OSError as e:
    raise SettingError(f'§{setting} {path}: cannot read ({one_line(e)})') from None
  if magic != np.lib.format.MAGIC_PREFIX:
    raise SettingError(f'§{setting} {path}: not a readable .npy array (no NumPy header; save it '
                     'with numpy.save)')
  try:
    return np.load(path, allow_pickle=False)
  except ValueError as e:
    if 'pickle' in str(e):  # an object array: never unpickled
      raise SettingError(f'§{setting} {path}: not a readable .npy array (it holds Python objects, '
                       'not numbers)') from None
    raise SettingError(f'§{setting} {path}: not a readable .npy array ({one_line(e)})') from None
  except Exception as e:  # numpy raises OSError, EOFError...: a truncated or corrupt file
    raise SettingError(f'§{setting} {path}: not a readable .npy array (corrupt or truncated: '
                     f'{type(e).__name__})') from None


def load_kernel(path):
  """kernel (blur): (vertical, horizontal) float64 taps from a 1-D or (2, L) .npy array."""
  k = _load_npy(path, 'kernel')
  if not np.issubdtype(k.dtype, np.number) or np.iscomplexobj(k):
    raise SettingError(f'§kernel {path}: expected real numbers, got dtype {k.dtype}')
  k = k.astype(np.float64)
  if k.ndim == 1 and k.size >= 1:
    kv = kh = k
  elif k.ndim == 2 and k.shape[0] == 2 and k.shape[1] >= 1:
    kv, kh = k[0], k[1]
  else:
    raise SettingError(f'§kernel {path}: expected a 1-D kernel or shape (2, L), got {k.shape}')
  if not np.all(np.isfinite(k)):
    raise SettingError(f'§kernel {path}: has non-finite taps')
  if abs(kv.sum()) < 1e-8 or abs(kh.sum()) < 1e-8:
    raise SettingError(f'§kernel {path}: taps sum to 0 (a blur kernel sums to 1)')
  return kv, kh


def load_kernel2d(path):
  """kernel for blur2d: a .npy (kh, kw) or (kh, kw, C) as given, or an image file (a grayscale
  PNG, as blind-deblurring data sets ship kernels) normalised to sum 1."""
  if path.lower().endswith('.npy'):
    k = _load_npy(path, 'kernel')
    if not np.issubdtype(k.dtype, np.number) or np.iscomplexobj(k):
      raise SettingError(f'§kernel {path}: expected real numbers, got dtype {k.dtype}')
    return k.astype(np.float64)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise SettingError(f'§kernel {path}: no such file')
  try:
    with Image.open(path) as im:
      k = np.asarray(im.convert('RGB') if im.mode not in ('L', 'I', 'I;16', 'F') else im,
                     np.float64)
  except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError...
    raise SettingError(f'§kernel {path}: cannot read image ({one_line(e)})') from None
  if k.ndim == 3:
    if np.ptp(k, axis=-1).max() > 0:
      raise SettingError(f'§kernel {path}: a colour image, not a blur kernel (expected grayscale)')
    k = k[..., 0]
  if k.sum() <= 0:
    raise SettingError(f'§kernel {path}: all black, not a blur kernel')
  return k / k.sum()


def load_mask(path):
  """mask: (H, W) float32 in {0, 1} (1 = kept) from a PNG/image (nonzero) or a .npy; its size
  is checked by `make_operator`, image by image."""
  if path.lower().endswith('.npy'):
    m = _load_npy(path, 'mask')
    if m.ndim == 3 and m.shape[-1] == 1:
      m = m[..., 0]
    if not (np.issubdtype(m.dtype, np.number) or m.dtype == bool) or m.ndim != 2:
      raise SettingError(f'§mask {path}: expected a numeric (H, W) array, got {m.dtype} {m.shape}')
  else:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    if not os.path.isfile(path):
      raise SettingError(f'§mask {path}: no such file')
    try:
      with Image.open(path) as im:
        m = np.asarray(im.convert('L'))
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError...
      raise SettingError(f'§mask {path}: cannot read image ({one_line(e)})') from None
  m = (m != 0).astype(np.float32)
  if not m.any():
    raise SettingError(f'§mask {path}: keeps no pixel (nonzero = kept)')
  return m


def _label_names(f):
  """The names by which a class_labels row may name input file `f`."""
  return (f, os.path.basename(f), os.path.splitext(os.path.basename(f))[0])


def _names_an_input(name, files):
  return any(name in _label_names(f) for f in files)


def load_perm(path):
  """perm: an integer .npy permutation for cs2/cs4 (checked by the operator)."""
  perm = _load_npy(path, 'perm')
  if not np.issubdtype(perm.dtype, np.integer):
    raise SettingError(f'§perm {path}: expected integers, got dtype {perm.dtype}')
  return perm


def load_class_labels(path, files):
  """class_labels: a CSV (file name, label) -> int label per input file (matched by name)."""
  if not os.path.isfile(path):
    raise SettingError(f'§class_labels {path}: no such file')
  table = {}
  try:
    with open(path, newline='') as fh:
      for n, row in enumerate(csv.reader(fh)):
        if not row or not ''.join(row).strip():
          continue
        if len(row) != 2:
          raise SettingError(f'§class_labels {path}: line {n + 1}: expected "file,label"')
        name, label = row[0].strip(), row[1].strip()
        try:
          table[name] = int(label)
        except ValueError:
          if n == 0 and not _names_an_input(name, files):  # A header row, e.g. "file,label".
            continue
          raise SettingError(f'§class_labels {path}: line {n + 1}: label {label!r} of {name!r} '
                           'is not an int') from None
  except (OSError, UnicodeDecodeError) as e:
    raise SettingError(f'§class_labels {path}: cannot read ({one_line(e)})') from None
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
    raise SettingError(f'§class_labels {path}: no label for {", ".join(missing[:3])}{more}')
  return labels
