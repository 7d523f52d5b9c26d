"""The batch sharded over 4 (forced host) CPU devices gives the single-device images.

XLA_FLAGS must be set before jax starts, so the check runs in a fresh Python process.
"""

import os
import subprocess
import sys
import textwrap

from absl.testing import absltest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TESTS_DIR)

SCRIPT = textwrap.dedent("""
    import sys
    sys.path[:0] = [{tests!r}, {repo!r}]
    import jax
    import jax.numpy as jnp
    import numpy as np
    import test_sampler as T
    from ddrm_jax import sampler

    assert jax.device_count() == 4, jax.devices()
    kw = dict(steps=6, sigma_y=T.SIGMA_Y)
    op = T.make_op(0)
    rng = np.random.default_rng(1)
    key = jax.random.key(2)
    mesh = sampler.batch_mesh()

    def close(a, b, what):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5,
                                 err_msg=what)

    # 8 images: no padding; the result stays split over the 4 devices.
    y8 = jnp.asarray(T.measure(op, rng.normal(size=(8,) + T.X_SHAPE), T.SIGMA_Y, rng))
    single = jax.device_get(T.jit_sample(T.junk_model, **kw)(op, y8, key))
    out = sampler.sample_sharded(T.junk_model, op, y8, key, mesh=mesh, **kw)
    close(out, single, 'eager sharded')
    assert len(out.sharding.device_set) == 4, out.sharding
    assert {{s.data.shape[0] for s in out.addressable_shards}} == {{2}}, out.sharding

    # Inside the caller's jit.
    jitted = jax.jit(lambda y, k: sampler.sample_sharded(T.junk_model, op, y, k, mesh=mesh,
                                                         **kw))
    close(jitted(y8, key), single, 'jitted sharded')

    # 6 images: padded to 8 and cropped; image i still uses fold_in(key, i).
    close(sampler.sample_sharded(T.junk_model, op, y8[:6], key, mesh=mesh, **kw), single[:6],
          'padded sharded')

    # One operator per image.
    ops = [T.make_op(10 + i) for i in range(8)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *ops)
    keys = jax.random.split(key, 8)
    single_b = T.jit_sample(T.junk_model, batched_op=True, **kw)(stacked, y8, keys)
    out_b = sampler.sample_sharded(T.junk_model, stacked, y8, keys, mesh=mesh,
                                   batched_op=True, **kw)
    close(out_b, single_b, 'batched operators sharded')

    # A network from load_model (issue 11, item 4): its params are not pinned to device 0.
    import os, tempfile
    from ddrm_jax import checkpoints, operators
    from test_ddpm_unet import random_params, tiny_config
    config = tiny_config(ch=8, num_groups=4)
    ckpt = os.path.join(tempfile.mkdtemp(), 'ckpt')
    checkpoints.save_checkpoint(ckpt, random_params(config), config)
    fn, params, _ = checkpoints.load_model(ckpt)
    net = lambda x, t: fn(params, x, t)
    sr = operators.make('sr2', (16, 16, 3))
    y6 = jnp.asarray(rng.uniform(-1, 1, (6, 8, 8, 3)), jnp.float32)
    kw2 = dict(steps=2, sigma_y=0.1)
    single_n = jax.jit(lambda y, k: sampler.sample(net, sr, y, k, **kw2))(y6, key)
    close(sampler.sample_sharded(net, sr, y6, key, mesh=mesh, **kw2), single_n,
          'load_model params, eager')
    close(jax.jit(lambda y, k: sampler.sample_sharded(net, sr, y, k, mesh=mesh, **kw2))(y6, key),
          single_n, 'load_model params, jitted')
    # Params committed to one device: a clear error, and replicate() places them.
    pinned = jax.device_put(params, jax.devices()[0])
    try:
      sampler.sample_sharded(lambda x, t: fn(pinned, x, t), sr, y6, key, mesh=mesh, **kw2)
      raise AssertionError('committed params were accepted')
    except ValueError as e:
      assert 'sampler.replicate(params, mesh)' in str(e) and '\\n' not in str(e), e
    replicated = sampler.replicate(pinned, mesh)
    close(sampler.sample_sharded(lambda x, t: fn(replicated, x, t), sr, y6, key, mesh=mesh,
                                 **kw2), single_n, 'replicated params')
    print('SHARDING_OK')
""")


class ShardingTest(absltest.TestCase):

  def test_sharded_equals_single_device(self):
    env = dict(os.environ)
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                        ' --xla_force_host_platform_device_count=4').strip()
    env['JAX_PLATFORMS'] = 'cpu'
    script = SCRIPT.format(tests=TESTS_DIR, repo=REPO_DIR)
    result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    self.assertEqual(result.returncode, 0, msg=result.stdout + result.stderr)
    self.assertIn('SHARDING_OK', result.stdout)


if __name__ == '__main__':
  absltest.main()
