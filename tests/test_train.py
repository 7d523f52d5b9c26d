"""Training a DDPM prior: the loss goes down, a saved state resumes exactly, the CLI exports."""

import dataclasses
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from ddrm_jax import checkpoints
from ddrm_jax import diffusion
from ddrm_jax import io as image_io
from ddrm_jax import train

CONFIG = dataclasses.replace(train.PRESETS['tiny'], image_size=8, ch_mult=(1, 2),
                             attn_resolutions=(4,))
TC = train.TrainConfig(batch_size=4, learning_rate=2e-3, warmup_steps=1, ema_decay=0.9)


def _write_images(folder, n=3, size=12, seed=0):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size] / size
  for i in range(n):  # Smooth images: a learnable distribution.
    img = np.stack([np.sin(2 * np.pi * (xx * rng.uniform(0.5, 1.5) + c)) * 0.8
                    for c in (0.0, 0.3, 0.6)], -1) * (1 - yy[..., None] * 0.5)
    image_io.write_image(os.path.join(folder, f'img_{i}.png'), img.astype(np.float32))


_STEP = {}


def _step_fn():
  if 'fn' not in _STEP:
    _STEP['fn'] = train.data_parallel_step(CONFIG, TC)
  return _STEP['fn']


class TrainTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.data_dir = os.path.join(cls.tmp, 'data')
    _write_images(cls.data_dir)
    cls.data = train.ImageSet(image_io.expand_inputs(cls.data_dir), CONFIG.image_size,
                              min_scale=0.75)
    # One init for all tests (host copies: the jitted step donates the state it is given).
    cls.init = jax.device_get(train.init_state(CONFIG, TC, jax.random.PRNGKey(0)))

  def _run(self, state, start, stop):
    step_fn, place_batch, place_state = _step_fn()
    state = place_state(state)
    key = jax.random.PRNGKey(TC.seed)
    losses = []
    for step in range(start, stop):
      x0 = place_batch(self.data.batch(train.batch_rng(TC.seed, step), TC.batch_size))
      state, loss = step_fn(state, x0, jax.random.fold_in(key, step))
      losses.append(float(loss))
    return state, losses

  def test_batches_are_crops_in_range_and_reproducible(self):
    a = self.data.batch(train.batch_rng(0, 5), 6)
    b = self.data.batch(train.batch_rng(0, 5), 6)
    c = self.data.batch(train.batch_rng(0, 6), 6)
    self.assertEqual(a.shape, (6, 8, 8, 3))
    np.testing.assert_array_equal(a, b)
    self.assertFalse(np.array_equal(a, c))
    self.assertLessEqual(np.abs(a).max(), 1.0)
    # A crop of an unscaled image (or its mirror) must be found in the data.
    first = self.data.images[0]
    crop = first[2:10, 3:11]
    self.assertTrue(any(np.allclose(crop, im[2:10, 3:11]) for im in self.data.images))

  def test_loss_decreases(self):
    state = self.init
    x0 = jnp.asarray(self.data.batch(train.batch_rng(99, 0), 16))
    abar = jnp.asarray(diffusion.alpha_bars(diffusion.linear_betas()))
    module = CONFIG.module()
    eval_loss = jax.jit(lambda p: jnp.mean(jnp.stack([
        train.diffusion_loss(module.apply, p, x0, jax.random.PRNGKey(k), abar)
        for k in range(4)])))
    before = float(eval_loss(state.params))
    state, _ = self._run(state, 0, 60)
    after = float(eval_loss(state.params))
    self.assertEqual(int(state.step), 60)
    self.assertLess(after, 0.7 * before)
    # The EMA moved from the init towards the trained params.
    leaf = lambda tree: np.asarray(jax.tree_util.tree_leaves(tree)[0])
    self.assertFalse(np.allclose(leaf(state.ema_params), leaf(self.init.ema_params)))

  def test_resume_gives_the_same_state(self):
    workdir = os.path.join(self.tmp, 'resume')
    straight, losses = self._run(self.init, 0, 6)
    store = train.StateStore(workdir, CONFIG, TC)
    half, _ = self._run(self.init, 0, 3)
    store.save(half)
    store.close()
    store = train.StateStore(workdir, CONFIG, TC)  # A new process would do exactly this.
    abstract = jax.eval_shape(lambda: train.init_state(CONFIG, TC, jax.random.PRNGKey(0)))
    restored = store.restore(abstract)
    store.close()
    self.assertEqual(int(restored.step), 3)
    chex_equal = lambda a, b: jax.tree_util.tree_map(
        lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), a, b)
    chex_equal(restored, half)
    resumed, resumed_losses = self._run(restored, 3, 6)
    chex_equal(resumed, straight)
    np.testing.assert_array_equal(resumed_losses, losses[3:])

  def test_other_settings_refused(self):
    workdir = os.path.join(self.tmp, 'settings')
    train.StateStore(workdir, CONFIG, TC).close()
    with self.assertRaisesRegex(train.TrainError, 'train.learning_rate'):
      train.StateStore(workdir, CONFIG, dataclasses.replace(TC, learning_rate=1e-3))
    with self.assertRaisesRegex(train.TrainError, 'model.ch'):
      train.StateStore(workdir, dataclasses.replace(CONFIG, ch=8), TC)

  def test_bad_settings(self):
    with self.assertRaisesRegex(train.TrainError, 'batch_size'):
      train.TrainConfig(batch_size=0)
    with self.assertRaisesRegex(train.TrainError, 'unknown config') as cm:
      train.model_config('nope')
    self.assertIn('unknown --config', cm.exception.with_flags())  # As ddrm-train shows it.
    with self.assertRaisesRegex(train.TrainError, 'adm'):
      train.model_config('imagenet_256')
    with self.assertRaisesRegex(train.TrainError, 'smaller than the crop size'):
      train.ImageSet(image_io.expand_inputs(self.data_dir), 64)


class TrainCliTest(absltest.TestCase):

  def _cli(self, *args):
    # The runs share a compilation cache: the resumed run reuses the first run's programs.
    env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=self.cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
    return subprocess.run([sys.executable, '-m', 'ddrm_jax.cli.train', *args],
                          capture_output=True, text=True, env=env, timeout=600)

  def test_train_export_resume_and_errors(self):
    tmp = tempfile.mkdtemp()
    self.cache = os.path.join(tmp, 'jax_cache')
    data = os.path.join(tmp, 'data')
    _write_images(data, n=4)
    common = [f'--data={data}', f'--workdir={tmp}/run', '--config=tiny', '--image_size=8',
              '--ch_mult=1,2', '--attn_resolutions=4', '--batch_size=2', '--save_every=2',
              '--exclude=img_3.png']
    r = self._cli(*common, '--steps=3', f'--export={tmp}/ckpt')
    self.assertEqual(r.returncode, 0, r.stderr[-2000:])
    self.assertIn('3 images', r.stdout)
    fn, params, config = checkpoints.load_model(f'{tmp}/ckpt')
    self.assertEqual(config.image_size, 8)
    eps = fn(params, jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,), jnp.int32))
    self.assertEqual(eps.shape, (1, 8, 8, 3))
    self.assertTrue(os.path.exists(f'{tmp}/run/samples_0000003.png'))

    r = self._cli(*common, '--steps=4', '--num_grid_samples=0')
    self.assertEqual(r.returncode, 0, r.stderr[-2000:])
    self.assertIn('resuming', r.stdout)
    self.assertIn('step 3', r.stdout)

    r = self._cli(*common, '--steps=5', f'--export={tmp}/ckpt')  # Export exists.
    self.assertEqual(r.returncode, 1)
    self.assertIn('--overwrite', r.stderr)
    self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)

    r = self._cli(*common, '--steps=5', '--learning_rate=0.1')  # Other settings.
    self.assertEqual(r.returncode, 1)
    self.assertIn('other settings', r.stderr)

    r = self._cli(f'--data={tmp}/missing', f'--workdir={tmp}/run2')
    self.assertEqual(r.returncode, 1)
    self.assertIn('no such file', r.stderr)
    self.assertFalse(os.path.exists(f'{tmp}/run2'))


if __name__ == '__main__':
  absltest.main()
