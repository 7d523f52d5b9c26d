"""What a run writes for each image, and the files that sum a run up (metrics.json, grid.png).

Layout of an output folder: restored/, degraded/ (and in the paper protocol original/,
baseline/), with several samples samples/ and std/; a problem may add its own (blind
deblurring: kernels/, through `Extras`); progress/ holds the journals; metrics.json, grid.png
and run.json sum the run up.
"""

import math
import os

import numpy as np

from ddrm_jax import io

RUN_JSON = 'run.json'
METRICS_JSON = 'metrics.json'
GRID_PNG = 'grid.png'
GRID_ROWS = 16
GRID_MIN_CELL = 256  # grid cells smaller than this are enlarged (nearest neighbour)
GRID_MAX_SIDE = 8192  # and no grid is longer than this
METRIC_FIELDS = ('psnr', 'ssim', 'baseline_psnr', 'baseline_ssim')
SAMPLE_FIELDS = ('sample_psnr', 'sample_ssim')


class Extras:
  """A problem's own part of a run's outputs (no-ops here; see `problems`): how the step's
  results are adjusted before they are written (`adjust`), the image's extra files (`paths`,
  written by `write`) and extra metrics in the paper protocol (`metrics`)."""

  def adjust(self, res):
    return res

  def paths(self, name):
    del name
    return {}

  def metrics(self, res, j):
    del res, j
    return {}

  def write(self, full, paths, res, j):
    del full, paths, res, j


def metric_fields(num_samples):
  return METRIC_FIELDS + (SAMPLE_FIELDS if num_samples > 1 else ())


def output_paths(name, paper, num_samples):
  """{kind: path relative to the output folder} of one image's files."""
  p = lambda sub, stem: f'{sub}/{stem}.png'
  out = {'restored': p('restored', name), 'degraded': p('degraded', name)}
  if paper:
    out['original'] = p('original', name)
    out['baseline'] = p('baseline', name)
  if num_samples > 1:
    out['std'] = p('std', name)
    out['samples'] = [p('samples', f'{name}_{k}') for k in range(num_samples)]
  return out


def full_path(out_dir, rel):
  """The path of output `rel` (a '/'-separated path relative to the output folder)."""
  return os.path.join(out_dir, *rel.split('/'))


def write_outputs(out_dir, paths, res, j):
  """Writes the images of row j of `res` to `paths` (`output_paths`), each atomically."""
  full = lambda rel: full_path(out_dir, rel)
  for kind in ('restored', 'degraded', 'original', 'baseline'):
    if kind in paths:
      io.write_image(full(paths[kind]), res[kind][j])
  for k, rel in enumerate(paths.get('samples', ())):
    io.write_image(full(rel), res['samples'][j, k])
  if 'std' in paths:
    # std in [0, 1] image units = std_model / 2; write_image maps [-1, 1] -> [0, 1].
    io.write_image(full(paths['std']), res['std'][j] - 1.0)


def write_kernel(npy_path, png_path, kernel):
  """A blur kernel as a .npy array and as a picture (its maximum white, at least 64 px)."""
  kernel = np.asarray(kernel, np.float32)
  io.atomic_write(npy_path, lambda fh: np.save(fh, kernel))
  view = kernel / max(float(kernel.max()), 1e-12)
  scale = max(1, 64 // max(kernel.shape))  # Nearest-neighbour blocks.
  view = io.upsample_nearest(view, (scale * kernel.shape[0], scale * kernel.shape[1]))
  io.write_image(png_path, view[..., None] * 2.0 - 1.0)


def json_number(v):
  v = float(v)
  return v if math.isfinite(v) else None


def merge_metrics(rows):
  """metrics.json of records [{'file': ..., 'name': ..., 'outputs': ..., field: value}] in input
  order: their means too."""
  fields = [k for k in rows[0] if k not in ('file', 'name', 'outputs')] if rows else []
  mean = {}
  for k in fields:
    vals = [r[k] for r in rows if r.get(k) is not None]
    mean[k] = json_number(np.mean(vals)) if vals else None
  return {'mean': mean, 'images': rows}


def grid_rows(read, outputs_in_order, paper):
  """The grid's rows: (original,) degraded, restored of the first GRID_ROWS images of the first
  one's size; `read(rel)` reads an output file."""
  grid, shape = [], None
  for outputs in outputs_in_order:
    if len(grid) >= GRID_ROWS:
      break
    restored = read(outputs['restored'])
    shape = shape or restored.shape
    if restored.shape != shape:
      continue
    subs = (('original',) if paper else ()) + ('degraded',)
    grid.append([read(outputs[s]) for s in subs] + [restored])
  return grid
