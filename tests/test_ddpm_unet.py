"""DDPM UNet: golden parity with the PyTorch model, shared layers, config registry."""

import dataclasses
import json
import math
import os

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np

from ddrm_jax.models import configs
from ddrm_jax.models import layers
from ddrm_jax.models.ddpm_unet import DDPMConfig, DDPMUNet

DATA = os.path.join(os.path.dirname(__file__), 'data')


def golden():
  """(config, torch state dict, x NHWC, t, expected eps NHWC) of reference/ddpm_tiny."""
  z = np.load(os.path.join(DATA, 'ddpm_tiny.npz'))
  with open(os.path.join(DATA, 'ddpm_tiny.json')) as f:
    ref = json.load(f)
  m = ref['model']
  config = DDPMConfig(
      image_size=ref['data']['image_size'], in_channels=m['in_channels'], out_ch=m['out_ch'],
      ch=m['ch'], ch_mult=m['ch_mult'], num_res_blocks=m['num_res_blocks'],
      attn_resolutions=m['attn_resolutions'], dropout=m['dropout'],
      resamp_with_conv=m['resamp_with_conv'])
  state_dict = {k[len('param/'):]: z[k] for k in z.files if k.startswith('param/')}
  x = z['input/0'].transpose(0, 2, 3, 1)
  t = z['input/1'].astype(np.int32)
  np.testing.assert_array_equal(t, z['input/1'])  # integer timesteps stored as float
  return config, state_dict, x, t, z['output'].transpose(0, 2, 3, 1)


class GoldenParityTest(absltest.TestCase):

  def test_matches_pytorch_outputs(self):
    from weights_convert import convert  # pylint: disable=g-import-not-at-top
    config, state_dict, x, t, expected = golden()
    params = convert.convert_state_dict(state_dict, config)
    with jax.default_matmul_precision('highest'):
      out = jax.jit(DDPMUNet(config).apply)({'params': params}, x, t)
    self.assertEqual(out.dtype, jnp.float32)
    self.assertEqual(out.shape, expected.shape)
    self.assertGreater(float(np.max(np.abs(expected))), 0.1)  # far above the tolerance
    self.assertLess(float(np.max(np.abs(np.asarray(out) - expected))), 1e-4)


def random_params(config, seed=0):
  """Random float32 params of `config`'s network (numpy, no slow XLA random init)."""
  rng = np.random.default_rng(seed)
  shapes = configs.param_shapes(config)
  return jax.tree.map(lambda s: (0.2 * rng.normal(size=s.shape)).astype(np.float32), shapes)


def tiny_config(**kw):
  base = dict(image_size=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))
  base.update(kw)
  return DDPMConfig(**base)


def _equations(jaxpr):
  """The equations of a jaxpr and of the jaxprs nested in it (jit, custom_vjp, ...), in order."""
  for e in jaxpr.eqns:
    yield e
    for p in e.params.values():
      for sub in (p if isinstance(p, (list, tuple)) else [p]):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          yield from _equations(inner)


class DDPMUNetTest(parameterized.TestCase):

  def test_bfloat16_compute_keeps_float32_params_and_output(self):
    config = tiny_config()
    bf16_config = dataclasses.replace(config, dtype='bfloat16')
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
    t = jnp.array([3, 500], jnp.int32)
    shapes = jax.eval_shape(DDPMUNet(bf16_config).init, jax.random.PRNGKey(1), x, t)['params']
    self.assertTrue(all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes)))
    params = random_params(config)

    @jax.jit
    def run(params):
      v = {'params': params}
      return (DDPMUNet(config).apply(v, x, t),
              DDPMUNet(config, dtype=jnp.bfloat16).apply(v, x, t),
              bf16_config.module().apply(v, x, t))

    with jax.default_matmul_precision('highest'):
      ref, out, out_cfg = run(params)
    self.assertEqual(out.dtype, jnp.float32)
    err = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
    self.assertLess(err, 5e-2)  # bfloat16 has an 8-bit mantissa
    self.assertGreater(err, 1e-5)  # the compute really ran in bfloat16
    np.testing.assert_array_equal(out_cfg, out)  # config.dtype is the default compute dtype
    # Every conv computes in bfloat16 except the output head's (conv_out, the last one).
    jaxpr = jax.make_jaxpr(lambda p: DDPMUNet(config, dtype=jnp.bfloat16).apply(
        {'params': p}, x, t))(params)
    convs = [[v.aval.dtype for v in e.invars] for e in _equations(jaxpr.jaxpr)
             if e.primitive.name == 'conv_general_dilated']
    self.assertEqual(convs[-1], [jnp.float32] * 2)
    self.assertTrue(all(c == [jnp.bfloat16] * 2 for c in convs[:-1]), convs)

  def test_dropout_inactive_at_inference(self):
    x = jnp.ones((1, 16, 16, 3))
    t = jnp.array([7])
    params = random_params(tiny_config())
    run = jax.jit(lambda p: (DDPMUNet(tiny_config(dropout=0.5)).apply({'params': p}, x, t),
                             DDPMUNet(tiny_config()).apply({'params': p}, x, t)))
    a, b = run(params)
    np.testing.assert_array_equal(a, b)

  @parameterized.named_parameters(
      ('channels', (1, 16, 16, 1), (1,), 'x must be'),
      ('rank', (16, 16, 3), (1,), 'x must be'),
      ('size', (1, 15, 16, 3), (1,), 'multiples of 2'),
      ('t_shape', (2, 16, 16, 3), (1,), 't must have shape'))
  def test_bad_inputs(self, x_shape, t_shape, message):
    with self.assertRaisesRegex(ValueError, message):
      DDPMUNet(tiny_config()).init(jax.random.PRNGKey(0), jnp.zeros(x_shape),
                                   jnp.zeros(t_shape, jnp.int32))

  def test_bad_configs(self):
    with self.assertRaisesRegex(ValueError, 'num_groups'):
      tiny_config(ch=48)
    with self.assertRaisesRegex(ValueError, 'dtype'):
      tiny_config(dtype='float33')
    with self.assertRaisesRegex(ValueError, 'family'):
      tiny_config(family='adm')
    with self.assertRaisesRegex(ValueError, r'attn_resolutions \[4\]'):
      tiny_config(attn_resolutions=(4,))
    with self.assertRaisesRegex(ValueError, 'not divisible by 2'):
      tiny_config(image_size=17)
    with self.assertRaisesRegex(ValueError, 'unknown fields'):
      DDPMConfig.from_dict({'family': 'ddpm', 'channels': 3})


class LayersTest(parameterized.TestCase):

  @parameterized.parameters(('sin_cos', 1, 32), ('cos_sin', 0, 32), ('sin_cos', 1, 33))
  def test_timestep_embedding(self, order, freq_shift, dim):
    t = np.array([0, 1, 37, 999])
    half = dim // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / (half - freq_shift))
    args = t[:, None].astype(np.float64) * freqs[None]
    parts = [np.sin(args), np.cos(args)]
    want = np.concatenate(parts if order == 'sin_cos' else parts[::-1], axis=1)
    if dim % 2:
      want = np.pad(want, ((0, 0), (0, 1)))
    got = layers.timestep_embedding(jnp.asarray(t), dim, order=order, freq_shift=freq_shift)
    self.assertEqual(got.shape, (4, dim))
    np.testing.assert_allclose(got, want, atol=2e-4)  # float32 sin of args up to 999

  def test_group_norm_float64_reference_and_bfloat16_input(self):
    rng = np.random.default_rng(0)
    x = 300.0 + rng.normal(size=(2, 4, 5, 64))  # a large mean: bf16 statistics would fail
    scale, bias = rng.normal(size=64), rng.normal(size=64)
    g = x.reshape(2, 4, 5, 8, 8)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    want = ((g - mean) / np.sqrt(var + 1e-5)).reshape(x.shape) * scale + bias
    params = {'params': {'scale': jnp.asarray(scale, jnp.float32),
                         'bias': jnp.asarray(bias, jnp.float32)}}
    norm = layers.GroupNorm(8, 1e-5)
    got = norm.apply(params, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(got, want, atol=2e-3)
    x_bf16 = jnp.asarray(x, jnp.bfloat16)
    got_bf16 = norm.apply(params, x_bf16)
    self.assertEqual(got_bf16.dtype, jnp.bfloat16)
    x_rounded = np.asarray(x_bf16, np.float64).reshape(g.shape)  # the input bf16 really holds
    m, v = x_rounded.mean(axis=(1, 2, 4), keepdims=True), x_rounded.var(axis=(1, 2, 4),
                                                                        keepdims=True)
    want_bf16 = ((x_rounded - m) / np.sqrt(v + 1e-5)).reshape(x.shape) * scale + bias
    np.testing.assert_allclose(np.asarray(got_bf16, np.float64), want_bf16, atol=0.1, rtol=2e-2)

  @parameterized.parameters((3, 1, None), (3, 2, ((1, 1), (1, 1))), (1, 1, 'VALID'))
  def test_conv_derivatives_against_float64(self, kernel, stride, padding):
    """layers.conv's jvp and vjp (its own derivative rule) against the dense float64 matrices of
    the conv in x and in w. Each float32 result sums at most K products (K = k*k*C for the jvp
    and the input gradient, 2 * 6 * 6 for the kernel gradient), so it errs by at most K eps32
    times the sum of their magnitudes (the same products of |.|)."""
    rng = np.random.default_rng(2)
    x, dx = rng.normal(size=(2, 2, 6, 6, 5))
    w, dw = rng.normal(size=(2, kernel, kernel, 5, 4))
    pad = kernel // 2 if padding is None else (0 if padding == 'VALID' else 1)

    def conv64(x, w):  # Direct float64 convolution, NHWC / HWIO.
      xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
      n = (xp.shape[1] - kernel) // stride + 1
      return np.stack([np.stack([np.einsum(
          'bhwc,hwco->bo', xp[:, i * stride:i * stride + kernel, j * stride:j * stride + kernel],
          w) for j in range(n)], 1) for i in range(n)], 1)

    def matrix(fn, shape):  # The dense matrix of a linear map of an array of `shape`.
      basis = np.eye(math.prod(shape)).reshape((-1,) + shape)
      return np.stack([fn(e).ravel() for e in basis], 1)

    a_x, a_w = matrix(lambda e: conv64(e, w), x.shape), matrix(lambda e: conv64(x, e), w.shape)
    ct = rng.normal(size=conv64(x, w).shape)
    layer = layers.conv(4, kernel, stride=stride, padding=padding)
    ours = lambda x, w: layer.apply({'params': {'kernel': w, 'bias': jnp.zeros(4)}}, x)
    f32 = lambda *a: [jnp.asarray(v, jnp.float32) for v in a]
    _, tangent = jax.jvp(ours, f32(x, w), f32(dx, dw))
    grads = jax.vjp(ours, *f32(x, w))[1](jnp.asarray(ct, jnp.float32))
    eps = np.finfo(np.float32).eps
    checks = [
        (tangent, a_x @ dx.ravel() + a_w @ dw.ravel(),
         abs(a_x) @ abs(dx).ravel() + abs(a_w) @ abs(dw).ravel(), 2 * kernel * kernel * 5),
        (grads[0], a_x.T @ ct.ravel(), abs(a_x).T @ abs(ct).ravel(), kernel * kernel * 4),
        (grads[1], a_w.T @ ct.ravel(), abs(a_w).T @ abs(ct).ravel(), 2 * 6 * 6)]
    for got, want, magnitude, terms in checks:
      err = np.abs(np.asarray(got, np.float64).ravel() - want)
      self.assertTrue(np.all(err <= terms * eps * magnitude), err.max())

  def test_conv_input_gradient_uses_an_hwio_kernel(self):
    """The vjp in the input (ΠGDM, DPS) is a conv of a kernel in HWIO order, the layout XLA:CPU
    runs on its fast path inside a lax.scan; lax's own rule reads the HWIO kernel as HWOI."""
    layer = layers.conv(8, 3)
    params = layer.init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)))
    x = jnp.ones((1, 8, 8, 4))

    def specs(jaxpr):
      for eqn in jaxpr.eqns:
        if eqn.primitive.name == 'conv_general_dilated':
          yield eqn.params['dimension_numbers'].rhs_spec
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
          yield from specs(sub)

    def input_gradient(p, x):
      out, vjp = jax.vjp(lambda x: layer.apply(p, x), x)
      return vjp(out)[0]

    jaxpr = jax.make_jaxpr(input_gradient)(params, x).jaxpr
    hwio = jax.lax.conv_dimension_numbers((1, 8, 8, 4), (3, 3, 4, 8),
                                          ('NHWC', 'HWIO', 'NHWC')).rhs_spec
    found = list(specs(jaxpr))
    self.assertLen(found, 2)  # The forward conv and the input gradient's.
    self.assertEqual(set(found), {hwio})

  def test_downsample_pads_right_and_bottom(self):
    from ddrm_jax.models.ddpm_unet import Downsample  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 6, 6, 2)).astype(np.float32)
    w = rng.normal(size=(3, 3, 2, 2)).astype(np.float32)
    b = np.zeros(2, np.float32)
    got = Downsample(True).apply({'params': {'conv': {'kernel': w, 'bias': b}}}, x)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 1), (0, 1), (0, 0)))
    want = np.zeros((1, 3, 3, 2))
    for i in range(3):
      for j in range(3):
        want[0, i, j] = np.einsum('hwc,hwco->o', xp[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3], w)
    np.testing.assert_allclose(got, want, atol=1e-5)


class ConfigsTest(parameterized.TestCase):

  def test_paper_ddpm_configs_match_the_reference_yaml(self):
    with open(os.path.join(DATA, 'ddpm_celeba_hq_256_manifest.json')) as f:
      ref = json.load(f)['config']
    for name in ('celeba_hq', 'bedroom', 'cat', 'church'):
      c = configs.get_config(name)
      self.assertEqual(c.family, 'ddpm')
      self.assertEqual(c.image_size, ref['data']['image_size'])
      for key in ('in_channels', 'out_ch', 'ch', 'num_res_blocks', 'resamp_with_conv'):
        self.assertEqual(getattr(c, key), ref['model'][key], key)
      self.assertEqual(list(c.ch_mult), ref['model']['ch_mult'])
      self.assertEqual(list(c.attn_resolutions), ref['model']['attn_resolutions'])

  @parameterized.parameters(*configs.NAMES)
  def test_dict_round_trip(self, name):
    c = configs.get_config(name)
    d = json.loads(json.dumps(c.to_dict()))
    self.assertEqual(d['family'], c.family)
    self.assertEqual(configs.config_from_dict(d), c)

  def test_unknown_names(self):
    with self.assertRaisesRegex(ValueError, "unknown model config 'celeba'.*celeba_hq"):
      configs.get_config('celeba')
    with self.assertRaisesRegex(ValueError, "unknown model family 'vae'"):
      configs.config_from_dict({'family': 'vae'})
    with self.assertRaisesRegex(ValueError, 'no .family. field'):
      configs.config_from_dict({'ch': 3})


if __name__ == '__main__':
  absltest.main()
