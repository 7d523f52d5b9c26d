"""weights_convert: CLI end to end against the golden PyTorch outputs, strict key checks."""

import json
import os
import subprocess
import sys
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from ddrm_jax import checkpoints
from ddrm_jax.models import configs
from test_checkpoints import make_tempdir
from test_ddpm_unet import DATA, golden
from weights_convert import convert

try:
  import torch  # pylint: disable=g-import-not-at-top
except ImportError:  # the converter's torch extra is not installed
  torch = None

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args):
  """`python -m weights_convert ARGS` -> (return code, stdout, stderr)."""
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
             JAX_PLATFORMS='cpu')
  p = subprocess.run([sys.executable, '-m', 'weights_convert', *args], capture_output=True,
                     text=True, cwd=REPO, env=env, timeout=300)
  return p.returncode, p.stdout, p.stderr


class ManifestTest(absltest.TestCase):
  """The full-size celeba_hq checkpoint (also LSUN bedroom/cat/church) maps key for key."""

  def setUp(self):
    super().setUp()
    with open(os.path.join(DATA, 'ddpm_celeba_hq_256_manifest.json')) as f:
      self.shapes = {k: tuple(v) for k, v in json.load(f)['state_dict'].items()}
    self.config = configs.get_config('celeba_hq')

  def test_every_key_and_shape_maps(self):
    nmap = convert.check_shapes(self.shapes, self.config)
    self.assertLen(nmap, len(self.shapes))
    self.assertEqual({key for key, _ in nmap.values()}, set(self.shapes))
    expected = checkpoints.expected_shapes(self.config)  # jax.eval_shape of the Flax model
    n = sum(int(np.prod(s)) for s in expected.values())
    self.assertEqual(n, sum(int(np.prod(s)) for s in self.shapes.values()))

  def test_a_missing_extra_or_reshaped_key_is_named(self):
    shapes = dict(self.shapes)
    del shapes['mid.attn_1.q.weight']
    shapes['up.5.block.1.conv2.weight'] = (512, 512, 1, 1)
    shapes['logvar'] = (1000,)
    with self.assertRaises(convert.ConversionError) as cm:
      convert.check_shapes(shapes, self.config)
    message = str(cm.exception)
    self.assertNotIn('\n', message)
    for needle in ('missing 1 keys: mid.attn_1.q.weight (512, 512, 1, 1)',
                   '1 unused keys: logvar (1000,)',
                   'up.5.block.1.conv2.weight (512, 512, 1, 1) (expected (512, 512, 3, 3))'):
      self.assertIn(needle, message)


@absltest.skipIf(torch is None, 'torch (the convert extra) is not installed')
class ConvertCliTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.root = make_tempdir(self)
    self.config, self.state_dict, self.x, self.t, self.expected = golden()
    self.config_json = os.path.join(self.root, 'tiny_config.json')
    with open(self.config_json, 'w') as f:
      json.dump(self.config.to_dict(), f)

  def write_ckpt(self, obj, name='model.ckpt'):
    path = os.path.join(self.root, name)
    torch.save(obj, path)
    return path

  def tensors(self, prefix=''):
    return {prefix + k: torch.from_numpy(v.copy()) for k, v in self.state_dict.items()}

  def assertMatchesGolden(self, directory):
    fn, params, config = checkpoints.load_model(directory)
    self.assertEqual(config, self.config)
    with jax.default_matmul_precision('highest'):
      out = jax.jit(fn)(params, self.x, self.t)
    self.assertLess(float(np.max(np.abs(np.asarray(out) - self.expected))), 1e-4)

  def assertCliError(self, out, *args, needle):
    rc, stdout, stderr = run_cli(*args)
    self.assertNotEqual(rc, 0)
    self.assertEqual(stdout, '')
    lines = stderr.strip().splitlines()
    self.assertLen(lines, 1, stderr)  # one line, no traceback
    self.assertStartsWith(lines[0], 'error: ')
    self.assertIn(needle, lines[0])
    self.assertFalse(os.path.exists(out))
    self.assertEqual([f for f in os.listdir(self.root) if f.startswith('.')], [])
    return lines[0]

  def test_ckpt_nested_with_module_prefix(self):
    src = self.write_ckpt({'state_dict': self.tensors('module.'), 'epoch': 3})
    out = os.path.join(self.root, 'out')
    rc, _, stderr = run_cli('--src', src, '--config', self.config_json, '--out', out)
    self.assertEqual(rc, 0, stderr)
    self.assertMatchesGolden(out)

  def test_safetensors(self):
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    src = os.path.join(self.root, 'model.safetensors')
    save_file(self.state_dict, src)
    out = os.path.join(self.root, 'out')
    convert.convert_file(src, self.config_json, out)
    # Same params as the golden parity test of test_ddpm_unet (which runs the model on them).
    want = convert.convert_state_dict(self.state_dict, self.config)
    fn, params, config = checkpoints.load_model(out)
    self.assertEqual(config, self.config)
    self.assertTrue(callable(fn))
    jax.tree.map(np.testing.assert_array_equal, params, want)

  def test_wrong_config(self):
    src = self.write_ckpt(self.tensors())
    out = os.path.join(self.root, 'out')
    line = self.assertCliError(out, '--src', src, '--config', 'celeba_hq', '--out', out,
                               needle='does not match config ddpm (image_size=256, ch=128)')
    self.assertIn('conv_in.weight (32, 3, 3, 3) (expected (128, 3, 3, 3))', line)

  def test_truncated_file(self):  # the CLI prints the message of this error (test_wrong_config)
    src = self.write_ckpt(self.tensors())
    with open(src, 'r+b') as f:
      f.truncate(os.path.getsize(src) // 2)
    out = os.path.join(self.root, 'out')
    with self.assertRaisesRegex(convert.ConversionError, f'^cannot read {src}[^\n]*$'):
      convert.convert_file(src, self.config_json, out)
    self.assertEqual(os.listdir(self.root), ['model.ckpt', 'tiny_config.json'])

  def test_existing_output_needs_overwrite(self):
    src = self.write_ckpt(self.tensors())
    out = os.path.join(self.root, 'out')
    os.makedirs(out)
    with self.assertRaisesRegex(convert.ConversionError, 'already exists.*--overwrite'):
      convert.convert_file(src, self.config_json, out)
    self.assertEqual(os.listdir(out), [])

  def test_overwrite_refuses_a_folder_that_is_not_a_checkpoint(self):
    src = self.write_ckpt(self.tensors())
    out = os.path.join(self.root, 'mine')
    os.makedirs(out)
    for name in ('config.json', 'holiday.jpg'):
      with open(os.path.join(out, name), 'w') as f:
        f.write('{}')
    rc, stdout, stderr = run_cli('--src', src, '--config', self.config_json, '--out', out,
                                 '--overwrite')
    self.assertEqual((rc, stdout), (1, ''))
    self.assertLen(stderr.strip().splitlines(), 1, stderr)
    self.assertIn('is not a ddrm-jax checkpoint; not replacing it', stderr)
    self.assertEqual(sorted(os.listdir(out)), ['config.json', 'holiday.jpg'])
    # Our own checkpoint is replaced.
    rc, _, stderr = run_cli('--src', src, '--config', self.config_json, '--out', out + '2')
    self.assertEqual(rc, 0, stderr)
    rc, _, stderr = run_cli('--src', src, '--config', self.config_json, '--out', out + '2',
                            '--overwrite')
    self.assertEqual(rc, 0, stderr)
    self.assertMatchesGolden(out + '2')

  def test_missing_and_leftover_keys(self):
    tensors = self.tensors()
    tensors['logvar'] = torch.zeros(1000)
    del tensors['norm_out.bias']
    out = os.path.join(self.root, 'out')
    with self.assertRaisesRegex(convert.ConversionError,
                                r'missing 1 keys: norm_out.bias \(32,\); 1 unused keys: logvar'):
      convert.convert_file(self.write_ckpt(tensors), self.config_json, out)
    self.assertFalse(os.path.exists(out))

  def test_pickled_code_is_not_run(self):  # REFERENCE_NOTES defect 7
    marker = os.path.join(self.root, 'pwned')

    class Payload:

      def __reduce__(self):
        return (open, (marker, 'w'))

    src = self.write_ckpt({'conv_in.weight': torch.zeros(1), 'x': Payload()})
    with self.assertRaisesRegex(convert.ConversionError, 'weights only'):
      convert.read_state_dict(src)
    self.assertFalse(os.path.exists(marker))

  @parameterized.named_parameters(
      ('object_in_pickle', 'obj.ckpt', r'it holds a Python object \(argparse.Namespace\), not '
       r'only tensors; save the state dict on its own'),
      ('text_file', 'text.ckpt', r'not a PyTorch checkpoint, or a corrupt or truncated one'),
      ('random_bytes', 'random.pt', r'not a PyTorch checkpoint, or a corrupt or truncated one'),
      ('empty_file', 'empty.pth', r'not a PyTorch checkpoint, or a corrupt or truncated one'),
      ('text_safetensors', 'text.safetensors', r'not a safetensors file'),
      ('folder', 'folder', r'--src .*folder is a folder; give the checkpoint file in it'),
      ('nan_weights', 'nan.ckpt', r'1 tensors hold NaN or inf values: conv_in.weight; not '
       'converting them'),
      ('inf_weights', 'inf.safetensors', r'2 tensors hold NaN or inf values: conv_in.bias, '
       'norm_out.weight'),
  )
  def test_bad_source_one_line(self, name, pattern):
    """Issue 11, items 6 and 8: one line, no traceback or warning, never unsafe advice."""
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    src = os.path.join(self.root, name)
    if name == 'obj.ckpt':
      import argparse  # pylint: disable=g-import-not-at-top
      torch.save({'state_dict': self.tensors(), 'args': argparse.Namespace(lr=0.1)}, src)
    elif name.startswith('text'):
      with open(src, 'w') as f:
        f.write('epoch 3, lr 0.1\n')
    elif name == 'random.pt':
      with open(src, 'wb') as f:
        f.write(np.random.default_rng(0).bytes(4000))
    elif name == 'empty.pth':
      open(src, 'wb').close()
    elif name == 'folder':
      os.makedirs(src)
    elif name == 'nan.ckpt':
      tensors = self.tensors()
      tensors['conv_in.weight'][0, 0, 0, 0] = float('nan')
      torch.save(tensors, src)
    elif name == 'inf.safetensors':
      sd = {k: v.copy() for k, v in self.state_dict.items()}
      sd['conv_in.bias'][0] = np.inf
      sd['norm_out.weight'][1] = -np.inf
      save_file(sd, src)
    out = os.path.join(self.root, 'out')
    line = self.assertCliError(out, '--src', src, '--config', self.config_json, '--out', out,
                               needle='')
    self.assertRegex(line, pattern)
    self.assertNotIn('weights_only', line)

  def test_missing_reader_packages_one_line(self):
    for module, ext, needle in (('torch', '.ckpt', 'needs PyTorch: pip install torch'),
                                ('safetensors.numpy', '.safetensors',
                                 'needs the safetensors package: pip install safetensors')):
      src = os.path.join(self.root, 'model' + ext)
      open(src, 'wb').close()
      with mock.patch.dict(sys.modules, {module: None}):
        with self.assertRaises(convert.ConversionError) as cm:
          convert.read_state_dict(src)
      self.assertIn(needle, str(cm.exception))
      self.assertNotIn('\n', str(cm.exception))

  @parameterized.parameters('bfloat16', 'float16')
  def test_half_precision_safetensors(self, dtype):
    """Issue 11, item 7: bf16 / f16 files (common for ADM checkpoints) are upcast to float32."""
    from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
    src = os.path.join(self.root, f'model_{dtype}.safetensors')
    half = {k: v.to(getattr(torch, dtype)) for k, v in self.tensors().items()}
    save_file(half, src)
    out = os.path.join(self.root, 'out')
    convert.convert_file(src, self.config_json, out)
    want = convert.convert_state_dict({k: v.float().numpy() for k, v in half.items()}, self.config)
    _, params, _ = checkpoints.load_model(out)
    jax.tree.map(np.testing.assert_array_equal, params, want)
    self.assertTrue(all(p.dtype == np.float32 for p in jax.tree.leaves(params)))

  @parameterized.parameters(
      ('ambiguous', 'several state dicts'), ('no_state_dict', 'holds no state dict'),
      ('not_a_dict', 'holds a list'), ('suffix', 'unknown file type'), ('absent', 'no such file'))
  def test_unreadable_sources(self, name, needle):
    objs = {'ambiguous': {'model': self.tensors(), 'ema': self.tensors()},
            'no_state_dict': {'epoch': 3}, 'not_a_dict': [self.tensors()], 'suffix': {}}
    src = os.path.join(self.root, 'absent.ckpt')
    if name in objs:
      src = self.write_ckpt(objs[name], 'model.npz' if name == 'suffix' else 'model.ckpt')
    with self.assertRaisesRegex(convert.ConversionError, needle):
      convert.read_state_dict(src)


if __name__ == '__main__':
  absltest.main()
