"""The library pipeline, called directly (no argv): `restore_files`, `Restorer`, `RestoreConfig`,
the problem registry, and that the command writes what `restore_files` writes."""

import json
import os
import shutil

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image

from ddrm_jax import errors
from ddrm_jax import pipeline
from ddrm_jax import problems
from ddrm_jax import run_config
from ddrm_jax import runner

import test_restore_cli as T

FAST = dict(steps=3)


def _png(path):
  return np.asarray(Image.open(path))


def _tree(out):
  """{relative path: bytes} of the image and array files of a run folder."""
  files = {}
  for root, _, names in os.walk(out):
    for n in names:
      if n.endswith(('.png', '.npy')):
        p = os.path.join(root, n)
        with open(p, 'rb') as fh:
          files[os.path.relpath(p, out)] = fh.read()
  return files


class PipelineTest(T.RunFolderCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir, cls.ckpt, cls.imgs = T.tiny_run_folder(seed=5, names=('a.png', 'b.png', 'c.png'))
    rng = np.random.default_rng(1)
    cls.big = os.path.join(cls.dir, 'big')
    os.makedirs(cls.big)
    Image.fromarray(rng.integers(0, 256, (20, 27, 3), dtype=np.uint8)).save(
        os.path.join(cls.big, 'w.png'))
    k = np.zeros((3, 3))
    k[1] = 1.0 / 3
    cls.kernel = os.path.join(cls.dir, 'k.npy')
    np.save(cls.kernel, k)

  def config(self, **kw):
    return pipeline.RestoreConfig(ckpt=self.ckpt, **dict(FAST, **kw))

  def restore(self, out, inputs=None, **kw):
    return pipeline.restore_files(self.config(**kw), inputs or self.imgs, self.p(out),
                                  log=lambda m: None, err=self.fail)

  @parameterized.named_parameters(
      ('paper_sr2', dict(deg='sr2', sigma_y=0.1, num_samples=2)),
      ('measurement_deno', dict(deg='deno', sigma_y=0.1, measurement=True)),
      ('blur2d_padded', dict(deg='blur2d', sigma_y=0.02, measurement=True)),
      ('blind', dict(deg='blind_blur', sigma_y=0.02, kernel_size=3)),
  )
  def test_command_writes_the_bytes_of_restore_files(self, kw):
    res = self.restore('lib_' + self._testMethodName, **kw)
    self.assertEqual(res.restored, 3)
    argv = [f'--{k}={v}' for k, v in kw.items() if not isinstance(v, bool)]
    argv += [f'--{k}' for k, v in kw.items() if v is True]
    self.run_ok(['--input', self.imgs] + argv, 'cli_' + self._testMethodName)
    lib, cli = _tree(res.out_dir), _tree(self.p('cli_' + self._testMethodName))
    self.assertEqual(sorted(lib), sorted(cli))
    self.assertEqual(lib, cli)

  def test_restorer_equals_the_files_to_8_bit_rounding(self):
    res = self.restore('restorer', deg='sr2', sigma_y=0.1, num_samples=2, seed=4)
    names = sorted(os.listdir(self.imgs))
    images = np.stack([_png(os.path.join(self.imgs, n)) for n in names])
    out = pipeline.Restorer(self.config(deg='sr2', sigma_y=0.1, num_samples=2, seed=4))(images)
    self.assertEqual(out['restored'].shape, (3, T.SIZE, T.SIZE, 3))
    self.assertEqual(out['samples'].shape, (3, 2, T.SIZE, T.SIZE, 3))
    with open(os.path.join(res.out_dir, 'metrics.json')) as fh:
      metrics = json.load(fh)['images']
    for i, n in enumerate(names):
      stem = os.path.splitext(n)[0]
      for kind in ('restored', 'std', 'degraded', 'baseline'):
        got = np.round(out[kind][i] * 255).astype(np.uint8)
        np.testing.assert_array_equal(got, _png(os.path.join(res.out_dir, kind, stem + '.png')),
                                      err_msg=f'{kind} {n}')
      self.assertAlmostEqual(float(out['psnr'][i]), metrics[i]['psnr'], places=4)
    # Image i of a call is index i; `indices` picks another key.
    other = pipeline.Restorer(self.config(deg='sr2', sigma_y=0.1, num_samples=2, seed=4))(
        images[1:2], indices=[1])
    np.testing.assert_array_equal(other['restored'][0], out['restored'][1])

  def test_restorer_takes_floats_and_measurements(self):
    rng = np.random.default_rng(2)
    photos = rng.uniform(0, 1, (2, T.SIZE // 2, T.SIZE // 2, 3))
    out = pipeline.Restorer(self.config(deg='sr2', measurement=True, sigma_y=0.05))(photos)
    self.assertEqual(out['restored'].shape, (2, T.SIZE, T.SIZE, 3))
    self.assertNotIn('psnr', out)
    for bad, pattern in ((photos * 2, r'in \[0, 1\]'), (photos[0], r'\(N, H, W, C\)'),
                         (photos.astype(np.int32), 'uint8 or float')):
      with self.assertRaisesRegex(errors.SettingError, pattern):
        pipeline.Restorer(self.config(deg='sr2', measurement=True))(bad)

  def test_tiles_padding_and_sigma_y_auto(self):
    res = self.restore('tiles', self.big, deg='deno', sigma_y=0.1, resize='tile', tile_overlap=4)
    self.assertEqual(_png(os.path.join(res.out_dir, 'restored', 'w.png')).shape, (20, 27, 3))
    with open(os.path.join(res.out_dir, 'run.json')) as fh:
      info = json.load(fh)
    self.assertEqual(info['tiling']['overlap'], 4)
    res = self.restore('padded', deg='blur2d', kernel=self.kernel, measurement=True,
                       sigma_y='auto')
    self.assertEqual(res.sigma_y_estimate['sigma_y'], res.sigma_y)
    self.assertLen(res.sigma_y_estimate['per_image'], 3)
    self.assertEqual(_png(os.path.join(res.out_dir, 'restored', 'a.png')).shape,
                     (T.SIZE, T.SIZE, 3))
    with open(os.path.join(res.out_dir, 'run.json')) as fh:
      self.assertIsNotNone(json.load(fh)['border_padding'])

  def test_blind_outputs_and_resume(self):
    res = self.restore('blind', deg='blind_blur', kernel_size=3, sigma_y=0.02)
    kernel = np.load(os.path.join(res.out_dir, 'kernels', 'a.npy'))
    self.assertEqual(kernel.shape, (3, 3))
    np.testing.assert_allclose(kernel.sum(), 1.0, atol=1e-5)
    self.assertIn('kernel_ncc', res.mean)
    again = self.restore('blind', deg='blind_blur', kernel_size=3, sigma_y=0.02, resume=True)
    self.assertTrue(again.finished_before)
    with self.assertRaisesRegex(errors.SettingError, 'other settings'):
      self.restore('blind', deg='blind_blur', kernel_size=3, sigma_y=0.03, resume=True)

  @parameterized.named_parameters(
      ('unknown_deg', dict(deg='sr3'), r"unknown deg 'sr3'"),
      ('kernel_elsewhere', dict(kernel='k.npy'), r'kernel is for deg blur, blur2d or blind_blur'),
      ('cs_measurement', dict(deg='cs2', measurement=True), r'does not support deg cs2'),
      ('tile_blind', dict(deg='blind_blur', resize='tile'), r'resize=tile does not support'),
      ('eta', dict(eta=2.0), r'eta must be in \[0, 1\]'),
      ('type', dict(steps='3'), r'steps must be int'),
      ('auto_paper', dict(sigma_y='auto'), r'sigma_y auto .* needs measurement'),
  )
  def test_refusals_name_settings_not_flags(self, kw, pattern):
    before = set(os.listdir(self.dir))
    with self.assertRaisesRegex(errors.SettingError, pattern) as cm:
      self.restore('refused', **kw)
    self.assertNotIn('--', str(cm.exception))
    self.assertIn('--', cm.exception.with_flags())
    self.assertEqual(set(os.listdir(self.dir)), before)  # Nothing written.

  def test_a_method_is_a_setting_of_the_run(self):
    res = self.restore('ddnm', deg='sr2', sigma_y=0.1, method='ddnm', steps=2,
                       ddnm_travel_repeat=1)
    self.assertEqual(res.restored, 3)
    with open(os.path.join(res.out_dir, 'run.json')) as fh:
      info = json.load(fh)
    self.assertEqual(info['settings']['method'], 'ddnm')
    self.assertEqual(info['settings']['ddnm_eta'], 0.85)
    self.assertEqual(info['flags']['method'], 'ddnm')
    # Each method's own default step count; DDRM's 20.
    self.assertEqual(run_config.resolve(pipeline.RestoreConfig(method='dps')).steps, 1000)
    self.assertEqual(run_config.resolve(pipeline.RestoreConfig()).steps, 20)
    stdout, _ = self.run_ok(['--input', self.imgs, '--deg', 'sr2', '--method', 'diffpir',
                             '--steps', '2', '--diffpir_zeta', '0.2'], 'diffpir_cli')
    self.assertIn('sr2 by DiffPIR', stdout)
    with self.assertRaisesRegex(errors.SettingError, 'restored by DDRM only'):
      self.restore('blind_ddnm', deg='blind_blur', method='ddnm')

  def test_resume_needs_output(self):
    with self.assertRaisesRegex(errors.SettingError, 'resume needs the output folder'):
      pipeline.restore_files(self.config(resume=True), self.imgs, None)


class NothingLostTest(T.RunFolderCase, absltest.TestCase):
  """Issue 21: overwrite, inputs inside the output, a peer's failure, one writer, resume."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir, cls.ckpt, cls.imgs = T.tiny_run_folder(seed=6, names=('a.png', 'b.png'))

  def config(self, **kw):
    return pipeline.RestoreConfig(ckpt=self.ckpt, **{**FAST, 'deg': 'sr2', 'sigma_y': 0.1, **kw})

  def restore(self, out, inputs=None, log=None, **kw):
    return pipeline.restore_files(self.config(**kw), inputs or self.imgs, out,
                                  log=log or (lambda m: None), err=self.fail)

  def test_overwrite_deletes_only_what_the_earlier_run_wrote(self):
    out = self.p('ours')
    self.restore(out)
    mine = {os.path.join(out, 'restored', 'holiday', 'a.png'): b'user image',
            os.path.join(out, 'kernels', 'mine.npy'): b'user kernel',
            os.path.join(out, 'restored', 'notes.png'): b'user notes'}
    for path, data in mine.items():
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, 'wb') as fh:
        fh.write(data)
    lines = []
    self.restore(out, overwrite=True, seed=1, log=lines.append)
    for path, data in mine.items():
      with open(path, 'rb') as fh:
        self.assertEqual(fh.read(), data, path)
    self.assertTrue(any('kept 3 files' in l for l in lines), lines)
    self.assertTrue(os.path.isfile(os.path.join(out, 'restored', 'a.png')))

  def test_inputs_inside_the_output_are_refused_not_deleted(self):
    out = self.p('inside')
    self.restore(out)
    before = _tree(out)
    with self.assertRaisesRegex(errors.SettingError, 'inside output .* would delete or '
                                'overwrite it'):
      self.restore(out, os.path.join(out, 'restored'), overwrite=True)
    self.assertEqual(_tree(out), before)

  def test_a_folder_with_a_peers_images_is_never_removed(self):
    out = self.p('peer')
    os.makedirs(os.path.join(out, 'restored'))
    with open(os.path.join(out, 'restored', 'im1.png'), 'wb') as fh:
      fh.write(b'a peer wrote this')
    self.assertFalse(runner.folder.remove_if_empty(out))
    self.assertTrue(os.path.isfile(os.path.join(out, 'restored', 'im1.png')))
    empty = self.p('empty_run')
    os.makedirs(os.path.join(empty, 'progress'))
    runner.write_json(os.path.join(empty, 'run.json'), {'program': 'ddrm-restore'})
    runner.Journal(runner.journal_path(empty, 0)).append([{'index': 0, 'error': 'bad'}])
    self.assertTrue(runner.folder.remove_if_empty(empty))

  def test_a_second_writer_is_refused_and_a_lock_is_never_stuck(self):
    out = self.p('locked')
    os.makedirs(out)
    lock = runner.folder.FolderLock(out)
    with self.assertRaisesRegex(errors.SettingError, 'in use by another ddrm-restore run'):
      self.restore(out, resume=True)
    lock.release()  # As the kernel does when the holder is killed.
    self.assertEqual(self.restore(out, resume=True).restored, 2)

  def test_resume_restores_an_input_whose_content_changed(self):
    inputs = self.p('changing')
    shutil.copytree(self.imgs, inputs)
    out = self.p('changed')
    self.restore(out, inputs)
    first = _png(os.path.join(out, 'restored', 'a.png'))
    rng = np.random.default_rng(9)
    Image.fromarray(rng.integers(0, 256, (T.SIZE, T.SIZE, 3), dtype=np.uint8)).save(
        os.path.join(inputs, 'a.png'))
    res = self.restore(out, inputs, resume=True)
    self.assertEqual((res.restored, res.skipped), (1, 1))
    self.assertFalse(np.array_equal(first, _png(os.path.join(out, 'restored', 'a.png'))))

  def test_sigma_y_auto_warns_on_photos_too_small(self):
    lines = []
    self.restore(self.p('small_auto'), deg='deno', measurement=True, sigma_y='auto',
                 log=lines.append)
    self.assertTrue(any('smaller than 32x32' in l for l in lines), lines)


class JpegRunTest(T.RunFolderCase, absltest.TestCase):
  """deg jpeg through the command: the paper protocol's real .jpg, measurement on .jpg files."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir, cls.ckpt, cls.imgs = T.tiny_run_folder(seed=7, names=('a.png',))
    rng = np.random.default_rng(3)
    cls.jpgs = os.path.join(cls.dir, 'jpgs')
    os.makedirs(cls.jpgs)
    for name, (h, w), q, sub in (('p.jpg', (16, 16), 20, 2), ('q.jpg', (24, 37), 40, 0)):
      Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
          os.path.join(cls.jpgs, name), quality=q, subsampling=sub)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
        os.path.join(cls.dir, 'r.png'))

  def test_paper_protocol_writes_the_degraded_input_as_a_real_jpeg(self):
    self.run_ok(['--input', self.imgs, '--deg', 'jpeg', '--jpeg_quality', '15'], 'jpeg_paper')
    out = self.p('jpeg_paper')
    decoded = np.asarray(Image.open(os.path.join(out, 'degraded', 'a.jpg')).convert('RGB'))
    np.testing.assert_array_equal(decoded, _png(os.path.join(out, 'degraded', 'a.png')))
    with open(os.path.join(out, 'metrics.json')) as fh:
      self.assertIsNotNone(json.load(fh)['mean']['baseline_psnr'])

  def test_measurement_reads_each_files_tables_at_any_size(self):
    stdout, _ = self.run_ok(['--input', self.jpgs, '--deg', 'jpeg', '--measurement',
                             '--resize=tile'], 'jpeg_files')
    self.assertIn('restored 2 of 2', stdout)
    self.assertEqual(_png(self.p('jpeg_files', 'restored', 'q.png')).shape, (24, 37, 3))

  def test_png_and_bad_settings_are_refused_in_one_line(self):
    status, _, err = T._run(['--ckpt', self.ckpt, '--input', self.p('r.png'), '--deg', 'jpeg',
                             '--measurement', '--output', self.p('jpeg_png')] + T.FAST)
    self.assert_one_line_error(status, err, r'r.png: not a JPEG file .*reads the quantization '
                               r'tables of each .jpg file')
    self.assertFalse(os.path.exists(self.p('jpeg_png')))
    for extra, pattern in ((['--sigma_y', '0.1'], 'sigma_y does not apply'),
                           (['--jpeg_quality', '0'], 'quality'),
                           (['--measurement', '--jpeg_quality', '20'], 'leave --jpeg_quality'),
                           (['--method', 'ddnm'], 'restored by DDRM only')):
      status, _, err = T._run(['--ckpt', self.ckpt, '--input', self.imgs, '--deg', 'jpeg',
                               '--output', self.p('jpeg_bad')] + T.FAST + extra)
      self.assert_one_line_error(status, err, pattern)


class ConfigTest(absltest.TestCase):

  def test_fields_are_the_command_flags(self):
    from ddrm_jax.cli import restore as cli  # pylint: disable=g-import-not-at-top
    from absl import flags  # pylint: disable=g-import-not-at-top
    fv = flags.FlagValues()
    cli.define_flags(fv)
    names = {f.name for f in run_config.fields()}
    self.assertEqual(set(fv) - names, {'input', 'output', 'traceback'})
    for f in run_config.fields():
      self.assertEqual(fv[f.name].default, f.default, f.name)
      self.assertTrue(f.metadata['help'], f.name)

  def test_importing_the_package_loads_no_jax(self):
    # `import ddrm_jax` stays cheap (the pipeline itself imports jax: RestoreConfig's fields come
    # from the solvers' hyperparameters).
    import subprocess  # pylint: disable=g-import-not-at-top
    import sys  # pylint: disable=g-import-not-at-top
    code = ('import sys, ddrm_jax, ddrm_jax.problems, ddrm_jax.errors; '
            'sys.exit(int("jax" in sys.modules))')
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    self.assertEqual(subprocess.run([sys.executable, '-c', code], cwd=repo,
                                    check=False).returncode, 0)

  def test_resolve_fills_dependent_defaults(self):
    c = run_config.resolve(pipeline.RestoreConfig())
    self.assertEqual((c.sigma_y, c.num_samples, c.eta_b),
                     (run_config.BUNDLED_SIGMA_Y, run_config.BUNDLED_NUM_SAMPLES, 1.0))
    c = run_config.resolve(pipeline.RestoreConfig(ckpt='x', deg='blind_blur'))
    self.assertEqual((c.sigma_y, c.num_samples, c.eta_b), (0.0, 1, 0.7))


class ProblemsTest(absltest.TestCase):

  def test_every_operator_name_is_a_problem(self):
    from ddrm_jax import operators  # pylint: disable=g-import-not-at-top
    self.assertEqual(problems.NAMES[:len(operators.NAMES)], operators.NAMES)
    self.assertEqual(problems.NAMES[len(operators.NAMES):], ('blur', 'blind_blur', 'jpeg'))

  def test_a_new_problem_is_one_registration(self):
    from ddrm_jax import operators  # pylint: disable=g-import-not-at-top

    class Half(problems.Problem):
      def make(self, c, side, x_shape):
        return operators.from_matrix(0.5 * np.eye(int(np.prod(x_shape))), x_shape)

    half = problems.register(Half('half_test', baseline=problems.PINV))
    try:
      c = run_config.resolve(pipeline.RestoreConfig(deg='half_test', ckpt='x'))
      op = problems.get('half_test').operator(c, {}, (2, 2, 1))
      np.testing.assert_allclose(np.asarray(op.H(np.ones((2, 2, 1), np.float32))), 0.5,
                                 rtol=1e-6)
      with self.assertRaisesRegex(ValueError, 'registered already'):
        problems.register(half)
    finally:
      problems.base._REGISTRY.pop('half_test')  # pylint: disable=protected-access


if __name__ == '__main__':
  absltest.main()
