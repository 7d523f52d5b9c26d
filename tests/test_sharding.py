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
