"""Tests of `layers.attention` and its implementation setting."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from ddrm_jax.models import layers


def _reference(q, k, v, scale):
  """softmax(scale q k^T) v per head in float64 numpy."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum('bthc,bshc->bhts', q, k) * scale
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return np.einsum('bhts,bshc->bthc', w, v)


class AttentionTest(parameterized.TestCase):

  @parameterized.parameters(((2, 16, 1, 8), 8 ** -0.5), ((1, 9, 3, 4), 1.0), ((2, 5, 2, 16), 0.3))
  def test_matches_float64_softmax(self, shape, scale):
    q, k, v = jax.random.normal(jax.random.key(0), (3,) + shape)
    for name in ('auto', 'xla'):  # 'auto' is XLA on a CPU.
      with layers.attention_implementation(name):
        out = jax.jit(lambda q, k, v: layers.attention(q, k, v, scale))(q, k, v)
      np.testing.assert_allclose(out, _reference(q, k, v, scale), rtol=2e-5, atol=2e-6)

  def test_jax_reference_implementation_agrees(self):
    q, k, v = jax.random.normal(jax.random.key(1), (3, 2, 12, 2, 8))
    np.testing.assert_allclose(
        layers.attention(q, k, v, 0.25),
        jax.nn.dot_product_attention(q, k, v, scale=0.25, implementation='xla'),
        rtol=1e-5, atol=1e-6)

  def test_softmax_in_float32_for_bfloat16_inputs(self):
    q, k, v = (a.astype(jnp.bfloat16) for a in jax.random.normal(jax.random.key(2),
                                                                  (3, 1, 32, 1, 8)))
    jaxpr = str(jax.make_jaxpr(lambda q, k, v: layers.attention(q, k, v, 0.5))(q, k, v))
    self.assertRegex(jaxpr, r'f32\[1,1,32\] = reduce_max')
    self.assertRegex(jaxpr, r'f32\[1,1,32\] = reduce_sum')
    self.assertEqual(layers.attention(q, k, v, 0.5).dtype, jnp.bfloat16)

  def test_cudnn_only_where_it_applies(self):
    bf16 = jnp.zeros((1, 4, 2, 64), jnp.bfloat16)
    on_gpu = jax.default_backend() == 'gpu'
    self.assertEqual(layers.cudnn_attention_applies(bf16), on_gpu)
    self.assertFalse(layers.cudnn_attention_applies(bf16.astype(jnp.float32)))
    self.assertFalse(layers.cudnn_attention_applies(jnp.zeros((1, 4, 1, 512), jnp.bfloat16)))
    self.assertFalse(layers.cudnn_attention_applies(jnp.zeros((1, 4, 1, 20), jnp.bfloat16)))

  def test_setting_is_scoped_and_checked(self):
    with self.assertRaisesRegex(ValueError, 'attention implementation must be one of'):
      with layers.attention_implementation('flash'):
        pass
    with layers.attention_implementation('xla'):
      self.assertEqual(layers._ATTENTION.get(), 'xla')  # pylint: disable=protected-access
    self.assertEqual(layers._ATTENTION.get(), 'auto')  # pylint: disable=protected-access


if __name__ == '__main__':
  absltest.main()
