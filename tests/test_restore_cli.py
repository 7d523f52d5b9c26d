"""End-to-end tests of `ddrm-restore` (ddrm_jax/cli/restore.py) and ddrm_jax/restore.py.

A tiny random-weight DDPM (16x16) is written with save_checkpoint once; the command runs
in-process through `main(argv)` (stderr captured) and once as a subprocess for the exit status.
"""

import contextlib
import io as std_io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from ddrm_jax import checkpoints
from ddrm_jax import metrics
from ddrm_jax import operators
from ddrm_jax import restore
from ddrm_jax import runner
from ddrm_jax import sampler
from ddrm_jax import side_files
from ddrm_jax.cli import restore as cli
from ddrm_jax.errors import SettingError
from ddrm_jax.pipeline import files as pipeline_files
from ddrm_jax.pipeline import plan as pipeline_plan
from ddrm_jax.runner import folder
from ddrm_jax.models import adm_unet
from ddrm_jax.models import configs
from ddrm_jax.models import ddpm_unet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 16
TINY = ddpm_unet.DDPMConfig(image_size=SIZE, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                            attn_resolutions=(8,), num_groups=4)
FAST = ['--steps=3']


def _random_params(config, seed=0):
  """Random float32 params of the config's shapes (no init compilation)."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(configs.param_shapes(config))
  return traverse_util.unflatten_dict(
      {p: rng.normal(0, 0.1, s.shape).astype(np.float32) for p, s in flat.items()})


def _png(path):
  return np.asarray(Image.open(path), np.float64) / 255.0


def tiny_run_folder(seed, names=('a.png', 'b.png')):
  """A temporary folder with `ckpt` (the TINY network, random params) and `imgs/<name>` for each
  of `names` (random SIZE x SIZE RGB images drawn with `seed`); returns (folder, ckpt, imgs)."""
  d = tempfile.mkdtemp()
  ckpt = os.path.join(d, 'ckpt')
  checkpoints.save_checkpoint(ckpt, _random_params(TINY), TINY)
  rng = np.random.default_rng(seed)
  imgs = os.path.join(d, 'imgs')
  os.makedirs(imgs)
  for name in names:
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(
        os.path.join(imgs, name))
  return d, ckpt, imgs


def _run(argv):
  """main(argv) in-process: (status, stdout, stderr lines)."""
  out, err = std_io.StringIO(), std_io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    status = cli.main(['ddrm-restore'] + list(argv))
  return status, out.getvalue(), [l for l in err.getvalue().splitlines() if l.strip()]


class RunFolderCase:
  """For a test class whose setUpClass makes `cls.dir` (e.g. with tiny_run_folder) and sets
  `cls.ckpt`: removes the folder, names paths in it, runs ddrm-restore, checks error lines."""

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.dir, ignore_errors=True)
    super().tearDownClass()

  def p(self, *parts):
    return os.path.join(self.dir, *parts)

  def run_ok(self, argv, out):
    """ddrm-restore on `cls.ckpt` with FAST into `out` under the folder: (stdout, stderr lines)."""
    status, stdout, err = _run(['--ckpt', self.ckpt, '--output', self.p(out)] + FAST + argv)
    self.assertEqual(status, 0, err)
    return stdout, err

  def assert_one_line_error(self, status, err, pattern):
    self.assertEqual(status, 1)
    self.assertLen(err, 1, msg=f'expected one line on stderr, got {err}')
    self.assertRegex(err[0], '^ddrm-restore: error: .*(?:' + pattern + ')')
    for advice in ('Traceback', 'allow_pickle', 'weights_only'):
      self.assertNotIn(advice, err[0])


class RestoreCliTest(RunFolderCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = tempfile.mkdtemp()
    d = cls.dir
    cls.ckpt = os.path.join(d, 'ckpt')
    checkpoints.save_checkpoint(cls.ckpt, _random_params(TINY), TINY)
    rng = np.random.default_rng(0)
    cls.imgs = os.path.join(d, 'imgs')
    os.makedirs(cls.imgs)
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(
        os.path.join(cls.imgs, 'a.png'))
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(
        os.path.join(cls.imgs, 'b.png'))  # Grayscale: converted to RGB.
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(
        os.path.join(cls.imgs, 'c.jpg'), quality=95)
    with open(os.path.join(cls.imgs, 'broken.png'), 'wb') as fh:
      fh.write(b'\x89PNG\r\n\x1a\n truncated')
    cls.broken = os.path.join(cls.imgs, 'broken.png')
    cls.good = os.path.join(cls.imgs, 'a.png')
    big = os.path.join(d, 'big.png')
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(big)
    cls.big = big
    Image.fromarray(rng.integers(0, 256, (17, 21, 3), dtype=np.uint8)).save(
        os.path.join(d, 'odd.png'))
    cls.low = os.path.join(d, 'low.png')  # A "real" low-resolution photo, 10x10.
    Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(cls.low)
    # Bad side files.
    cls.file_ckpt = os.path.join(d, 'model.pt')
    with open(cls.file_ckpt, 'wb') as fh:
      fh.write(b'PK\x03\x04 torch zip')
    cls.empty_dir = os.path.join(d, 'not_a_ckpt')
    os.makedirs(cls.empty_dir)
    cls.torch_family = os.path.join(d, 'torch_family')
    os.makedirs(cls.torch_family)
    with open(os.path.join(cls.torch_family, 'config.json'), 'w') as fh:
      json.dump({'family': 'torch'}, fh)
    cls.mismatch = os.path.join(d, 'mismatch')  # Config says ch=16, params are for ch=8.
    shutil.copytree(cls.ckpt, cls.mismatch)
    with open(os.path.join(cls.mismatch, 'config.json'), 'w') as fh:
      json.dump(ddpm_unet.DDPMConfig(image_size=SIZE, ch=16, ch_mult=(1, 2), num_res_blocks=1,
                                     attn_resolutions=(8,), num_groups=4).to_dict(), fh)
    np.save(os.path.join(d, 'k3d.npy'), np.ones((3, 3, 3)))
    np.save(os.path.join(d, 'kzero.npy'), np.array([1.0, -1.0]))
    with open(os.path.join(d, 'knpy.npy'), 'w') as fh:
      fh.write('not numpy')
    np.save(os.path.join(d, 'mask8.npy'), np.ones((8, 8)))
    np.save(os.path.join(d, 'mask0.npy'), np.zeros((SIZE, SIZE)))
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(os.path.join(d, 'mask0.png'))
    np.save(os.path.join(d, 'perm_bad.npy'), np.zeros(SIZE * SIZE, np.int64))
    np.save(os.path.join(d, 'objects.npy'), np.array([{'a': 1}], dtype=object),
            allow_pickle=True)
    with open(os.path.join(d, 'labels.csv'), 'w') as fh:
      fh.write('file,label\na.png,1\n')
    cls.existing = os.path.join(d, 'existing')
    os.makedirs(cls.existing)

  # -- paper protocol -----------------------------------------------------------------------------

  def test_paper_protocol_files_metrics_and_batch_size_independence(self):
    runs = self.p('runs')
    args = ['--ckpt', self.ckpt, '--input', self.imgs, '--deg', 'sr2', '--sigma_y', '0.1',
            '--num_samples', '2', '--seed', '3'] + FAST
    with mock.patch.object(pipeline_files, 'RUNS_DIR', runs):
      status, stdout, err = _run(args + ['--batch_size', '2'])
    # The unreadable file is reported on one line, the others are written, the status is 1.
    self.assertEqual(status, 1)
    self.assertLen([l for l in err if 'broken.png' in l and 'cannot read image' in l], 1)
    self.assertTrue(err[-1].startswith('ddrm-restore: error: 1 of 4 inputs failed'), err)
    self.assertIn('PSNR', stdout)
    out = os.path.join(runs, '001_sr2')  # The default: a new numbered folder.
    self.assertTrue(os.path.isdir(out), os.listdir(runs))
    stems = ['a', 'b', 'c']
    for sub in ('original', 'degraded', 'baseline', 'restored', 'std'):
      self.assertEqual(sorted(os.listdir(os.path.join(out, sub))), [s + '.png' for s in stems])
    self.assertEqual(sorted(os.listdir(os.path.join(out, 'samples'))),
                     [f'{s}_{k}.png' for s in stems for k in range(2)])
    self.assertTrue(os.path.isfile(os.path.join(out, 'grid.png')))
    # Grayscale input was converted to RGB; the two posterior samples differ.
    b = _png(os.path.join(out, 'original', 'b.png'))
    self.assertEqual(b.shape, (SIZE, SIZE, 3))
    np.testing.assert_array_equal(b[..., 0], b[..., 2])
    self.assertGreater(np.abs(_png(os.path.join(out, 'samples', 'a_0.png'))
                              - _png(os.path.join(out, 'samples', 'a_1.png'))).max(), 0.01)
    # The degraded image is the 8x8 measurement shown at 16x16 in 2x2 blocks.
    deg = _png(os.path.join(out, 'degraded', 'a.png'))
    np.testing.assert_array_equal(deg[0::2, 0::2], deg[1::2, 1::2])

    with open(os.path.join(out, 'metrics.json')) as fh:
      m = json.load(fh)
    fields = {'psnr', 'ssim', 'baseline_psnr', 'baseline_ssim', 'sample_psnr', 'sample_ssim'}
    self.assertEqual(set(m), {'mean', 'images'})
    self.assertEqual(set(m['mean']), fields)
    self.assertEqual([r['file'] for r in m['images']],
                     [os.path.join(self.imgs, n) for n in ('a.png', 'b.png', 'c.jpg')])
    for r, s in zip(m['images'], stems):
      self.assertEqual(set(r), fields | {'file', 'name', 'outputs'})
      # metrics.json names the files it describes.
      self.assertEqual(r['name'], s)
      self.assertEqual(r['outputs']['restored'], f'restored/{s}.png')
      self.assertEqual(r['outputs']['samples'], [f'samples/{s}_{k}.png' for k in range(2)])
    for k in fields:
      self.assertAlmostEqual(m['mean'][k], np.mean([r[k] for r in m['images']]), places=5)
    # The numbers agree with the written PNGs (8-bit quantisation: a few hundredths of a dB).
    for r, s in zip(m['images'], stems):
      orig = _png(os.path.join(out, 'original', s + '.png'))
      for key, sub in (('psnr', 'restored'), ('baseline_psnr', 'baseline')):
        img = _png(os.path.join(out, sub, s + '.png'))
        self.assertAlmostEqual(r[key], -10 * np.log10(np.mean((img - orig)**2)), delta=0.05)
      ssim = float(metrics.ssim(_png(os.path.join(out, 'restored', s + '.png')), orig))
      self.assertAlmostEqual(r['ssim'], ssim, delta=0.01)
      single = [-10 * np.log10(np.mean((_png(os.path.join(out, 'samples', f'{s}_{k}.png'))
                                        - orig)**2)) for k in range(2)]
      self.assertAlmostEqual(r['sample_psnr'], np.mean(single), delta=0.05)

    # Same seed, another batch size (into an existing empty folder with --overwrite): the same
    # files (byte for byte: test_default_run_same_bytes_whatever_the_batch_size).
    out3 = self.p('existing_b3')
    os.makedirs(out3)
    status3, _, _ = _run(args + ['--batch_size', '1', '--output', out3, '--overwrite'])
    self.assertEqual(status3, 1)
    for sub in ('original', 'degraded', 'baseline', 'restored', 'std', 'samples'):
      for name in os.listdir(os.path.join(out, sub)):
        np.testing.assert_array_equal(_png(os.path.join(out3, sub, name)),
                                      _png(os.path.join(out, sub, name)), err_msg=f'{sub}/{name}')
    with open(os.path.join(out3, 'metrics.json')) as fh:
      m3 = json.load(fh)
    for r, r3 in zip(m['images'], m3['images']):
      for k in fields:
        self.assertAlmostEqual(r[k], r3[k], places=4)

  # -- nothing lost (issue 11) --------------------------------------------------------------------

  def _tree(self, root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, fs in os.walk(root) for f in fs)

  def test_images_per_device_batches_the_network_and_agrees_to_rounding(self):
    good = [os.path.join(self.imgs, n) for n in ('a.png', 'b.png', 'c.jpg')]
    listing = self.p('three.txt')
    with open(listing, 'w') as fh:
      fh.write('\n'.join(good) + '\n')
    common = ['--ckpt', self.ckpt, '--input', listing, '--deg', 'sr2', '--sigma_y', '0.1',
              '--seed', '5'] + FAST
    status, _, err = _run(common + ['--output', self.p('one_each')])
    self.assertEqual(status, 0, err)
    status, _, err = _run(common + ['--output', self.p('two_each'), '--images_per_device', '2',
                                    '--batch_size', '3'])
    self.assertEqual(status, 0, err)
    compiled = [l for l in err if 'compiled the restore step' in l]
    self.assertLen(compiled, 1)
    self.assertIn('(2 rows on 1 device: 2 images x 1 samples per network batch', compiled[0])
    for stem in ('a', 'b', 'c'):
      one = _png(os.path.join(self.p('one_each'), 'restored', stem + '.png'))
      two = _png(os.path.join(self.p('two_each'), 'restored', stem + '.png'))
      # The same chains (keys by image index) in another batch: equal to float rounding, so at
      # most one 8-bit level apart.
      self.assertLessEqual(np.abs(one - two).max(), 1.0 / 255 + 1e-6)

  def test_same_file_names_in_different_folders_never_collide(self):
    src = self.p('dup_inputs')
    rng = np.random.default_rng(7)
    for rel in ('x/a.png', 'y/a.png', 'x/a_2.png', 'x/photo [1].png'):
      os.makedirs(os.path.dirname(os.path.join(src, rel)), exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(
          os.path.join(src, rel))
    out = self.p('dup_out')
    status, _, err = _run(['--ckpt', self.ckpt, '--input', os.path.join(src, '*', '*.png'),
                           '--deg', 'sr2', '--num_samples', '2', '--output', out] + FAST)
    self.assertEqual(status, 0, err)
    with open(os.path.join(out, 'metrics.json')) as fh:
      images = json.load(fh)['images']
    self.assertLen(images, 4)
    written = [p for rec in images for v in rec['outputs'].values()
               for p in (v if isinstance(v, list) else [v])]
    self.assertLen(set(written), len(written))  # every image has its own files
    self.assertEqual(sorted(written), sorted(p for p in self._tree(out)
                                             if '/' in p and not p.startswith('progress/')))
    for rec in images:  # ... and they are its own: the original is the input file itself
      np.testing.assert_array_equal(
          _png(os.path.join(out, rec['outputs']['original'])), _png(rec['file']))
    self.assertEqual(sorted(rec['name'] for rec in images),
                     ['x/a', 'x/a_2', 'x/photo [1]', 'y/a'])
    # A file whose name holds glob characters is that file, not a pattern.
    status, stdout, err = _run(['--ckpt', self.ckpt, '--input',
                                os.path.join(src, 'x', 'photo [1].png'), '--deg', 'sr2',
                                '--output', self.p('glob_out')] + FAST)
    self.assertEqual(status, 0, err)
    self.assertIn('restored 1 of 1', stdout)

  @parameterized.named_parameters(('ctrl_c', 'int'), ('sigterm', 'term'))
  def test_interrupted_run_keeps_what_is_done(self, how):
    out = self.p(f'interrupted_{how}')
    real = runner.outputs.write_outputs
    calls = []

    def write_then_interrupt(*args):
      calls.append(1)
      if len(calls) == 2:  # the second image: interrupted while its files are written
        if how == 'term':
          os.kill(os.getpid(), signal.SIGTERM)
        raise KeyboardInterrupt
      real(*args)

    with mock.patch.object(runner.outputs, 'write_outputs', write_then_interrupt):
      status, _, err = _run(['--ckpt', self.ckpt, '--input', self.imgs, '--deg', 'sr2',
                             '--batch_size', '1', '--output', out] + FAST)
    self.assertEqual(status, 143 if how == 'term' else 130)
    self.assertTrue(err[-1].startswith('ddrm-restore: error: interrupted: 1 of 4 images '
                                       'restored'), err)
    with open(os.path.join(out, 'metrics.json')) as fh:
      m = json.load(fh)
    self.assertEqual([r['name'] for r in m['images']], ['a'])
    with open(os.path.join(out, 'run.json')) as fh:
      info = json.load(fh)
    self.assertEqual((info['status'], info['images_restored']), ('interrupted', 1))
    # progress/: the journal that --resume reads.
    self.assertEqual(self._tree(out), ['baseline/a.png', 'degraded/a.png', 'grid.png',
                                       'metrics.json', 'original/a.png',
                                       'progress/process-00000.jsonl', 'restored/a.png',
                                       'run.json'])

  def test_overwrite_replaces_an_earlier_run_only(self):
    out = self.p('rerun')
    base = ['--ckpt', self.ckpt, '--deg', 'sr2', '--output', out] + FAST
    status, _, err = _run(base + ['--input', self.imgs, '--num_samples', '2'])
    self.assertEqual(status, 1, err)  # broken.png
    with open(os.path.join(out, 'notes.txt'), 'w') as fh:
      fh.write('mine')
    status, _, err = _run(base + ['--input', self.good, '--overwrite'])
    self.assertEqual(status, 0, err)
    # Only the new run's files (and the user's note): no samples/std/b/c of the earlier run.
    self.assertEqual(self._tree(out), ['baseline/a.png', 'degraded/a.png', 'grid.png',
                                       'metrics.json', 'notes.txt', 'original/a.png',
                                       'progress/process-00000.jsonl', 'restored/a.png',
                                       'run.json'])
    # A folder that is not an earlier run is refused, untouched.
    mine = self.p('my_photos')
    os.makedirs(mine)
    shutil.copy(self.good, mine)
    status, _, err = _run(base[:-len(FAST) - 1] + [mine, '--input', self.good, '--overwrite'])
    self.assert_one_line_error(status, err, r'holds files but no earlier ddrm-restore run')
    self.assertEqual(os.listdir(mine), ['a.png'])

  def test_unwritable_output_fails_before_the_model_loads(self):
    with mock.patch.object(checkpoints, 'load_model', side_effect=AssertionError('loaded')):
      status, _, err = _run(['--ckpt', self.ckpt, '--input', self.good, '--output',
                             os.path.join(self.file_ckpt, 'out')] + FAST)
    self.assert_one_line_error(status, err, r'--output .*model.pt/out: cannot write there')

  def test_non_finite_restoration_is_an_error_naming_the_image(self):
    config = checkpoints.load_config(self.ckpt)
    nan_model = (lambda params, x, t: x * params, jnp.float32(np.nan), config)
    out = self.p('nan_out')
    with mock.patch.object(checkpoints, 'load_model', return_value=nan_model):
      status, _, err = _run(['--ckpt', self.ckpt, '--input', self.good, '--deg', 'sr2',
                             '--output', out] + FAST)
    err = [l for l in err if not l.startswith('ddrm-restore: compiled')]
    self.assert_one_line_error(status, err, r'a.png: the restoration has non-finite values')
    self.assertFalse(os.path.exists(out))

  # -- real photos --------------------------------------------------------------------------------

  def test_measurement_mode_low_resolution_photo(self):
    out = self.p('meas')
    status, stdout, err = _run(['--ckpt', self.ckpt, '--input', self.low, '--deg', 'sr2',
                                '--measurement', '--resize', 'resize', '--sigma_y', '0.02',
                                '--output', out] + FAST)
    self.assertEqual(status, 0, err)
    self.assertIn('restored 1 of 1', stdout)
    self.assertEqual(sorted(os.listdir(out)),
                     ['degraded', 'grid.png', 'progress', 'restored', 'run.json'])
    restored = _png(os.path.join(out, 'restored', 'low.png'))
    self.assertEqual(restored.shape, (SIZE, SIZE, 3))
    # The 10x10 photo, resized to the 8x8 measurement, shown in 2x2 blocks.
    photo = np.asarray(Image.open(self.low), np.float32) / 127.5 - 1.0
    small = np.stack([np.asarray(Image.fromarray(photo[..., c]).resize(
        (8, 8), Image.Resampling.BICUBIC)) for c in range(3)], -1)
    expected = np.clip((np.clip(small, -1, 1) + 1) / 2, 0, 1).repeat(2, 0).repeat(2, 1)
    np.testing.assert_allclose(_png(os.path.join(out, 'degraded', 'low.png')), expected,
                               atol=0.5 / 255 + 1e-6)

  # -- any size by tiles (--resize=tile) -----------------------------------------------------------

  def _images(self, folder, sizes, seed):
    """Random RGB PNGs {name: (h, w)} in a new folder; returns its path."""
    path = self.p(folder)
    os.makedirs(path)
    rng = np.random.default_rng(seed)
    for name, size in sizes.items():
      Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(
          os.path.join(path, name + '.png'))
    return path

  def test_tiles_paper_protocol_mixed_sizes(self):
    # Sizes that are not multiples of the 16x16 tile, non-square, one too small, two alike.
    sizes = {'a': (16, 16), 'b': (20, 27), 'c': (27, 20), 'd': (20, 27), 'e': (10, 30)}
    inputs = self._images('tile_inputs', sizes, 5)
    out = self.p('tile_out')
    args = ['--ckpt', self.ckpt, '--deg', 'deno', '--sigma_y', '0.1', '--steps=2', '--seed=1']
    status, stdout, err = _run(args + ['--input', inputs, '--resize', 'tile', '--output', out,
                                       '--tile_overlap', '5', '--tiles_per_call', '3',
                                       '--batch_size', '2'])
    self.assertEqual(status, 1)
    self.assertIn('restored 4 of 5', stdout)
    self.assertEqual([l for l in err if 'e.png' in l], [
        f'ddrm-restore: error: {inputs}/e.png: size 10x30 is smaller than the network\'s 16x16 '
        'tiles (use --resize=resize or --resize=center_crop)'])
    # One compilation per size, in order of appearance.
    compiled = [l for l in err if 'compiled the restore step' in l]
    self.assertLen(compiled, 3)
    for line, what in zip(compiled, ('per network batch, 16x16x3 images by 1 tile of',
                                     'per network batch, 20x27x3 images by 4 tiles of',
                                     'per network batch, 27x20x3 images by 4 tiles of')):
      self.assertIn(what, line)
    for name in 'abcd':
      for sub in ('original', 'degraded', 'baseline', 'restored'):
        self.assertEqual(_png(os.path.join(out, sub, name + '.png')).shape, sizes[name] + (3,))
    with open(os.path.join(out, 'metrics.json')) as fh:
      m = json.load(fh)
    self.assertEqual([os.path.basename(r['file']) for r in m['images']],
                     ['a.png', 'b.png', 'c.png', 'd.png'])  # Input order, not size order.
    self.assertGreater(m['mean']['psnr'], 0)
    with open(os.path.join(out, 'run.json')) as fh:
      info = json.load(fh)
    self.assertEqual(info['failed'], [os.path.join(inputs, 'e.png')])
    tiles = info['tiling']
    self.assertEqual((tiles['tile'], tiles['overlap'], tiles['tiles_per_call']), (16, 5, 3))
    self.assertEqual({os.path.basename(k): (tuple(v['shape']), v['tiles'])
                      for k, v in tiles['images'].items()},
                     {'a.png': ((16, 16, 3), 1), 'b.png': ((20, 27, 3), 4),
                      'c.png': ((27, 20, 3), 4), 'd.png': ((20, 27, 3), 4)})
    # An image of one tile is restored as without tiles (same key: same index in the run).
    plain = self.p('tile_plain')
    status, _, err = _run(args + ['--input', os.path.join(inputs, 'a.png'), '--output', plain])
    self.assertEqual(status, 0, err)
    for sub in ('degraded', 'restored'):
      np.testing.assert_array_equal(_png(os.path.join(out, sub, 'a.png')),
                                    _png(os.path.join(plain, sub, 'a.png')))

  def test_tiles_measurement_mode_restores_at_the_implied_size(self):
    inputs = self._images('tile_photos', {'p': (9, 11), 'q': (13, 7)}, 6)
    out = self.p('tile_meas')
    status, stdout, err = _run(['--ckpt', self.ckpt, '--input', inputs, '--deg', 'sr2',
                                '--measurement', '--resize', 'tile', '--output', out,
                                '--steps=2'])
    self.assertEqual(status, 1, err)
    self.assertIn('restored 1 of 2', stdout)
    self.assertRegex(err[0], r'q.png: size 13x7 \(restored 26x14\) is smaller than the '
                     r"network's 16x16 tiles")
    restored = _png(os.path.join(out, 'restored', 'p.png'))
    self.assertEqual(restored.shape, (18, 22, 3))  # 9x11 photo, 2x super-resolved.
    # The photo is the measurement: shown in 2x2 pixel blocks.
    photo = np.asarray(Image.open(os.path.join(inputs, 'p.png')), np.float64) / 255.0
    degraded = _png(os.path.join(out, 'degraded', 'p.png'))
    np.testing.assert_allclose(degraded, photo.repeat(2, 0).repeat(2, 1), atol=1 / 255 + 1e-6)
    with open(os.path.join(out, 'run.json')) as fh:
      self.assertEqual(json.load(fh)['tiling']['images'],
                       {os.path.join(inputs, 'p.png'): {'shape': [18, 22, 3], 'tiles': 4}})

  # -- class-conditional network with classifier guidance ------------------------------------------

  def test_class_conditional_with_classifier_guidance(self):
    adm = dict(image_size=SIZE, model_channels=32, num_res_blocks=1, channel_mult=(1, 2),
               attention_resolutions=(8,), num_head_channels=16)
    cc = adm_unet.ADMConfig(num_classes=5, **adm)
    clf = adm_unet.ClassifierConfig(out_channels=5, **adm)
    cc_dir, clf_dir = self.p('adm_cc'), self.p('adm_clf')
    checkpoints.save_checkpoint(cc_dir, _random_params(cc, 1), cc)
    checkpoints.save_checkpoint(clf_dir, _random_params(clf, 2), clf)
    inputs = self.p('cc_inputs')
    os.makedirs(inputs)
    for name in ('a.png', 'b.png'):
      shutil.copy(os.path.join(self.imgs, name), inputs)
    labels = self.p('cc_labels.csv')
    with open(labels, 'w') as fh:
      fh.write('a.png,1\nb.png,4\n')
    base = ['--ckpt', cc_dir, '--input', inputs, '--deg', 'sr2', '--steps=2']
    # Labels are required, and must fit the classes.
    status, _, err = _run(base)
    self.assert_one_line_error(status, err, r'this network needs class labels')
    status, _, err = _run(base + ['--class_label', '5'])
    self.assert_one_line_error(status, err, r'class labels must be in \[0, 5\), got \[5\]')
    status, _, err = _run(base + ['--class_labels', labels, '--classifier_ckpt', self.ckpt])
    self.assert_one_line_error(status, err, r"is not a classifier \(family 'ddpm'\)")
    status, _, err = _run(['--ckpt', clf_dir, '--input', inputs])
    self.assert_one_line_error(status, err, r'is a classifier; pass it as --classifier_ckpt')
    out = self.p('cc_out')
    status, stdout, err = _run(base + ['--class_labels', labels, '--classifier_ckpt', clf_dir,
                                       '--classifier_scale', '2', '--output', out])
    self.assertEqual(status, 0, err)
    self.assertIn('restored 2 of 2', stdout)
    self.assertEqual(sorted(os.listdir(os.path.join(out, 'restored'))), ['a.png', 'b.png'])
    with open(os.path.join(out, 'metrics.json')) as fh:
      self.assertLen(json.load(fh)['images'], 2)

  # -- bad inputs ---------------------------------------------------------------------------------

  @parameterized.named_parameters(
      ('unknown_deg', ['--deg', 'sr3'], r"unknown --deg 'sr3'; known: deno, inp"),
      ('unknown_flag', ['--sigma', '0.1'], r'sigma'),
      ('sigma_y_range', ['--sigma_y', '2'], r'--sigma_y must be in \[0, 1\]'),
      ('missing_ckpt', ['--ckpt', '{dir}/nope'], r'--ckpt .*nope: no such checkpoint'),
      ('torch_file_ckpt', ['--ckpt', '{dir}/model.pt'], r'is a file, not a ddrm-jax checkpoint'),
      ('foreign_dir_ckpt', ['--ckpt', '{dir}/not_a_ckpt'], r'config.json is missing'),
      ('foreign_family', ['--ckpt', '{dir}/torch_family'], r"unknown model family 'torch'"),
      ('params_mismatch', ['--ckpt', '{dir}/mismatch'], r'do not match'),
      ('config_disagrees', ['--config', 'celeba_hq'], r'--config celeba_hq disagrees.*ch'),
      ('size_mismatch', ['--input', '{dir}/big.png'],
       r'big.png: size 20x20 differs from the expected 16x16 \(use --resize'),
      ('unreadable_image', ['--input', '{dir}/imgs/broken.png'], r'broken.png: cannot read image'),
      ('missing_input', ['--input', '{dir}/none/*.png'], r'no file matches'),
      ('existing_output', ['--output', '{dir}/existing'], r'existing already exists; pass '
       r'--overwrite'),
      ('kernel_without_blur', ['--kernel', '{dir}/k3d.npy'], r'--kernel is for --deg blur'),
      ('blur_without_kernel', ['--deg', 'blur'], r'--deg blur needs --kernel'),
      ('kernel_3d', ['--deg', 'blur', '--kernel', '{dir}/k3d.npy'],
       r'expected a 1-D kernel or shape \(2, L\), got \(3, 3, 3\)'),
      ('kernel_not_npy', ['--deg', 'blur', '--kernel', '{dir}/knpy.npy'], r'not a readable .npy'),
      ('kernel_missing', ['--deg', 'blur', '--kernel', '{dir}/k.npy'], r'k.npy: no such file'),
      ('kernel_zero_sum', ['--deg', 'blur', '--kernel', '{dir}/kzero.npy'], r'sum to 0'),
      ('mask_size', ['--deg', 'inp', '--mask', '{dir}/mask8.npy'],
       r'mask8.npy: is 8x8, the images are 16x16'),
      ('mask_empty_npy', ['--deg', 'inp', '--mask', '{dir}/mask0.npy'], r'keeps no pixel'),
      ('mask_empty_png', ['--deg', 'inp', '--mask', '{dir}/mask0.png'], r'keeps no pixel'),
      ('mask_unreadable', ['--deg', 'inp', '--mask', '{dir}/imgs/broken.png'],
       r'cannot read image'),
      ('mask_wrong_deg', ['--deg', 'sr2', '--mask', '{dir}/mask0.png'], r'--mask is for --deg inp'),
      ('perm_not_permutation', ['--deg', 'cs4', '--perm', '{dir}/perm_bad.npy'],
       r'--perm .*perm_bad.npy for 16x16 images: perm must be a permutation'),
      ('measurement_cs', ['--deg', 'cs2', '--measurement'], r'does not support --deg cs2'),
      ('measurement_inp_without_mask', ['--deg', 'inp', '--measurement'], r'needs --mask'),
      ('labels_unconditional', ['--class_label', '3'], r'class labels need a class-conditional'),
      ('labels_both', ['--class_label', '3', '--class_labels', '{dir}/labels.csv'],
       r'--class_label or --class_labels, not both'),
      ('classifier_missing', ['--classifier_ckpt', '{dir}/nope', '--class_label', '1'],
       r'--classifier_ckpt .*nope: no such'),
      ('classifier_is_ddpm', ['--classifier_ckpt', '{dir}/ckpt', '--class_label', '1'],
       r"is not a classifier \(family 'ddpm'\)"),
      ('positional', ['extra'], r'unexpected arguments: extra'),
      ('images_per_device_zero', ['--images_per_device', '0'],
       r'--images_per_device must be >= 1, got 0'),
      # Issue 11, item 8.
      ('seed_2_32', ['--seed', str(2**32)], r'--seed must be in \[0, 2\^32\), got 4294967296'),
      ('seed_negative', ['--seed', '-1'], r'--seed must be in \[0, 2\^32\), got -1'),
      ('empty_input', ['--input='], r'--input is empty \(leave the flag out for its default\)'),
      ('empty_ckpt', ['--ckpt='], r'--ckpt is empty'),
      ('empty_output', ['--output', ''], r'--output is empty'),
      ('perm_text_file', ['--deg', 'cs4', '--perm', '{dir}/knpy.npy'],
       r'--perm .*knpy.npy: not a readable .npy array \(no NumPy header; save it with numpy.save'),
      ('perm_objects', ['--deg', 'cs4', '--perm', '{dir}/objects.npy'],
       r'objects.npy: not a readable .npy array \(it holds Python objects, not numbers\)'),
      ('output_unwritable', ['--output', '{dir}/model.pt/out'],
       r'--output .*model.pt/out: cannot write there'),
      ('input_folder_as_file', ['--input', '{dir}/imgs/a.png/x.png'], r'no such file or folder'),
      ('tile_overlap_without_tile', ['--tile_overlap', '4'],
       r'--tile_overlap is for --resize=tile'),
      ('tiles_per_call_without_tile', ['--tiles_per_call', '4'],
       r'--tiles_per_call is for --resize=tile'),
      ('tile_overlap_tile', ['--resize', 'tile', '--tile_overlap', '16'],
       r"--tile_overlap must be in \[0, 16\) pixels \(the network's tiles are 16x16\), got 16"),
      ('tile_overlap_negative', ['--resize', 'tile', '--tile_overlap', '-1'],
       r'--tile_overlap must be in \[0, 16\) pixels .*got -1'),
      ('tiles_per_call_zero', ['--resize', 'tile', '--tiles_per_call', '0'],
       r'--tiles_per_call must be >= 1, got 0'),
      ('tile_too_small', ['--resize', 'tile', '--input', '{dir}/low.png'],
       r"low.png: size 10x10 is smaller than the network's 16x16 tiles \(use --resize=resize"),
      ('tile_cs_size', ['--resize', 'tile', '--deg', 'cs2', '--input', '{dir}/big.png'],
       r'big.png: --deg cs2 for 20x20 images: '),
      ('tile_sr_size', ['--resize', 'tile', '--input', '{dir}/odd.png'],
       r'odd.png: --deg sr2 for 17x21 images: .*factor 2'),
      ('tile_mask_size', ['--resize', 'tile', '--deg', 'inp', '--mask', '{dir}/mask8.npy',
                          '--input', '{dir}/big.png'],
       r'big.png: --mask .*mask8.npy: is 8x8, the images are 20x20'),
  )
  def test_bad_input_one_line(self, extra, pattern):
    argv = ['--ckpt', self.ckpt, '--input', self.good, '--deg', 'sr2'] + FAST
    argv += [a.replace('{dir}', self.dir) for a in extra]
    status, _, err = _run(argv)
    self.assert_one_line_error(status, err, pattern)

  def test_missing_bundled_prior(self):
    with mock.patch.object(pipeline_plan, 'BUNDLED_PRIOR', self.p('no_prior')):
      status, _, err = _run(['--input', self.good])
    self.assert_one_line_error(status, err, r'bundled prior is not built yet')

  def test_subprocess_exit_status(self):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    for argv, pattern in ((['--deg', 'nope', '--ckpt', self.ckpt], r"unknown --deg 'nope'"),
                          (['--ckpt', self.p('model.pt')], r'is a file')):
      proc = subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'restore.py')] + argv,
                            capture_output=True, text=True, env=env, timeout=120, check=False)
      lines = [l for l in proc.stderr.splitlines() if l.strip()]
      self.assert_one_line_error(proc.returncode, lines, pattern)

  def test_runs_without_torch(self):
    """`pip install -e .` (no torch) is enough for ddrm-restore: nothing it imports needs it."""
    out = self.p('no_torch')
    script = ('import sys; sys.modules["torch"] = None\n'
              'from ddrm_jax.cli import restore\n'
              f'status = restore.main(["ddrm-restore", "--ckpt", {self.ckpt!r}, "--input", '
              f'{self.good!r}, "--deg", "sr2", "--steps", "1", "--output", {out!r}])\n'
              'assert sys.modules["torch"] is None\n'
              'sys.exit(status)\n')
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr)
    self.assertTrue(os.path.isfile(os.path.join(out, 'restored', 'a.png')))

  def test_quickstart_commands(self):
    """The Quickstart: restoring installs no torch; CI runs the README's install and test."""
    with open(os.path.join(REPO, 'README.md')) as fh:
      readme = fh.read()
    block = readme.split('## Quickstart', 1)[1].split('```sh\n', 1)[1].split('```', 1)[0]
    first, second = block.strip().splitlines()
    self.assertIn('pip install -e . && ddrm-restore', first)
    self.assertNotIn('torch', first)
    with open(os.path.join(REPO, '.ci', 'run')) as fh:
      ci = [l.strip().replace('python -m pip', 'pip') for l in fh if not l.startswith('#')]
    steps = [c.strip() for c in second.split('&&')][1:]  # after activating the venv
    self.assertEqual(steps, [l for l in ci if l.split()[:1] in (['pip'], ['python'])
                             and 'upgrade' not in l and 'venv' not in l], ci)

  def test_new_run_dir_numbers(self):
    base = self.p('numbered')
    os.makedirs(os.path.join(base, '007_sr4'))
    os.makedirs(os.path.join(base, 'notes'))
    self.assertEqual(folder.new_run_dir(base, 'deno'), os.path.join(base, '008_deno'))
    self.assertEqual(folder.new_run_dir(base, 'deno'), os.path.join(base, '009_deno'))

  def test_class_labels_csv(self):
    files = ['x/a.png', 'y/b.jpg']
    path = self.p('lab.csv')
    with open(path, 'w') as fh:
      fh.write('file,label\na.png,4\nb,7\n')
    self.assertEqual(side_files.load_class_labels(path, files), [4, 7])
    with open(path, 'w') as fh:
      fh.write('a.png,4\n')
    with self.assertRaisesRegex(SettingError, 'no label for b.jpg'):
      side_files.load_class_labels(path, files)
    # A first row that names an input is data, never a header (issue 11, item 8).
    with open(path, 'w') as fh:
      fh.write('a.png,dog\nb.jpg,7\n')
    with self.assertRaisesRegex(SettingError, "line 1: label 'dog' of 'a.png' is not an int"):
      side_files.load_class_labels(path, files)

  def test_out_of_memory_names_the_flags_to_lower(self):
    class _Step:
      def lower(self, *args):
        return self

      def compile(self):
        def run(*args):
          raise RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9 GiB')
        return run

    with mock.patch.object(restore, 'make_restore_step', return_value=_Step()):
      status, _, err = _run(['--ckpt', self.ckpt, '--input', self.good, '--deg', 'sr2',
                             '--num_samples', '3', '--output', self.p('oom')] + FAST)
    err = [l for l in err if not l.startswith('ddrm-restore: compiled')]
    self.assert_one_line_error(status, err, r'out of memory restoring 16x16x3 images with 3 '
                               r'samples each, 1 at a time: lower --num_samples \(now 3\) or '
                               r'--batch_size \(now 4\)')
    self.assertFalse(os.path.exists(self.p('oom')))


class RestoreFunctionsTest(absltest.TestCase):
  """ddrm_jax/restore.py with cheap analytic networks."""

  def test_classifier_guidance_matches_softmax_gradient(self):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2 * 2 * 1, 3))
    x = rng.normal(size=(2, 2, 2, 1))
    labels = np.array([2, 0])
    clf = lambda x_t, t: x_t.reshape(x_t.shape[0], -1) @ jnp.asarray(w, jnp.float32)
    got = sampler.classifier_guidance(clf, jnp.asarray(labels), 0.5)(
        jnp.asarray(x, jnp.float32), jnp.zeros(2, jnp.int32))
    for b in range(2):
      logits = x[b].reshape(-1) @ w
      p = np.exp(logits - logits.max())
      p /= p.sum()
      grad = w[:, labels[b]] - w @ p  # d/dx log softmax(x W)[c].
      np.testing.assert_allclose(np.asarray(got[b]).reshape(-1), 0.5 * grad, rtol=1e-4,
                                 atol=1e-6)

  def test_result_depends_only_on_the_image_key(self):
    op = operators.make('sr2', (4, 4, 1))
    settings = restore.BatchSettings(deg='sr2', steps=2, sigma_y=0.2, num_samples=2)
    net = lambda params, x, t: params * x
    step = restore.make_restore_step(net, settings)
    x = jax.random.uniform(jax.random.key(1), (3, 4, 4, 1), minval=-1, maxval=1)
    keys = restore.index_keys(5, [0, 1, 2])
    full = step(jnp.float32(0.3), None, op, x, keys, None)
    # Image 2 first, next to other neighbours (one compilation: same batch size).
    moved = step(jnp.float32(0.3), None, op, x[::-1], keys[::-1], None)
    for k in ('y', 'samples', 'restored', 'std', 'psnr', 'baseline_psnr'):
      np.testing.assert_array_equal(np.asarray(full[k][2]), np.asarray(moved[k][0]), err_msg=k)
    # Keys: fold_in(key(seed), i).
    np.testing.assert_array_equal(
        jax.random.key_data(keys[1]), jax.random.key_data(jax.random.fold_in(jax.random.key(5), 1)))
    # Two images, two samples each: all different draws.
    s = np.asarray(full['samples']).reshape(6, -1)
    self.assertEqual(len({row.tobytes() for row in s}), 6)
    # Mean / population std of the samples.
    np.testing.assert_allclose(full['restored'], np.asarray(full['samples']).mean(1), atol=1e-6)
    np.testing.assert_allclose(full['std'], np.asarray(full['samples']).std(1), atol=1e-6)

  def test_measurement_mode_applies_h_to_photos(self):
    mask = np.ones((4, 4), np.float32)
    mask[1, 2] = mask[3, 0] = 0
    op = operators.make('inp', (4, 4, 3), mask=mask)
    settings = restore.BatchSettings(deg='inp', steps=1, sigma_y=0.0, measurement=True, apply_h=True)
    x = np.random.default_rng(2).uniform(-1, 1, (1, 4, 4, 3)).astype(np.float32)
    out = restore.make_restore_step(lambda p, x, t: 0 * x, settings)(
        None, None, op, x, restore.index_keys(0, [0]), None)
    np.testing.assert_allclose(out['y'][0], x[0] * mask[..., None], atol=1e-6)
    self.assertNotIn('psnr', out)
    # Noiseless, the observed pixels end exactly on y (eta_b = 1).
    np.testing.assert_allclose(out['restored'][0] * mask[..., None], x[0] * mask[..., None],
                               atol=1e-5)

  def test_tiles_carry_labels_and_classifier_guidance(self):
    # --resize=tile folds the guidance into each tile's eps as the sampler does: on one tile the
    # chain is the untiled one. On a larger image a pointwise class-conditional network gives the
    # untiled chain (a classifier sees the whole tile, so it has no tile-invariant stand-in).
    rng = np.random.default_rng(4)
    w = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    net = lambda p, x, t, lab: p * x + 0.1 * lab[:, None, None, None]
    clf = lambda p, x, t: jnp.einsum('bhwc,ck->bk', jnp.tanh(x), w) * p
    settings = restore.BatchSettings(deg='deno', steps=3, sigma_y=0.2, num_samples=2)
    labels = jnp.array([1, 4], jnp.int32)
    keys = restore.index_keys(0, [0, 1])
    for shape, classifier in (((16, 16, 3), clf), ((24, 37, 3), None)):
      op = operators.make('deno', shape)
      x = jax.random.uniform(jax.random.key(1), (2,) + shape, minval=-1, maxval=1)
      params = (jnp.float32(0.3), jnp.float32(2.0))
      plain = restore.make_restore_step(net, settings, class_conditional=True,
                                        classifier_net_fn=classifier)(
                                            params[0], params[1], op, x, keys, labels)
      fn = restore.tiled_network(lambda p, x, t, lab: net(p, x, t, lab), 16, overlap=5,
                                 tiles_per_call=3, class_conditional=True,
                                 classifier_net_fn=classifier, classifier_scale=1.0)
      tiled = restore.make_restore_step(fn, settings, class_conditional=True)(
          params, None, op, x, keys, labels)
      np.testing.assert_allclose(tiled['restored'], plain['restored'], atol=1e-5, err_msg=shape)
      self.assertGreater(np.abs(np.asarray(tiled['restored'][0] - tiled['restored'][1])).max(),
                         0.01)

  def test_degraded_view(self):
    rng = np.random.default_rng(3)
    y = rng.uniform(-1, 1, (4, 4, 1)).astype(np.float32)
    op = operators.make('color', (4, 4, 3))
    np.testing.assert_array_equal(restore.degraded_view(op, y), np.repeat(y, 3, -1))
    op = operators.make('sr4', (8, 8, 1))
    y = rng.uniform(-1, 1, (2, 2, 1)).astype(np.float32)
    np.testing.assert_array_equal(restore.degraded_view(op, y), np.kron(y[..., 0], np.ones(
        (4, 4)))[..., None])


if __name__ == '__main__':
  absltest.main()
