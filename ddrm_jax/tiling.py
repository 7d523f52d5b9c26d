"""Any image size: a network of one tile size run over overlapping tiles of a larger image.

`tiled(fn, tile)` turns `fn(x, t, *per_image)` for (N, tile, tile, C) inputs into the same
function for (B, H, W, C) inputs with H, W >= tile. It knows nothing of operators or model
families: DDRM keeps the operator, Eq. 7-8 and the keys on the whole image, and only the network
(or a classifier-guidance gradient) is tiled.

The tiles: along each axis, starts 0, stride, 2 stride, ... with stride = tile - overlap, the last
one flush with the border (H - tile). Every (image, tile) pair is one network input; they run in
calls of at most `tiles_per_call` inputs (a `lax.scan` over the calls), so memory stays that of one
call whatever the image size. Each tile's output is weighted by a smooth window, positive
everywhere (a sin^2 ramp over `overlap` pixels at each edge, 1 inside), added into the image and
divided by the summed weights. Per-image arguments (class labels) go with each of the image's tiles.
"""

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np


RESIZE_HINT = "resize it (the resize setting: 'resize' or 'center_crop')"


def default_overlap(tile):
  """A quarter of the tile."""
  tile, _ = check_tiling(tile, 0)
  return tile // 4


def check_tiling(tile, overlap):
  """Checks tile >= 1 and 0 <= overlap < tile (Python ints); returns (tile, overlap)."""
  if isinstance(tile, bool) or not isinstance(tile, (numbers.Integral, np.integer)) or tile < 1:
    raise ValueError(f"tile must be an int >= 1 (the square tile's side), got {tile!r}")
  if isinstance(overlap, bool) or not isinstance(overlap, (numbers.Integral, np.integer)):
    raise ValueError(f'tile overlap must be an int number of pixels, got {overlap!r}')
  if not 0 <= overlap < tile:
    raise ValueError(f'tile overlap must be in [0, {tile}) pixels for {tile}x{tile} tiles, '
                     f'got {overlap}')
  return int(tile), int(overlap)


def tile_starts(size, tile, overlap):
  """Start offsets of the tiles along one axis of `size` pixels (the last one is size - tile)."""
  tile, overlap = check_tiling(tile, overlap)
  if size < tile:
    raise ValueError(f'an image side of {size} pixels is smaller than the network\'s {tile}x'
                     f'{tile} tiles; {RESIZE_HINT}')
  stride = tile - overlap
  n = 1 + math.ceil((size - tile) / stride)
  return tuple(min(i * stride, size - tile) for i in range(n))


def tile_grid(shape, tile, overlap):
  """(starts_h, starts_w) of the tiles covering an image of spatial `shape` (H, W)."""
  h, w = int(shape[0]), int(shape[1])
  if h < tile or w < tile:
    raise ValueError(f'the image is {h}x{w}, smaller than the network\'s {tile}x{tile} tiles; '
                     f'{RESIZE_HINT}')
  return tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)


def num_tiles(shape, tile, overlap=None):
  """Number of tiles covering one image of spatial `shape` (H, W)."""
  overlap = default_overlap(tile) if overlap is None else overlap
  sh, sw = tile_grid(shape, tile, overlap)
  return len(sh) * len(sw)


def window(tile, overlap):
  """(tile,) float64 blending window: sin^2 ramps over `overlap` pixels at both ends, 1 inside.

  Positive everywhere (the first pixel weighs sin^2(pi / (2 (overlap + 1)))); ramps of two tiles
  overlapping by exactly `overlap` sum to 1.
  """
  tile, overlap = check_tiling(tile, overlap)
  w = np.ones(tile)
  ramp = np.sin(0.5 * np.pi * np.arange(1, overlap + 1) / (overlap + 1))**2
  w[:overlap] = ramp
  w[tile - overlap:] = np.minimum(w[tile - overlap:], ramp[::-1])
  return w


def weights(shape, tile, overlap):
  """(H, W) float64 sum of the tiles' 2-D windows (the normaliser of the blend)."""
  sh, sw = tile_grid(shape, tile, overlap)
  w = window(tile, overlap)
  total_h, total_w = np.zeros(shape[0]), np.zeros(shape[1])
  for s in sh:
    total_h[s:s + tile] += w
  for s in sw:
    total_w[s:s + tile] += w
  return np.outer(total_h, total_w)  # Separable windows on a product grid: a product of sums.


def tiled(fn, tile, *, overlap=None, tiles_per_call=None):
  """`fn` for tile-size inputs -> the same function for whole images (H, W >= tile).

  Args:
    fn: `fn(x, t, *per_image) -> out`, x (N, tile, tile, C), t (N,), each per-image argument
      with a leading axis N (e.g. class labels); out (N, tile, tile, C') (eps, 2C learned-sigma
      channels, or a guidance gradient).
    tile: the network's input size (square tiles).
    overlap: pixels shared by neighbouring tiles, in [0, tile) (default tile // 4).
    tiles_per_call: at most this many tile inputs (over all images of the batch) per call of
      `fn` (default: all in one call).

  Returns:
    `whole(x, t, *per_image)` for x (B, H, W, C), t (B,) or one scalar for all, per-image
    arguments (B, ...) (ValueError otherwise, naming the argument): the tiles' outputs blended
    into (B, H, W, C'). When the image is one tile it is `fn` itself (with t as (B,)).
    Pure and traceable; the tiling is fixed by the static shapes (one trace per shape).
  """
  overlap = default_overlap(tile) if overlap is None else overlap
  tile, overlap = check_tiling(tile, overlap)
  if tiles_per_call is not None and (isinstance(tiles_per_call, bool) or not isinstance(
      tiles_per_call, (numbers.Integral, np.integer)) or tiles_per_call < 1):
    raise ValueError(f'tiles_per_call must be an int >= 1, got {tiles_per_call!r}')
  return functools.partial(_blend, fn, tile, overlap, tiles_per_call)


def _check_call(x, t, per_image):
  """ValueError unless x is (B, H, W, C), t a scalar or (B,) and each per-image argument has a
  leading axis B (shapes only: traced values are fine)."""
  shape = np.shape(x)
  if len(shape) != 4:
    raise ValueError(f'x must be a batch of images (B, H, W, C), got shape {shape}')
  b = shape[0]
  if np.ndim(t) != 0 and np.shape(t) != (b,):
    raise ValueError(f't must be a scalar or have shape ({b},) (one per image of x), got shape '
                     f'{np.shape(t)}')
  for i, a in enumerate(per_image, start=1):
    if np.ndim(a) == 0 or np.shape(a)[0] != b:
      raise ValueError(f"per-image argument {i} (after x and t) must have x's batch size {b} "
                       f'as its leading axis, got shape {np.shape(a)}')


def _blend(fn, tile, overlap, tiles_per_call, x, t, *per_image):
  _check_call(x, t, per_image)
  b, h, w, _ = x.shape
  sh, sw = tile_grid((h, w), tile, overlap)
  t = jnp.broadcast_to(jnp.asarray(t), (b,))
  if len(sh) * len(sw) == 1:
    return fn(x, t, *per_image)
  # Every (image, tile) pair, padded to whole calls by repeats of the last one with weight 0.
  img, top, left = (a.ravel() for a in np.meshgrid(np.arange(b), sh, sw, indexing='ij'))
  n = img.size
  calls = math.ceil(n / (tiles_per_call or n))
  per_call = math.ceil(n / calls)
  pad = calls * per_call - n
  live = np.concatenate([np.ones(n), np.zeros(pad)]).astype(np.float32)
  img, top, left = (np.concatenate([a, np.full(pad, a[-1])]) for a in (img, top, left))
  index = jnp.asarray(np.stack([img, top, left], -1).reshape(calls, per_call, 3), jnp.int32)
  live = jnp.asarray(live.reshape(calls, per_call))
  win = window(tile, overlap)
  win2 = jnp.asarray(np.outer(win, win)[..., None], jnp.float32)

  def crop(idx):
    i, r, c = idx[0], idx[1], idx[2]
    return jax.lax.dynamic_slice(x, (i, r, c, 0), (1, tile, tile, x.shape[3]))[0]

  def run(idx):
    tiles = jax.vmap(crop)(idx)
    args = [jnp.take(jnp.asarray(a), idx[:, 0], axis=0) for a in per_image]
    return fn(tiles, t[idx[:, 0]], *args)

  out_shape = jax.eval_shape(run, index[0])
  if len(out_shape.shape) != 4 or out_shape.shape[1:3] != (tile, tile):
    raise ValueError(f'fn must return (N, {tile}, {tile}, C) for {tile}x{tile} tiles, got '
                     f'{out_shape.shape}')
  acc_dtype = jnp.promote_types(out_shape.dtype, jnp.float32)

  def body(acc, xs):
    idx, alive = xs
    out = run(idx).astype(acc_dtype) * win2 * alive[:, None, None, None]

    def add(k, acc):
      i, r, c = idx[k, 0], idx[k, 1], idx[k, 2]
      start = (i, r, c, 0)
      patch = jax.lax.dynamic_slice(acc, start, (1, tile, tile, acc.shape[3]))
      return jax.lax.dynamic_update_slice(acc, patch + out[k][None], start)

    return jax.lax.fori_loop(0, per_call, add, acc), None

  acc = jnp.zeros((b, h, w, out_shape.shape[3]), acc_dtype)
  acc, _ = jax.lax.scan(body, acc, (index, live))
  norm = jnp.asarray(weights((h, w), tile, overlap)[None, :, :, None], acc_dtype)
  return (acc / norm).astype(out_shape.dtype)


def seam_ratio(x, tile, overlap=None, period=8):
  """Seam statistic of an image (H, W, C) restored by tiles (the grid of `tile_grid`).

  The mean |difference| of neighbouring pixels across the tiles' edges (where a tile starts or
  ends inside the image) over the same mean at the other pixel pairs of the same phase modulo
  `period` (so pixel-block operators such as sr4 bias neither side); about 1 without seams,
  nan when the image is one tile.
  """
  x = np.asarray(x, np.float64)
  if x.ndim != 3:
    raise ValueError(f'x must be one image (H, W, C), got shape {x.shape}; score each image of '
                     'a batch on its own')
  overlap = default_overlap(tile) if overlap is None else overlap
  sums, counts = np.zeros(2), np.zeros(2)
  for axis, starts in enumerate(tile_grid(x.shape[:2], tile, overlap)):
    diff = np.abs(np.diff(x, axis=axis)).mean(axis=(1 - axis, 2))  # diff[p]: pixels p, p + 1.
    lines = diff.size
    edge = np.zeros(lines, bool)
    for s in starts:
      edge[[p for p in (s - 1, s + tile - 1) if 0 <= p < lines]] = True
    phases = np.unique(np.arange(lines)[edge] % period)
    same_phase = np.isin(np.arange(lines) % period, phases) & ~edge
    width = x.shape[1 - axis]
    for k, sel in enumerate((edge, same_phase)):
      sums[k] += diff[sel].sum() * width
      counts[k] += sel.sum() * width
  if not counts[0] or not counts[1]:
    return float('nan')
  return float((sums[0] / counts[0]) / (sums[1] / counts[1]))
