"""Labels the columns of the docs' figures (`io.label_columns`), keeping their pixels.

Each figure is cut into its cells (the layout it was made with), laid out again by
`io.make_grid` with cells of at least 256 pixels (smaller ones enlarged by an integer factor,
nearest neighbour: pixel blocks, nothing invented) and given a strip of column labels. A figure
whose size is not its unlabelled layout's (e.g. one labelled already) is refused, so running
the script twice changes nothing:

  python scripts/label_figures.py            # docs/*.png|jpg in place
  python scripts/label_figures.py --out=/tmp/figures
"""

import dataclasses
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_DOCS = flags.DEFINE_string('docs', os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'docs'), 'Folder of the figures.')
_OUT = flags.DEFINE_string('out', None, 'Folder for the labelled figures (default: --docs).')

MIN_CELL = 256  # As ddrm-restore's grid.png (runner.outputs.GRID_MIN_CELL).


@dataclasses.dataclass(frozen=True)
class Figure:
  """An unlabelled figure: `rows` x len(`labels`) cells of `cell` pixels, `pad` between them and,
  with `border`, around them (`io.make_grid`'s layout)."""
  name: str
  cell: int
  rows: int
  labels: tuple
  pad: int = 2
  border: bool = True

  def size(self):
    edge = self.pad if self.border else -self.pad
    cols = len(self.labels)
    return edge + self.rows * (self.cell + self.pad), edge + cols * (self.cell + self.pad)


FIGURES = (
    # ddrm-restore's grid.png in the paper protocol (runner.outputs.grid_rows): sr4 with the
    # bundled prior, sigma_y 0.05, the posterior mean of 8 samples.
    Figure('restore_sr4_grid.png', cell=64, rows=6,
           labels=('original', 'degraded (4x, sigma_y 0.05)', 'restored (mean of 8)')),
    # deblur_motion (top two rows) and blur2d (bottom two), bundled prior, sigma_y 0.02.
    Figure('restore_blur2d_grid.png', cell=64, rows=4, border=False,
           labels=('blurry', 'restored (mean of 8)', 'original', 'kernel')),
    # scripts/tile_quality.py's figure: sr4, deno, inp at 256x256.
    Figure('tiles_256.jpg', cell=256, rows=3,
           labels=('degraded', 'at 64, upscaled', 'by tiles', 'original')),
)


def cells(a, fig):
  """The figure's cells (uint8 (H, W, C)) as rows of [-1, 1] arrays."""
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  off = fig.pad if fig.border else 0
  pitch = fig.cell + fig.pad
  return [[io.from_unit(a[off + i * pitch:off + i * pitch + fig.cell,
                          off + j * pitch:off + j * pitch + fig.cell] / 255.0)
           for j in range(len(fig.labels))] for i in range(fig.rows)]


def label(path, out_path, fig):
  """Writes the labelled figure; returns its size, or None when `path` is not unlabelled."""
  # pylint: disable=g-import-not-at-top
  import numpy as np
  from PIL import Image
  from ddrm_jax import io
  with Image.open(path) as im:
    a = np.asarray(im.convert('RGB'))
  if a.shape[:2] != fig.size():
    return None
  grid = io.make_grid(cells(a, fig), pad=fig.pad, min_cell=MIN_CELL)
  out = np.round(io.to_unit(io.label_columns(grid, fig.labels, pad=fig.pad)) * 255)
  if not out_path.lower().endswith('.png'):  # JPEG: the grid stays on its 16x16 blocks.
    out = np.pad(out, ((-(out.shape[0] - grid.shape[0]) % 16, 0), (0, 0), (0, 0)),
                 constant_values=255)
  im = Image.fromarray(out.astype(np.uint8))
  if out_path.lower().endswith('.png'):
    io.atomic_write(out_path, lambda fh: im.save(fh, format='PNG', optimize=True))
  else:  # The photo-sized figure stays a JPEG, encoded as scripts/tile_quality.py encodes it.
    io.atomic_write(out_path, lambda fh: im.save(fh, format='JPEG', quality=90))
  return out.shape[:2]


def main(argv):
  del argv
  out_dir = _OUT.value or _DOCS.value
  for fig in FIGURES:
    path = os.path.join(_DOCS.value, fig.name)
    shape = label(path, os.path.join(out_dir, fig.name), fig)
    if shape is None:
      print(f'{path}: not an unlabelled {fig.size()[0]}x{fig.size()[1]} figure (labelled '
            'already?); left as it is')
    else:
      print(f'{path}: labelled {" | ".join(fig.labels)} -> {shape[0]}x{shape[1]}')


if __name__ == '__main__':
  app.run(main)
