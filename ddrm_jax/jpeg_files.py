"""JPEG files <-> what the codec needs: a file's own quantization tables and chroma subsampling,
and writing a degraded image as a real .jpg (Pillow only, no jax, so reading stays cheap).

`read_jpeg_tables(path)` takes the tables from Pillow's `quantization` (natural order since
Pillow 8.3; older versions returned the file's zigzag order, which is undone here) and the
sampling factors from its layer info (`im.layer`: (id, h, v, table id) per component). The
frame type (baseline, progressive, arithmetic, lossless) is read from the file's own SOF marker,
which Pillow reports only for progressive files. Anything the codec cannot represent exactly is
refused with one ValueError naming the file and the reason.
"""

import dataclasses
import os

import numpy as np
from PIL import Image

from ddrm_jax import io as image_io

# Chroma subsampling name -> the luma component's (h, v) sampling factors; chroma is (1, 1).
SUBSAMPLINGS = {'4:4:4': (1, 1), '4:2:2': (2, 1), '4:2:0': (2, 2)}
_PILLOW_SUBSAMPLING = {'4:4:4': 0, '4:2:2': 1, '4:2:0': 2}

# ITU-T T.81 Figure A.6: zigzag position of each coefficient in natural (row-major) order.
ZIGZAG = np.array([
    0, 1, 5, 6, 14, 15, 27, 28,
    2, 4, 7, 13, 16, 26, 29, 42,
    3, 8, 12, 17, 25, 30, 41, 43,
    9, 11, 18, 24, 31, 40, 44, 53,
    10, 19, 23, 32, 39, 45, 52, 54,
    20, 22, 33, 38, 46, 51, 55, 60,
    21, 34, 37, 47, 50, 56, 59, 61,
    35, 36, 48, 49, 57, 58, 62, 63])

# SOF markers (T.81 Table B.1) -> why the codec cannot use the frame, or None (sequential DCT
# with Huffman coding: baseline C0 and extended C1).
_SOF_REFUSALS = {
    0xC0: None, 0xC1: None,
    0xC2: 'progressive JPEG', 0xC3: 'lossless JPEG',
    0xC5: 'hierarchical JPEG', 0xC6: 'hierarchical progressive JPEG',
    0xC7: 'hierarchical lossless JPEG',
    0xC9: 'arithmetic-coded JPEG', 0xCA: 'arithmetic-coded progressive JPEG',
    0xCB: 'arithmetic-coded lossless JPEG', 0xCD: 'arithmetic-coded hierarchical JPEG',
    0xCE: 'arithmetic-coded hierarchical progressive JPEG',
    0xCF: 'arithmetic-coded hierarchical lossless JPEG',
}


@dataclasses.dataclass(frozen=True)
class JPEGTables:
  """What a JPEG file tells the codec: `tables` (C, 8, 8) int quantization steps in natural
  order, one per component (Y, Cb, Cr, or Y alone for grayscale); `subsampling` ('4:4:4',
  '4:2:2', '4:2:0'); `image_shape` (H, W, C) as stored (before any EXIF rotation); the EXIF
  `orientation` (1 = none; the coefficients are on the stored grid, not the rotated one)."""
  tables: np.ndarray = dataclasses.field(compare=False)
  subsampling: str
  image_shape: tuple
  orientation: int = 1


def _refuse(path, reason):
  raise ValueError(f'{path}: {reason}')


def _frame_marker(path, data):
  """The file's SOF marker (0xC0..0xCF), walking the header segments up to the first SOS."""
  if data[:2] != b'\xff\xd8':
    _refuse(path, 'not a JPEG file (no SOI marker)')
  i = 2
  while i + 4 <= len(data):
    if data[i] != 0xFF:
      _refuse(path, f'corrupt JPEG header (no marker at byte {i})')
    marker = data[i + 1]
    if marker == 0xFF:  # Fill byte.
      i += 1
      continue
    if marker in (0x01,) or 0xD0 <= marker <= 0xD7:  # Standalone markers.
      i += 2
      continue
    if marker == 0xDA:  # SOS before any SOF.
      break
    if marker in _SOF_REFUSALS:
      return marker
    length = int.from_bytes(data[i + 2:i + 4], 'big')
    i += 2 + length
  _refuse(path, 'no frame header (SOF marker) before the image data')


def read_jpeg_tables(path):
  """The quantization tables, subsampling and stored shape of a JPEG file: `JPEGTables`.

  Refused (ValueError naming the file and the reason): files that are not JPEG (PNG, ...),
  progressive, arithmetic-coded, lossless or hierarchical frames, CMYK/YCCK, RGB-coded
  (Adobe transform 0 or components named R, G, B), other than 8-bit samples, sampling factors
  other than 4:4:4, 4:2:2 and 4:2:0, and files without quantization tables.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    _refuse(path, 'no such file')
  with open(path, 'rb') as fh:
    head = fh.read(1 << 20)  # The header segments precede the image data.
  try:
    im = Image.open(path)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    _refuse(path, f'cannot read it as an image ({type(e).__name__}: {e})')
  with im:
    if im.format not in ('JPEG', 'MPO'):
      _refuse(path, f'not a JPEG file (format {im.format}): quantization tables and chroma '
                    'subsampling exist only in JPEG files')
    marker = _frame_marker(path, head)
    if _SOF_REFUSALS[marker] is not None or im.info.get('progressive'):
      what = _SOF_REFUSALS[marker] or 'progressive JPEG'
      _refuse(path, f'{what} (SOF marker 0xFF{marker:02X}) is not supported; only sequential '
                    'Huffman-coded JPEG (baseline or extended)')
    if im.mode == 'CMYK' or im.layers == 4:
      _refuse(path, 'CMYK/YCCK JPEG is not supported (only YCbCr colour or grayscale)')
    if im.layers not in (1, 3):
      _refuse(path, f'{im.layers}-component JPEG is not supported')
    ids = tuple(layer[0] for layer in im.layer)
    if im.layers == 3 and (im.info.get('adobe_transform') == 0 or ids == (82, 71, 66)):
      _refuse(path, 'RGB-coded JPEG (no YCbCr transform) is not supported')
    qt = dict(getattr(im, 'quantization', None) or {})
    if not qt:
      _refuse(path, 'the file has no quantization tables')
    tables = []
    for comp in im.layer:
      if comp[3] not in qt:
        _refuse(path, f'component {comp[0]} uses quantization table {comp[3]}, which the file '
                      'does not define')
      tables.append(_natural_order(qt[comp[3]]))
    tables = np.stack(tables).reshape(-1, 8, 8)
    if np.any(tables < 1):
      _refuse(path, 'a quantization table has a zero entry')
    if im.layers == 1:
      subsampling = '4:4:4'
    else:
      factors = tuple((c[1], c[2]) for c in im.layer)
      names = {((h, v), (1, 1), (1, 1)): n for n, (h, v) in SUBSAMPLINGS.items()}
      if factors not in names:
        _refuse(path, f'sampling factors (h, v) {factors} are not supported (only 4:4:4, 4:2:2 '
                      'and 4:2:0 with chroma at 1x1)')
      subsampling = names[factors]
    orientation = int(im.getexif().get(0x0112, 1) or 1)
    shape = (im.size[1], im.size[0], im.layers)
  return JPEGTables(tables=tables.astype(np.int32), subsampling=subsampling,
                    image_shape=shape, orientation=orientation)


def _natural_order(table):
  """Pillow's `quantization` entry as a natural-order (64,) array (Pillow < 8.3: zigzag)."""
  table = np.asarray(list(table), np.int64)
  if table.shape != (64,):
    raise ValueError(f'a quantization table must have 64 entries, got {table.shape}')
  major, minor = (int(p) for p in Image.__version__.split('.')[:2])
  if (major, minor) < (8, 3):
    return table[ZIGZAG]  # File (zigzag) order -> natural order.
  return table


def read_jpeg_pixels(path):
  """The file decoded by Pillow (libjpeg) as float32 (H, W, C) in [-1, 1], on the stored grid
  (no EXIF rotation, unlike `io.read_image`), C = 3 for colour and 1 for grayscale."""
  read_jpeg_tables(path)  # The same refusals.
  with Image.open(path) as im:
    a = np.asarray(im.convert('L' if im.layers == 1 else 'RGB'), np.float32)
  a = a[..., None] if a.ndim == 2 else a
  return image_io.from_unit(a / 255.0)  # As io.read_image computes it.


def check_subsampling(subsampling):
  if subsampling not in SUBSAMPLINGS:
    raise ValueError(f'subsampling must be one of {sorted(SUBSAMPLINGS)}, got {subsampling!r}')
  return subsampling


def check_quality(quality):
  if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not (
      1 <= quality <= 100):
    raise ValueError(f'quality must be an int in [1, 100], got {quality!r}')
  return int(quality)


def write_jpeg(path, x, quality, subsampling='4:2:0'):
  """Writes (H, W, C) in [-1, 1] (C in {1, 3}) as a baseline JPEG with Pillow (libjpeg, the IJG
  tables scaled by `quality`, ISLOW DCT), atomically. The pixels are rounded to 8 bits first as
  `io.write_image` does. Returns the path."""
  quality = check_quality(quality)
  check_subsampling(subsampling)
  u = image_io.to_unit(x)
  if u.ndim != 3 or u.shape[-1] not in (1, 3):
    raise ValueError(f'x must be an image (H, W, 1|3), got shape {u.shape}')
  a = np.round(u * 255.0).astype(np.uint8)
  im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
  image_io.atomic_write(path, lambda fh: im.save(
      fh, format='JPEG', quality=quality, subsampling=_PILLOW_SUBSAMPLING[subsampling]))
  return path
