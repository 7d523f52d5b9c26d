"""Quality of DDRM by tiles (`--resize=tile`) on images larger than the network.

The six held-out demo images at their full 256x256 (the bundled samples are these at 64x64),
restored with the bundled 64x64 prior in the paper protocol, three ways per problem:

- tiles: `ddrm-restore --resize=tile` at 256x256 (5 x 5 tiles of 64, overlap 16);
- the paper's baseline at 256x256 (bicubic upsampling for SR, H^+ y otherwise);
- "downscale to 64, restore, upscale": `ddrm-restore --resize=resize` (the image brought to 64x64,
  degraded and restored there), the restoration upsampled to 256x256 (antialiased bicubic).

Prints a markdown table of mean PSNR / SSIM against the 256x256 originals:

  python scripts/tile_quality.py --out=ddrm_runs/tile_quality
"""

import json
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (name, --deg, sigma_y in [0, 1] image units), as in scripts/prior_quality.py.
PROBLEMS = (('sr4', 'sr4', 0.05), ('deno', 'deno', 0.1), ('inp', 'inp', 0.05))
# The bundled samples' names and their originals under the demo folders (held out of the prior).
HELD_OUT = {
    'bedroom_0': 'ood_bedroom/0/orig_0.png',
    'celeba_0': 'ood_celeba/0/orig_0.png',
    'celeba_1': 'ood_celeba/0/orig_1.png',
    'church_0': 'ood_church_outdoor/0/orig_0.png',
    'church_1': 'ood_church_outdoor/0/orig_1.png',
    'ood_0': 'ood/0/orig_0.png',
}

_IMAGES = flags.DEFINE_string('images', None, "The paper's demo image folders (default: the "
                              'held-out originals bundled in ddrm_jax/assets/samples_256).')
_OUT = flags.DEFINE_string('out', 'ddrm_runs/tile_quality', 'Folder of the runs.')
_STEPS = flags.DEFINE_integer('steps', 20, 'DDRM steps.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 1, 'Posterior samples per image.')
_PROBLEMS = flags.DEFINE_list('problems', [p[0] for p in PROBLEMS], 'Problems to run.')
_REUSE = flags.DEFINE_bool('reuse', False, 'Read the runs already in --out instead of rerunning.')
_FIGURE = flags.DEFINE_string('figure', 'church_0', 'Image of --out/figure.jpg: per problem '
                              'degraded | at 64, upscaled | by tiles | original.')


FIGURE_COLUMNS = ('degraded', 'at 64, upscaled', 'by tiles', 'original')


def _figure(path, rows):
  """Rows of [-1, 1] images as one JPEG (quality 90) with white gaps."""
  # pylint: disable=g-import-not-at-top
  import numpy as np
  from PIL import Image
  from ddrm_jax import io
  grid = io.to_unit(io.label_columns(io.make_grid(rows), FIGURE_COLUMNS))
  im = Image.fromarray(np.round(grid * 255).astype(np.uint8))
  io.atomic_write(path, lambda fh: im.save(fh, format='JPEG', quality=90))


def main(argv):
  del argv
  # pylint: disable=g-import-not-at-top
  import numpy as np
  from ddrm_jax import io
  from ddrm_jax import metrics
  from ddrm_jax import runner
  from ddrm_jax import pipeline
  inputs = os.path.join(_OUT.value, 'originals')
  os.makedirs(inputs, exist_ok=True)
  from ddrm_jax import bundled
  for name, rel in HELD_OUT.items():
    source = (os.path.join(_IMAGES.value, rel) if _IMAGES.value else
              os.path.join(bundled.SAMPLES_256, name + '.png'))
    with open(source, 'rb') as fh:
      data = fh.read()
    io.atomic_write(os.path.join(inputs, name + '.png'), lambda fh: fh.write(data))
  originals = {n: io.read_image(os.path.join(inputs, n + '.png'), 3) for n in HELD_OUT}
  rows, figure_rows = [], []
  for name, deg, sigma_y in (p for p in PROBLEMS if p[0] in _PROBLEMS.value):
    common = pipeline.RestoreConfig(deg=deg, sigma_y=sigma_y, steps=_STEPS.value,
                                    num_samples=_NUM_SAMPLES.value, overwrite=True)
    tiles, small = (os.path.join(_OUT.value, f'{name}_{how}') for how in ('tiles', 'at64'))
    for out, how in ((tiles, 'tile'), (small, 'resize')):
      if _REUSE.value and os.path.isfile(os.path.join(out, 'run.json')):
        continue
      try:
        failed = pipeline.restore_files(common.replace(resize=how), inputs, out).failed
      except pipeline.SettingError as e:
        failed = [str(e)]
      if failed:
        print(f'tile_quality: the restore failed on {name} resize={how}', file=sys.stderr)
        return 1
    with open(os.path.join(tiles, 'metrics.json')) as fh:
      mean = json.load(fh)['mean']
    up_psnr, up_ssim, ups = [], [], {}
    for n, x in originals.items():
      restored = io.read_image(os.path.join(small, 'restored', n + '.png'), 3)
      ups[n] = io.resize(restored, x.shape[:2])
      up_psnr.append(float(metrics.psnr(io.to_unit(ups[n]), io.to_unit(x))))
      up_ssim.append(float(metrics.ssim(io.to_unit(ups[n]), io.to_unit(x))))
    fig = _FIGURE.value
    in_tiles = lambda sub: io.read_image(os.path.join(tiles, sub, fig + '.png'), 3)
    figure_rows.append([in_tiles('degraded'), ups[fig], in_tiles('restored'), originals[fig]])
    rows.append((name, sigma_y, mean['psnr'], mean['ssim'], mean['baseline_psnr'],
                 mean['baseline_ssim'], float(np.mean(up_psnr)), float(np.mean(up_ssim))))
  print('| problem | sigma_y | tiles PSNR | tiles SSIM | baseline PSNR | baseline SSIM | '
        'at 64, upscaled PSNR | at 64, upscaled SSIM |')
  print('| --- | --- | --- | --- | --- | --- | --- | --- |')
  for r in rows:
    print(f'| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.3f} | {r[4]:.2f} | {r[5]:.3f} | {r[6]:.2f} '
          f'| {r[7]:.3f} |')
  _figure(os.path.join(_OUT.value, 'figure.jpg'), figure_rows)
  runner.write_json(os.path.join(_OUT.value, 'quality.json'),
                    [dict(zip(('problem', 'sigma_y', 'psnr', 'ssim', 'baseline_psnr',
                               'baseline_ssim', 'at64_upscaled_psnr', 'at64_upscaled_ssim'), r))
                     for r in rows])
  return 0


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)))
