"""Image files <-> float32 arrays in [-1, 1] of shape (H, W, C); grids; input expansion.

Model units are [-1, 1]; image units (PNG, metrics) are [0, 1]: x_img = (x + 1) / 2.
Only numpy and Pillow here (no jax), so reading files stays cheap.
"""

import glob as glob_lib
import os
import uuid
from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageOps

from ddrm_jax.errors import SettingError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
TMP_MARK = ".tmp-"  # in the names of files being written (`atomic_write`)


class ImageError(SettingError):
  """A file that is not a usable image (unreadable, unsupported mode, transparent)."""


def to_unit(x):
  """[-1, 1] model units -> [0, 1] image units, clamped."""
  return np.clip((np.asarray(x, np.float32) + 1.0) / 2.0, 0.0, 1.0)


def from_unit(u):
  """[0, 1] image units -> [-1, 1] model units."""
  return np.asarray(u, np.float32) * 2.0 - 1.0


def _pil_to_unit(im: Image.Image, name: str) -> np.ndarray:
  """A Pillow image -> float32 (H, W, C) in [0, 1], C in {1, 3}."""
  mode = im.mode
  described = "a palette image with transparency" if mode == "P" else f"mode {mode}"
  if mode == "P":
    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
  elif mode == "PA":
    im = im.convert("RGBA")
  elif mode == "1":
    im = im.convert("L")
  elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
    im = im.convert("RGB")
  elif mode == "La":
    im = im.convert("LA")
  elif mode == "RGBa":
    im = im.convert("RGBA")
  mode = im.mode
  if mode in ("RGBA", "LA"):
    alpha = np.asarray(im.getchannel("A"))
    if alpha.min() < 255:
      raise ImageError(
          f"{name}: has transparent pixels ({described}); flatten it onto a background first "
          "(holes for inpainting go in §mask)")
    im = im.convert(mode[:-1])
    mode = im.mode
  if mode == "L":
    return (np.asarray(im, np.float32) / 255.0)[..., None]
  if mode == "RGB":
    return np.asarray(im, np.float32) / 255.0
  if mode.startswith("I;16"):
    a = np.asarray(im).astype(np.float32)
    return (a / 65535.0)[..., None]
  if mode == "I":
    a = np.asarray(im)
    if a.min() < 0 or a.max() > 65535:
      raise ImageError(f"{name}: 32-bit integer pixels outside 0..65535 are not supported")
    return (a.astype(np.float32) / 65535.0)[..., None]
  raise ImageError(f"{name}: unsupported image mode {mode!r}; save it as an 8/16-bit PNG or a JPEG")


def read_image(path: str, channels: int | None = None) -> np.ndarray:
  """Reads an image file as float32 (H, W, C) in [-1, 1].

  PNG (8 or 16 bit; 16-bit RGB is decoded by Pillow at 8-bit precision), JPEG (EXIF orientation
  applied), grayscale, palette, RGBA/LA without transparency (alpha dropped). Transparent images
  raise ImageError. `channels` (1 or 3) converts: gray -> RGB by repetition, RGB -> gray by the
  mean of R, G, B (the paper's colorization operator).
  """
  name = os.fspath(path)
  if not os.path.isfile(name):
    raise ImageError(f"{name}: no such file")
  try:
    with Image.open(name) as im:
      im.load()
      im = ImageOps.exif_transpose(im)
      u = _pil_to_unit(im, name)
  except ImageError:
    raise
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ImageError(f"{name}: cannot read image ({type(e).__name__}: {e})") from None
  x = from_unit(u)
  return x if channels is None else to_channels(x, channels)


def to_channels(x: np.ndarray, channels: int) -> np.ndarray:
  """(H, W, C) with C in {1, 3} -> (H, W, channels); RGB -> gray is the mean of R, G, B."""
  c = x.shape[-1]
  if c == channels:
    return x
  if c == 1 and channels == 3:
    return np.repeat(x, 3, axis=-1)
  if c == 3 and channels == 1:
    return x.mean(axis=-1, keepdims=True, dtype=np.float32)
  raise ValueError(f"cannot convert {c} channels to {channels}")


def write_image(path: str, x, bits: int = 8) -> None:
  """Writes (H, W, C) in [-1, 1] (C in {1, 3}) as a PNG, clamped to [0, 1] image units, atomically
  (`atomic_write`: an interrupted write leaves no truncated file)."""
  if bits not in (8, 16):
    raise ValueError(f"bits must be 8 or 16, got {bits}")
  u = to_unit(x)
  if u.ndim != 3 or u.shape[-1] not in (1, 3):
    raise ValueError(f"expected an image (H, W, 1|3), got shape {u.shape}")
  if bits == 8:
    a = np.round(u * 255.0).astype(np.uint8)
    im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
  else:
    if u.shape[-1] != 1:
      raise ValueError("16-bit PNG output is supported for grayscale images only")
    im = Image.fromarray(np.round(u[..., 0] * 65535.0).astype(np.uint16))
  atomic_write(path, lambda fh: im.save(fh, format="PNG"))


def atomic_write(path: str, write, binary: bool = True) -> None:
  """Writes a file all at once or not at all: `write(fh)` fills a temporary file beside `path`
  (a hidden `.<name>.tmp-<id>`), which then replaces `path` (os.replace). On any failure or
  interrupt the temporary file is removed and `path` is left as it was."""
  path = os.fspath(path)
  d = os.path.dirname(path)
  if d:
    os.makedirs(d, exist_ok=True)
  tmp = os.path.join(d, f".{os.path.basename(path)}{TMP_MARK}{uuid.uuid4().hex[:8]}")
  try:
    with open(tmp, "wb" if binary else "w") as fh:
      write(fh)
    os.replace(tmp, path)
  except BaseException:
    if os.path.lexists(tmp):
      os.remove(tmp)
    raise


def resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes (H, W, C) to size (h, w) with antialiased bicubic (Pillow, float32 per channel)."""
  h, w = size
  if x.shape[:2] == (h, w):
    return x
  chans = [np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c], np.float32))
                      .resize((w, h), Image.Resampling.BICUBIC), np.float32)
           for c in range(x.shape[-1])]
  return np.clip(np.stack(chans, axis=-1), -1.0, 1.0)


def center_crop(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Crops the largest centred region of aspect h:w from (H, W, C) and resizes it to (h, w)."""
  h, w = size
  H, W = x.shape[:2]
  if H * w > W * h:  # Too tall: keep full width.
    ch, cw = max(1, round(W * h / w)), W
  else:
    ch, cw = H, max(1, round(H * w / h))
  top, left = (H - ch) // 2, (W - cw) // 2
  return resize(x[top:top + ch, left:left + cw], size)


def fit(x: np.ndarray, size: tuple[int, int], how: str, name: str = "image") -> np.ndarray:
  """Brings x to spatial size (h, w): how = 'error' (raise if different), 'resize', 'center_crop'."""
  if tuple(x.shape[:2]) == tuple(size):
    return x
  if how == "resize":
    return resize(x, size)
  if how == "center_crop":
    return center_crop(x, size)
  if how == "error":
    raise ImageError(f"{name}: size {x.shape[0]}x{x.shape[1]} differs from the expected "
                     f"{size[0]}x{size[1]} (use §resize=resize or §resize=center_crop)")
  raise ValueError(f"unknown resize mode {how!r}")


def upsample_nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour upsampling of (h, w, C) by integer factors to (H, W) (pixel blocks)."""
  h, w = x.shape[:2]
  H, W = size
  if H % h or W % w:
    raise ValueError(f"{h}x{w} does not divide {H}x{W}")
  return np.repeat(np.repeat(x, H // h, axis=0), W // w, axis=1)


def make_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2, pad_value: float = 1.0,
              min_cell: int = 0, max_side: int = 0) -> np.ndarray:
  """Tiles rows of equally sized images ([-1, 1], C in {1, 3}) into one image with padding.

  Images smaller than `min_cell` pixels (height or width) are enlarged by the smallest integer
  factor that reaches it, with nearest neighbour (pixel blocks: nothing is invented), unless the
  grid would then be longer than `max_side` (> 0); a grid still longer than `max_side` is
  shrunk to it (`resize`)."""
  if not rows or not rows[0]:
    raise ValueError("make_grid needs at least one image")
  imgs = [np.asarray(im, np.float32) for r in rows for im in r]
  h, w = imgs[0].shape[:2]
  if any(im.shape[:2] != (h, w) for im in imgs):
    raise ValueError(f"make_grid needs images of one size, got {sorted({im.shape[:2] for im in imgs})}")
  nrow, ncol = len(rows), max(len(r) for r in rows)
  side = lambda ch, cw: max(pad + nrow * (ch + pad), pad + ncol * (cw + pad))
  if min_cell and min(h, w) < min_cell:
    f = -(-min_cell // min(h, w))
    while f > 1 and max_side and side(h * f, w * f) > max_side:
      f -= 1
    rows = [[upsample_nearest(np.asarray(im, np.float32), (h * f, w * f)) for im in r]
            for r in rows]
    h, w = h * f, w * f
  c = max(im.shape[-1] for im in imgs)
  ncol = max(len(r) for r in rows)
  out = np.full((pad + len(rows) * (h + pad), pad + ncol * (w + pad), c), pad_value, np.float32)
  for i, r in enumerate(rows):
    for j, im in enumerate(r):
      top, left = pad + i * (h + pad), pad + j * (w + pad)
      out[top:top + h, left:left + w] = to_channels(np.asarray(im, np.float32), c)
  if max_side and max(out.shape[:2]) > max_side:
    scale = max_side / max(out.shape[:2])
    out = resize(out, (max(1, round(out.shape[0] * scale)), max(1, round(out.shape[1] * scale))))
  return out


def label_columns(image: np.ndarray, labels: Sequence[str], pad: int = 2,
                  pad_value: float = 1.0, font_size: int | None = None) -> np.ndarray:
  """A grid of `make_grid` (H, W, C) in [-1, 1] with a strip of column labels above it.

  The grid's n = len(labels) columns are laid out as `make_grid` lays them: a border of `pad`,
  then columns of pitch (W - pad) / n, each a cell of (W - pad) / n - pad pixels and its
  padding. Each label is centred over its cell, drawn in Pillow's default font
  (`ImageFont.load_default`) of `font_size` pixels (default: 1/16 of the cell, 10 to 24,
  smaller where a label would not fit its cell), on the padding colour `pad_value`. The grid's
  pixels are kept: the result is (strip + H, W, C). A label count that does not match the
  grid's columns (their width, or the padding between them) raises ValueError.
  """
  from PIL import ImageDraw  # pylint: disable=g-import-not-at-top
  from PIL import ImageFont  # pylint: disable=g-import-not-at-top
  x = np.asarray(image, np.float32)
  labels = [str(label) for label in labels]
  if x.ndim != 3 or x.shape[-1] not in (1, 3):
    raise ValueError(f"image must be a grid (H, W, 1|3) of make_grid, got shape {x.shape}")
  n, width = len(labels), x.shape[1]
  if n < 1:
    raise ValueError("labels must name at least one column")
  pitch = (width - pad) // n
  cell = pitch - pad
  if (width - pad) % n or cell < 1:
    raise ValueError(f"labels must name each column of the grid: a grid {width} pixels wide "
                     f"(padding {pad}) does not have {n} columns")
  seps = [c for j in range(n + 1) for c in range(j * pitch, j * pitch + pad)]
  if np.mean(np.abs(x[:, seps] - pad_value)) > 0.05:  # Tolerates JPEG ringing near the cells.
    raise ValueError(f"labels must name each column of the grid: {n} labels do not match its "
                     f"columns (the pixels between {n} columns of {cell} are not padding)")
  size = font_size or min(24, max(10, cell // 16))

  def font_of(px):
    try:
      return ImageFont.load_default(size=px)
    except TypeError:  # Pillow without FreeType: its one bitmap font.
      return ImageFont.load_default()

  probe = ImageDraw.Draw(Image.new("L", (1, 1)))
  font = font_of(size)
  while size > 6 and max(probe.textlength(t, font=font) for t in labels) > cell:
    size -= 1
    font = font_of(size)
  boxes = [probe.textbbox((0, 0), t, font=font) for t in labels]
  top = min(b[1] for b in boxes)
  text_h = max(b[3] for b in boxes) - top
  margin = max(pad, size // 3)
  strip_h = text_h + 2 * margin
  background = int(round(float(to_unit(pad_value)) * 255))
  strip = Image.new("L", (width, strip_h), background)
  draw = ImageDraw.Draw(strip)
  ink = 0 if background >= 128 else 255
  for j, (t, b) in enumerate(zip(labels, boxes)):
    centre = pad + j * pitch + cell / 2
    draw.text((round(centre - (b[2] - b[0]) / 2 - b[0]), margin - top), t, fill=ink, font=font)
  s = from_unit(np.asarray(strip, np.float32)[..., None] / 255.0)
  return np.concatenate([np.repeat(s, x.shape[-1], axis=-1), x], axis=0)


def read_list(path: str) -> list[str]:
  """The image paths listed in a text file, one a line, in its order (blank lines and lines
  starting with # skipped); relative paths are relative to the list's folder. Raises
  ValueError for an empty list or a listed file that does not exist."""
  try:
    with open(path, encoding="utf-8") as fh:
      lines = fh.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise SettingError(f"§input {path}: cannot read the list ({type(e).__name__}: {e})") from None
  base = os.path.dirname(path)
  files, missing = [], []
  for n, line in enumerate(lines):
    name = line.strip()
    if not name or name.startswith("#"):
      continue
    f = name if os.path.isabs(name) else os.path.join(base, name)
    files.append(f)
    if os.path.isdir(f):
      raise SettingError(f"§input {path}: line {n + 1}: {name} is a folder, not an image file "
                         "(list the files, or pass the folder itself as the input)")
    if not os.path.isfile(f):
      missing.append(f"line {n + 1}: {name}")
  if missing:
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    raise SettingError(f"§input {path}: no such file: {', '.join(missing[:3])}{more}")
  if not files:
    raise SettingError(f"§input {path}: the list names no file")
  return files


def expand_inputs(spec: str) -> list[str]:
  """An input spec -> file list: a file, a folder (its image files, not recursive) or a glob, sorted;
  or a .txt file listing image paths (`read_list`, in the list's order).

  An existing file or folder is taken as it is named, even when its name holds glob characters
  (`photo [1].png`). Raises ValueError when nothing matches.
  """
  if not spec:
    raise SettingError("§input is empty")
  if spec.lower().endswith(".txt") and os.path.isfile(spec):
    return read_list(spec)
  if any(ch in spec for ch in "*?[") and not os.path.exists(spec):
    files = sorted(p for p in glob_lib.glob(spec) if os.path.isfile(p))
    if not files:
      raise SettingError(f"§input {spec!r}: no file matches this pattern")
    return files
  if os.path.isdir(spec):
    files = sorted(os.path.join(spec, f) for f in os.listdir(spec)
                   if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(spec, f)))
    if not files:
      raise SettingError(f"§input {spec!r}: the folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files
  if os.path.isfile(spec):
    return [spec]
  raise SettingError(f"§input {spec!r}: no such file or folder")


def read_images(spec: str, channels: int | None = None) -> tuple[list[str], np.ndarray]:
  """(names, images): the files of `spec` (as `expand_inputs`) stacked as float32 (N, H, W, C)
  in [-1, 1]. Raises ValueError when none match, ImageError (a ValueError) for unreadable files
  or images of different sizes."""
  files = expand_inputs(spec)
  images = [read_image(f, channels) for f in files]
  shapes = sorted({x.shape for x in images})
  if len(shapes) > 1:
    raise ImageError(f"{spec}: the images differ in size ({', '.join(map(str, shapes[:3]))})")
  return unique_stems(files), np.stack(images)


def unique_stems(files: Sequence[str]) -> list[str]:
  """Output names for input files, unique for any set of inputs (also on case-insensitive file
  systems): the path under the inputs' common folder without its extension (`a`, `x/a`; `/` as
  the separator); where two names would still be equal ignoring case (`a.png`, `a.jpg`), the
  extension is kept (`a.jpg`), and any name still taken gets `~<i>` (i = input index)."""
  absolute = [os.path.abspath(os.fspath(f)) for f in files]
  if not absolute:
    return []
  root = os.path.commonpath([os.path.dirname(f) for f in absolute])
  rel = [os.path.relpath(f, root).replace(os.sep, "/") for f in absolute]
  names = [os.path.splitext(r)[0] for r in rel]
  counts: dict[str, int] = {}
  for key in [n.casefold() for n in names] + [("rel", r.casefold()) for r in rel]:
    counts[key] = counts.get(key, 0) + 1
  # The extension tells a.png from a.jpg; it cannot tell a file listed twice from itself.
  names = [r if counts[n.casefold()] > 1 and counts[("rel", r.casefold())] == 1 else n
           for n, r in zip(names, rel)]
  taken: set[str] = set()
  out = []
  for i, n in enumerate(names):
    name, j = n, i
    while name.casefold() in taken:
      name, j = f"{n}~{j}", j + 1
    taken.add(name.casefold())
    out.append(name)
  return out
