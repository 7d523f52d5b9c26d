"""Checkpoint directories: round trip, refusal to overwrite, corrupt and mismatched files."""

import dataclasses
import json
import os
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ddrm_jax import checkpoints
from ddrm_jax.checkpoints import CheckpointError
from ddrm_jax.models import configs
from test_ddpm_unet import random_params, tiny_config


def make_tempdir(test):
  path = tempfile.mkdtemp()
  test.addCleanup(shutil.rmtree, path, ignore_errors=True)
  return path


def _assert_tree_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


class CheckpointTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = make_tempdir(self)
    self.config = tiny_config()
    self.params = random_params(self.config)

  def assertOneLineError(self, cm, *needles):
    message = str(cm.exception)
    self.assertNotIn('\n', message)
    for needle in needles:
      self.assertIn(needle, message)

  def save(self, name='ckpt', params=None, config=None, **kw):
    return checkpoints.save_checkpoint(
        os.path.join(self.root, name), self.params if params is None else params,
        config or self.config, **kw)

  def test_round_trip(self):
    directory = self.save()
    self.assertEqual(sorted(os.listdir(self.root)), ['ckpt'])  # no temporary left over
    fn, params, config = checkpoints.load_model(directory)
    self.assertEqual(config, self.config)
    _assert_tree_equal(params, self.params)
    self.assertTrue(all(p.dtype == jnp.float32 for p in jax.tree.leaves(params)))
    # fn against the golden PyTorch outputs: test_convert.ConvertCliTest.
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
    out = jax.jit(fn)(params, x, jnp.array([1, 999]))  # params are an argument: jit-friendly
    self.assertEqual((out.shape, out.dtype), ((2, 16, 16, 3), jnp.float32))

  def test_existing_directory_needs_overwrite(self):
    directory = self.save()
    other = jax.tree.map(lambda p: p + 1.0, self.params)
    with self.assertRaises(CheckpointError) as cm:
      self.save(params=other)
    self.assertOneLineError(cm, 'already exists', 'overwrite')
    _assert_tree_equal(checkpoints.load_params(directory, self.config), self.params)
    self.save(params=other, overwrite=True)
    _assert_tree_equal(checkpoints.load_params(directory, self.config), other)
    self.assertEqual(sorted(os.listdir(self.root)), ['ckpt'])

  def test_overwrite_refuses_a_directory_that_is_not_a_checkpoint(self):
    directory = os.path.join(self.root, 'photos')
    os.makedirs(directory)
    open(os.path.join(directory, 'a.png'), 'w').close()
    with self.assertRaises(CheckpointError) as cm:
      self.save('photos', overwrite=True)
    self.assertOneLineError(cm, 'not a ddrm-jax checkpoint')
    self.assertEqual(os.listdir(directory), ['a.png'])

  def test_overwrite_replaces_only_a_recognisable_checkpoint(self):
    # A user's folder that merely holds a config.json (issue 11, item 1) is never replaced.
    cases = {
        'config_and_photos': {'config.json': json.dumps(self.config.to_dict()), 'a.png': 'x'},
        'foreign_config': {'config.json': '{"name": "my settings"}'},
        'foreign_family': {'config.json': '{"family": "gan"}', 'params/x': 'y'},
        'no_params': {'config.json': json.dumps(self.config.to_dict())},
        'ours_plus_notes': {'config.json': json.dumps(self.config.to_dict()), 'params/x': 'y',
                            'notes.txt': 'keep me'},
    }
    for name, files in cases.items():
      with self.subTest(name):
        directory = os.path.join(self.root, name)
        for rel, text in files.items():
          os.makedirs(os.path.dirname(os.path.join(directory, rel)), exist_ok=True)
          with open(os.path.join(directory, rel), 'w') as f:
            f.write(text)
        before = sorted((d, tuple(sorted(fs))) for d, _, fs in os.walk(directory))
        with self.assertRaises(CheckpointError) as cm:
          self.save(name, overwrite=True)
        self.assertOneLineError(cm, 'is not a ddrm-jax checkpoint; not replacing it')
        self.assertEqual(sorted((d, tuple(sorted(fs))) for d, _, fs in os.walk(directory)),
                         before)
    # An empty folder and one of our checkpoints are replaced.
    os.makedirs(os.path.join(self.root, 'empty'))
    self.save('empty', overwrite=True)
    self.save('empty', params=jax.tree.map(lambda p: p + 1.0, self.params), overwrite=True)

  def test_params_not_matching_the_config_are_not_written(self):
    wrong = tiny_config(ch=64)
    with self.assertRaises(CheckpointError) as cm:
      self.save(config=wrong)
    self.assertOneLineError(cm, 'wrong shape', 'conv_in/kernel (3, 3, 3, 32)',
                            '(expected (3, 3, 3, 64))')
    params = dict(self.params)
    del params['conv_out']
    params['extra'] = {'kernel': np.zeros(3, np.float32)}
    with self.assertRaises(CheckpointError) as cm:
      self.save(params=params)
    self.assertOneLineError(cm, 'missing 2 params: conv_out/bias (3,), conv_out/kernel',
                            'unexpected 1 params: extra/kernel (3,)')
    self.assertEqual(os.listdir(self.root), [])

  def test_failed_write_leaves_nothing(self):
    target = os.path.join(self.root, 'new', 'deeper', 'ckpt')
    with mock.patch.object(ocp.StandardCheckpointer, 'save', side_effect=OSError('disk full')):
      with self.assertRaisesRegex(OSError, 'disk full'):
        checkpoints.save_checkpoint(target, self.params, self.config)
    self.assertEqual(os.listdir(self.root), [])

  def test_non_finite_params_are_refused(self):
    bad = jax.tree.map(np.array, self.params)
    bad['conv_in']['kernel'][0, 0, 0, 0] = np.nan
    with self.assertRaises(CheckpointError) as cm:
      self.save(params=bad)
    self.assertOneLineError(cm, 'params are not finite (NaN or inf): conv_in/kernel')
    self.assertEqual(os.listdir(self.root), [])
    # A directory written by other means is refused when loading.
    directory = os.path.join(self.root, 'nan')
    os.makedirs(directory)
    with open(os.path.join(directory, 'config.json'), 'w') as f:
      json.dump(self.config.to_dict(), f)
    bad['conv_out']['bias'][0] = -np.inf
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(directory, 'params'), bad)
      ckptr.wait_until_finished()
    with self.assertRaises(CheckpointError) as cm:
      checkpoints.load_model(directory)
    self.assertOneLineError(cm, 'are not finite (NaN or inf): conv_in/kernel, conv_out/bias')

  def test_loaded_params_are_not_pinned_to_a_device(self):
    _, params, _ = checkpoints.load_model(self.save())
    self.assertFalse(any(p.committed for p in jax.tree.leaves(params)))

  def test_truncated_params(self):
    directory = self.save()
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(directory, 'params'))
             for f in fs]
    largest = max(files, key=os.path.getsize)
    self.assertGreater(os.path.getsize(largest), 100_000)  # the array data
    with open(largest, 'r+b') as f:
      f.truncate(os.path.getsize(largest) // 2)
    with self.assertRaises(CheckpointError) as cm:
      checkpoints.load_model(directory)
    self.assertOneLineError(cm, 'corrupt or truncated params')
    self.assertEqual(sorted(os.listdir(self.root)), ['ckpt'])

  def test_wrong_architecture(self):
    directory = self.save()
    wrong = dataclasses.replace(self.config, ch_mult=(1, 1))
    with open(os.path.join(directory, 'config.json'), 'w') as f:
      json.dump(wrong.to_dict(), f)
    with self.assertRaises(CheckpointError) as cm:
      checkpoints.load_model(directory)
    self.assertOneLineError(
        cm, 'do not match', 'unexpected 2 params: down_1_block_0/nin_shortcut/bias (64,)',
        'wrong shape: down_1_attn_0/k/bias (64,) (expected (32,))')

  def test_bad_directories(self):
    cases = {'missing': 'no checkpoint directory', 'no_config': 'config.json is missing',
             'corrupt': 'corrupt', 'family': "unknown model family 'gan'",
             'no_params': 'params/ is missing'}
    os.makedirs(os.path.join(self.root, 'no_config'))
    for name, content in (('corrupt', '{"family": "ddpm", '), ('family', '{"family": "gan"}'),
                          ('no_params', json.dumps(self.config.to_dict()))):
      os.makedirs(os.path.join(self.root, name))
      with open(os.path.join(self.root, name, 'config.json'), 'w') as f:
        f.write(content)
    for name, needle in cases.items():
      with self.subTest(name):
        with self.assertRaises(CheckpointError) as cm:
          checkpoints.load_model(os.path.join(self.root, name))
        self.assertOneLineError(cm, needle)


class SignatureTest(absltest.TestCase):
  """`fn` takes labels exactly for class-conditional networks."""

  def test_class_conditional_and_classifier(self):
    adm = __import__('ddrm_jax.models.adm_unet', fromlist=['ADMConfig'])
    small = dict(image_size=8, model_channels=32, num_res_blocks=1, channel_mult=(1, 2),
                 attention_resolutions=(4,), num_head_channels=32)
    root = make_tempdir(self)
    x = jnp.zeros((2, 8, 8, 3))
    t = jnp.array([0, 5])
    for name, config in (('cc', adm.ADMConfig(num_classes=3, **small)),
                         ('clf', adm.ClassifierConfig(out_channels=4, **small))):
      with self.subTest(name):
        params = random_params(config)
        checkpoints.save_checkpoint(os.path.join(root, name), params, config)
        fn, loaded, loaded_config = checkpoints.load_model(os.path.join(root, name))
        self.assertEqual(loaded_config, config)
        if configs.is_class_conditional(config):
          out = jax.jit(fn)(loaded, x, t, jnp.array([0, 2]))
          self.assertEqual(out.shape, (2, 8, 8, 6))  # learned sigma
        else:
          out = jax.jit(fn)(loaded, x, t)
          self.assertEqual(out.shape, (2, 4))  # logits


if __name__ == '__main__':
  absltest.main()
