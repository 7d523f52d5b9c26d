"""Tests of the SVD operators against dense matrices and independent computations."""

import math
import pathlib

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import lax
import jax.numpy as jnp
import jax.scipy.signal as jsignal
import numpy as np

from ddrm_jax import operators

HIGHEST = lax.Precision.HIGHEST
ATOL = 1e-5
MASK_DIR = pathlib.Path(__file__).resolve().parents[1] / 'ddrm_jax' / 'assets' / 'masks'


# -- independent references (numpy float64, lax.conv, jax.scipy.signal) -------------------------

def _cubic(x, a=-0.5):
  """Keys' cubic convolution kernel, written from its formula."""
  x = abs(x)
  if x <= 1:
    return (a + 2) * x**3 - (a + 3) * x**2 + 1
  if x < 2:
    return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
  return 0.0


def _bicubic_taps(factor):
  k = np.array([_cubic((i - 2 * factor + 0.5) / factor) for i in range(4 * factor)])
  return k / k.sum()


def _gauss_taps(sigma, taps):
  k = np.array([math.exp(-x * x / (2 * sigma * sigma)) for x in range(-(taps // 2), taps // 2 + 1)])
  return k / k.sum()


def _truncate(a, threshold):
  """The 1-D matrix rebuilt from its numpy SVD with singular values < threshold set to 0."""
  u, s, vt = np.linalg.svd(a, full_matrices=False)
  return (u * np.where(s < threshold, 0.0, s)) @ vt


def _same_conv_matrix(kernel, size):
  """1-D zero-padded 'same' convolution as a matrix: the full np.convolve of each basis vector,
  centred as scipy.signal.convolve(mode='same') defines it (start (L - 1) // 2)."""
  start = (kernel.size - 1) // 2
  return np.stack([np.convolve(e, kernel, mode='full')[start:start + size]
                   for e in np.eye(size)], axis=1)


def _mirror_strided_matrix(kernel, size, stride):
  """1-D strided conv with mirrored padding as a matrix: np.pad('symmetric') then lax.conv."""
  length = kernel.size
  pad = length
  eye = np.pad(np.eye(size), ((0, 0), (pad, pad)), mode='symmetric')
  start = pad + (stride - length) // 2
  lhs = jnp.asarray(eye[:, None, start:], jnp.float32)  # (N, C=1, W).
  rhs = jnp.asarray(kernel[::-1].copy(), jnp.float32)[None, None, :]  # True convolution.
  out = lax.conv_general_dilated(lhs, rhs, (stride,), 'VALID', precision=HIGHEST)
  return np.asarray(out[:, 0, :size // stride], np.float64).T


def _separable_ref(a_v, a_h):
  return lambda x: np.einsum('ih,bhwc,jw->bijc', a_v, x, a_h)


def _hadamard(size):
  i = np.arange(size)
  bits = np.vectorize(lambda v: bin(v).count('1'))(i[:, None] & i[None, :])
  return (-1.0)**bits / math.sqrt(size)


def _cs_ref(shape, ratio, perm):
  h, w, c = shape
  keep = np.asarray(perm)[:h * w // ratio]
  had = _hadamard(h * w)[keep]
  return lambda x: np.einsum('kp,bpc->bkc', had, x.reshape(x.shape[0], h * w, c))


def _mask(h, w, seed):
  return (np.random.default_rng(seed).random((h, w)) < 0.6).astype(np.float32)


def _case(name):
  """(operator, reference H on a batch (B,) + x_shape as numpy float64)."""
  rng = np.random.default_rng(7)
  if name == 'deno':
    return operators.make('deno', (6, 10, 3)), lambda x: x
  if name in ('inp', 'inp_1ch'):
    shape = (6, 10, 3) if name == 'inp' else (8, 8, 1)
    op = operators.make('inp', shape, key=3)
    mask = np.asarray(op.mask)  # The random mask itself is tested in test_inp_random_mask.
    return op, lambda x: x * mask
  if name == 'inp_mask':
    mask = _mask(6, 10, 1)
    return operators.make('inp', (6, 10, 2), mask=mask), lambda x: x * mask[None, :, :, None]
  if name.startswith('sr') and not name.startswith('sr_bicubic'):
    factor, shape = {'sr2': (2, (8, 8, 3)), 'sr2_nonsquare': (2, (6, 10, 1)),
                     'sr3': (3, (6, 9, 2))}[name]
    op = (operators.make(name, shape) if name == 'sr2'
          else operators.block_superres(shape, factor))
    def pool(x):
      b, h, w, c = x.shape
      return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
    return op, pool
  if name.startswith('sr_bicubic'):
    factor, shape, thr = {'sr_bicubic4': (4, (8, 8, 3), None),
                          'sr_bicubic4_exact': (4, (8, 12, 1), 0.0),
                          'sr_bicubic8': (8, (16, 16, 1), None)}[name]
    opts = {} if thr is None else {'zero_threshold': thr}
    op = operators.make(f'sr_bicubic{factor}', shape, **opts)
    k = _bicubic_taps(factor)
    thr = 3e-2 if thr is None else thr
    a_v = _truncate(_mirror_strided_matrix(k, shape[0], factor), thr)
    a_h = _truncate(_mirror_strided_matrix(k, shape[1], factor), thr)
    return op, _separable_ref(a_v, a_h)
  if name.startswith('deblur'):
    deg, shape, thr = {'deblur_uni': ('deblur_uni', (12, 12, 1), None),
                       'deblur_uni_exact': ('deblur_uni', (6, 10, 3), 0.0),
                       'deblur_gauss': ('deblur_gauss', (8, 8, 3), None),
                       'deblur_aniso': ('deblur_aniso', (6, 10, 3), None),
                       'deblur_aniso_exact': ('deblur_aniso', (10, 12, 1), 0.0)}[name]
    k_v, k_h = {'deblur_uni': (np.full(9, 1 / 9),) * 2,
                'deblur_gauss': (_gauss_taps(10.0, 5),) * 2,
                'deblur_aniso': (_gauss_taps(1.0, 9), _gauss_taps(20.0, 9))}[deg]
    opts = {} if thr is None else {'zero_threshold': thr}
    op = operators.make(deg, shape, **opts)
    thr = 3e-2 if thr is None else thr
    a_v = _truncate(_same_conv_matrix(k_v, shape[0]), thr)
    a_h = _truncate(_same_conv_matrix(k_h, shape[1]), thr)
    return op, _separable_ref(a_v, a_h)
  if name == 'blur_asym':  # Asymmetric even/odd kernels: convolution orientation and centring.
    k_v, k_h = rng.normal(size=4), rng.normal(size=3)
    op = operators.separable_blur(k_v, k_h, (7, 5, 2), zero_threshold=0.0, signed=True)
    return op, _separable_ref(_same_conv_matrix(k_v, 7), _same_conv_matrix(k_h, 5))
  if name in ('strided_zero', 'strided_trunc'):
    # With truncation, zeroed measurement directions and null directions coexist.
    thr = 0.0 if name == 'strided_zero' else 0.5
    k_v, k_h = rng.normal(size=5), rng.normal(size=4)
    op = operators.strided_separable_conv(k_v, k_h, (8, 6, 1), stride=2, padding='zero',
                                          zero_threshold=thr)
    def strided(k, size):  # Full convolution, then every 2nd sample from the documented start.
      full = np.stack([np.convolve(e, k, mode='full') for e in np.eye(size)], axis=1)
      return _truncate(full[2 * np.arange(size // 2) + (2 - k.size) // 2 + k.size - 1], thr)
    return op, _separable_ref(strided(k_v, 8), strided(k_h, 6))
  if name in ('color', 'color_4ch'):
    shape = (6, 10, 3) if name == 'color' else (4, 4, 4)
    return operators.make('color', shape), lambda x: x.mean(axis=-1, keepdims=True)
  if name in ('cs2', 'cs4'):
    shape = (8, 8, 3) if name == 'cs2' else (4, 8, 1)
    ratio = int(name[2])
    perm = np.random.default_rng(5).permutation(shape[0] * shape[1])
    op = operators.make(name, shape, perm=perm)
    return op, _cs_ref(shape, ratio, perm)
  if name in ('dense_wide', 'dense_tall', 'dense_lowrank'):
    rows = {'dense_wide': 5, 'dense_tall': 15, 'dense_lowrank': 7}[name]
    m = rng.normal(size=(rows, 12))
    if name == 'dense_lowrank':
      m = rng.normal(size=(rows, 3)) @ rng.normal(size=(3, 12))
    return operators.from_matrix(m, (2, 2, 3)), lambda x: x.reshape(x.shape[0], -1) @ m.T
  raise KeyError(name)


CASES = ('deno', 'inp', 'inp_1ch', 'inp_mask', 'sr2', 'sr2_nonsquare', 'sr3', 'sr_bicubic4',
         'sr_bicubic4_exact', 'sr_bicubic8', 'deblur_uni', 'deblur_uni_exact', 'deblur_gauss',
         'deblur_aniso', 'deblur_aniso_exact', 'blur_asym', 'strided_zero', 'strided_trunc',
         'color', 'color_4ch', 'cs2', 'cs4', 'dense_wide', 'dense_tall', 'dense_lowrank')
# One case per family for the jit / vmap / eager agreement (the dense-matrix test above already
# runs every case under jit and vmap).
JIT_CASES = ('deno', 'inp_mask', 'sr2_nonsquare', 'sr_bicubic4', 'deblur_aniso', 'blur_asym',
             'color', 'cs4', 'dense_tall')


def _basis(shape):
  n = math.prod(shape)
  return jnp.eye(n, dtype=jnp.float32).reshape((n,) + tuple(shape))


@jax.jit
def _matrices(op):
  """Dense matrices (out, in) of every map of `op`, by applying it (vmapped) to basis vectors."""
  bx, bs, by = _basis(op.x_shape), _basis((op.n,)), _basis(op.y_shape)
  def mat(f, basis):
    out = jax.vmap(f)(basis)
    return out.reshape(basis.shape[0], -1).T
  return dict(H=mat(op.H, bx), Vt=mat(op.Vt, bx), V=mat(op.V, bs), U=mat(op.U, bs),
              Ut=mat(op.Ut, by), Ht=mat(op.Ht, by), H_pinv=mat(op.H_pinv, by))


def _ref_matrix(ref, x_shape):
  n = math.prod(x_shape)
  return ref(np.eye(n).reshape((n,) + tuple(x_shape))).reshape(n, -1).T


class SpectralTest(parameterized.TestCase):

  @parameterized.named_parameters((c, c) for c in CASES)
  def test_svd_matches_dense_reference(self, name):
    op, ref = _case(name)
    n, ny = op.n, math.prod(op.y_shape)
    s = np.asarray(op.singulars(), np.float64)
    self.assertEqual(s.shape, (n,))
    self.assertTrue(np.all(s >= 0))
    self.assertTrue(np.all(np.diff(s) <= 0), 'singular values not descending')

    mats = {k: np.asarray(a, np.float64) for k, a in _matrices(op).items()}
    h, v, vt, u, ut = mats['H'], mats['V'], mats['Vt'], mats['U'], mats['Ut']
    h_ref = _ref_matrix(ref, op.x_shape)
    self.assertEqual(h.shape, (ny, n))
    np.testing.assert_allclose(h, h_ref, atol=ATOL)

    # The singular values are those of the reference matrix (then zeros).
    s_ref = np.linalg.svd(h_ref, compute_uv=False)
    r = min(n, ny)
    np.testing.assert_allclose(s[:r], s_ref[:r], atol=ATOL)
    np.testing.assert_array_equal(s[r:], 0.0)

    np.testing.assert_allclose(v.T @ v, np.eye(n), atol=ATOL)
    np.testing.assert_allclose(vt, v.T, atol=ATOL)
    np.testing.assert_allclose(ut, u.T, atol=ATOL)
    # U^T U = I on the measurement's directions (a prefix covering every s > 0), 0 past them.
    gram = u.T @ u
    d = np.round(np.diag(gram))
    np.testing.assert_allclose(gram, np.diag(d), atol=ATOL)
    dim = int(d.sum())
    np.testing.assert_array_equal(d, np.arange(n) < dim)
    self.assertGreaterEqual(dim, int(np.sum(s > 0)))
    self.assertLessEqual(dim, ny)
    np.testing.assert_allclose(u @ np.diag(s) @ v.T, h_ref, atol=ATOL)
    np.testing.assert_allclose(mats['Ht'], h.T, atol=ATOL)  # <H x, y> = <x, Ht y>.

    # H_pinv maps zero singular values to zero. In float32 its identities hold to about
    # cond * eps, so they are checked where the kept spectrum is not ill-conditioned (all cases
    # except the untruncated anisotropic blur, cond ~ 1e8).
    cond = s[0] / s[s > 0].min()
    if cond < 1e4:
      hp = mats['H_pinv']
      np.testing.assert_allclose(h @ hp @ h, h, atol=ATOL)
      scale = np.abs(hp).max()
      np.testing.assert_allclose(hp @ h @ hp, hp, atol=ATOL * scale)
      np.testing.assert_allclose(hp, np.linalg.pinv(h_ref, rcond=1e-6), atol=ATOL * scale)

  @parameterized.named_parameters((c, c) for c in JIT_CASES)
  def test_jit_and_vmap_match_eager(self, name):
    op, _ = _case(name)
    kx, ky = jax.random.split(jax.random.PRNGKey(0))
    xs = jax.random.normal(kx, (2,) + op.x_shape)
    ys = jax.random.normal(ky, (2,) + op.y_shape)

    def apply(o, x, y):
      return o.H(x), o.Ht(y), o.H_pinv(y), o.V(o.Vt(x)), o.U(o.Ut(y))

    eager = apply(op, xs[1], ys[1])
    jitted = jax.jit(apply)(op, xs[1], ys[1])
    batched = jax.jit(jax.vmap(apply, in_axes=(None, 0, 0)))(op, xs, ys)
    for a, b, c in zip(eager, jitted, batched):
      np.testing.assert_allclose(b, a, rtol=1e-5, atol=ATOL)
      np.testing.assert_allclose(c[1], a, rtol=1e-5, atol=ATOL)
    # Image 0 of the batch equals the jitted single-image call.
    for b, c in zip(jax.jit(apply)(op, xs[0], ys[0]), batched):
      np.testing.assert_allclose(c[0], b, rtol=1e-5, atol=ATOL)


class FamilyTest(parameterized.TestCase):

  @parameterized.parameters(('deblur_uni', (10, 12, 3)), ('deblur_gauss', (8, 8, 1)),
                            ('deblur_aniso', (12, 10, 2)))
  def test_blur_is_true_2d_convolution(self, deg, shape):
    k_v, k_h = {'deblur_uni': (np.full(9, 1 / 9),) * 2,
                'deblur_gauss': (_gauss_taps(10.0, 5),) * 2,
                'deblur_aniso': (_gauss_taps(1.0, 9), _gauss_taps(20.0, 9))}[deg]
    op = operators.make(deg, shape, zero_threshold=0.0)
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    kernel = jnp.asarray(np.outer(k_v, k_h), jnp.float32)
    want = jnp.stack([jsignal.convolve2d(x[..., c], kernel, mode='same', precision=HIGHEST)
                      for c in range(shape[2])], axis=-1)
    np.testing.assert_allclose(op.H(x), want, atol=ATOL)

  def test_default_threshold_truncates(self):
    shape = (8, 8, 1)  # Vertical 1-D singular value 0.024 < 3e-2 (not a numerical zero).
    exact = operators.make('deblur_aniso', shape, zero_threshold=0.0)
    trunc = operators.make('deblur_aniso', shape)
    s0, s1 = np.asarray(exact.singulars()), np.asarray(trunc.singulars())
    self.assertTrue(np.all(s0 > 0))
    self.assertGreater(np.sum(s1 == 0), 0)
    self.assertTrue(np.all(np.isin(s1[s1 > 0], s0)))  # The kept values are unchanged.
    x = jax.random.normal(jax.random.PRNGKey(2), shape)
    self.assertGreater(float(jnp.abs(exact.H(x) - trunc.H(x)).max()), 1e-3)

  @parameterized.parameters((4, (16, 8, 3)), (8, (16, 24, 1)))
  def test_bicubic_is_strided_mirrored_conv_2d(self, factor, shape):
    op = operators.make(f'sr_bicubic{factor}', shape, zero_threshold=0.0)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(3), shape), np.float64)
    k = _bicubic_taps(factor)
    pad = 4 * factor
    xp = np.pad(x, ((pad, pad), (pad, pad), (0, 0)), mode='symmetric')
    # Output pixel k is centred on input coordinate factor*k + (factor-1)/2: its 4*factor taps
    # start at factor*k - 3*factor/2.
    start = pad - 3 * factor // 2
    lhs = jnp.asarray(xp[start:, start:].transpose(2, 0, 1)[:, None], jnp.float32)
    rhs = jnp.asarray(np.outer(k, k)[None, None], jnp.float32)
    out = lax.conv_general_dilated(lhs, rhs, (factor, factor), 'VALID', precision=HIGHEST)
    want = out[:, 0, :shape[0] // factor, :shape[1] // factor].transpose(1, 2, 0)
    np.testing.assert_allclose(op.H(x), want, atol=ATOL)

  def test_block_sr_is_average_pooling(self):
    x = jax.random.normal(jax.random.PRNGKey(4), (12, 8, 3))
    op = operators.make('sr4', x.shape)
    want = lax.reduce_window(x, 0.0, lax.add, (4, 4, 1), (4, 4, 1), 'VALID') / 16
    np.testing.assert_allclose(op.H(x), want, atol=ATOL)

  def test_color_is_channel_mean(self):
    x = jax.random.normal(jax.random.PRNGKey(5), (5, 7, 3))
    op = operators.make('color', x.shape)
    self.assertEqual(op.y_shape, (5, 7, 1))
    np.testing.assert_allclose(op.H(x), (x[..., :1] + x[..., 1:2] + x[..., 2:]) / 3, atol=ATOL)

  def test_inpainting_layout(self):
    mask = _mask(6, 10, 2)
    op = operators.make('inp', (6, 10, 3), mask=mask)
    x = jax.random.normal(jax.random.PRNGKey(6), (6, 10, 3))
    np.testing.assert_array_equal(op.H(x), x * mask[..., None])
    # Ut reads only the observed pixels.
    np.testing.assert_array_equal(op.Ut(x), op.Ut(x * mask[..., None]))
    self.assertEqual(int(np.sum(op.singulars())), 3 * int(mask.sum()))

  def test_inp_random_mask(self):
    shape = (6, 10, 3)
    op = operators.make('inp', shape)
    mask = np.asarray(op.mask[..., 0])
    self.assertEqual(mask.sum(), 30)  # Exactly half of the 60 pixel positions missing.
    np.testing.assert_array_equal(np.asarray(op.mask), np.repeat(mask[..., None], 3, -1))
    np.testing.assert_array_equal(operators.make('inp', shape, key=0).mask, op.mask)
    other = operators.make('inp', shape, key=jax.random.PRNGKey(1)).mask
    self.assertFalse(np.array_equal(other, op.mask))

  @parameterized.parameters(('inp_lolcat', 'lolcat_extra.npy'), ('inp_lorem', 'lorem3.npy'))
  def test_text_masks(self, deg, filename):
    mask = np.load(MASK_DIR / filename).astype(np.float32)
    op = operators.make(deg, (256, 256, 3))
    x = jax.random.normal(jax.random.PRNGKey(7), (256, 256, 3))
    np.testing.assert_array_equal(op.H(x), x * mask[..., None])

  def test_fwht_is_hadamard(self):
    x = jax.random.normal(jax.random.PRNGKey(8), (32, 2))
    np.testing.assert_allclose(operators.fwht(x), _hadamard(32) @ np.asarray(x), atol=ATOL)

  def test_cs_default_key(self):
    a = operators.make('cs4', (8, 8, 1))
    b = operators.make('cs4', (8, 8, 1), key=0)
    c = operators.make('cs4', (8, 8, 1), key=1)
    np.testing.assert_array_equal(a.perm, b.perm)
    self.assertFalse(np.array_equal(a.perm, c.perm))
    np.testing.assert_array_equal(np.sort(np.asarray(a.perm)), np.arange(64))

  def test_input_shapes_checked(self):
    op = operators.make('sr2', (8, 8, 3))
    with self.assertRaisesRegex(ValueError, r'H?Vt: expected an image of shape \(8, 8, 3\)'):
      op.H(jnp.zeros((8, 8, 1)))
    with self.assertRaisesRegex(ValueError, r'Ut: expected a measurement of shape \(4, 4, 3\)'):
      op.Ht(jnp.zeros((8, 8, 3)))
    with self.assertRaisesRegex(ValueError, r'V: expected a spectral vector of shape \(192,\)'):
      op.V(jnp.zeros(191))


class BatchOfOperatorsTest(absltest.TestCase):

  def test_vmap_over_masks(self):
    shape = (6, 10, 3)
    masks = jnp.stack([jnp.asarray(_mask(6, 10, i)) for i in range(3)])
    xs = jax.random.normal(jax.random.PRNGKey(9), (3,) + shape)
    traced = jax.jit(jax.vmap(lambda m: operators.from_mask(m, 3)))(masks)
    singles = [operators.from_mask(m, 3) for m in masks]  # Host construction.
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *singles)
    np.testing.assert_array_equal(traced.perm, stacked.perm)
    np.testing.assert_array_equal(traced.singulars(), stacked.singulars())
    apply = lambda o, x: (o.H(x), o.H_pinv(o.H(x)), o.V(o.Vt(x)))
    batched = jax.jit(jax.vmap(apply))(traced, xs)
    single = jax.jit(apply)
    for i in range(3):
      np.testing.assert_array_equal(batched[0][i], xs[i] * masks[i][..., None])
      for got, want in zip(batched, single(singles[i], xs[i])):
        np.testing.assert_array_equal(got[i], want)

  def test_vmap_over_keys_inp_and_cs(self):
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    for deg, shape in (('inp', (4, 6, 1)), ('cs2', (4, 8, 2))):
      ops = jax.jit(jax.vmap(lambda k, d=deg, s=shape: operators.make(d, s, key=k)))(keys)
      xs = jax.random.normal(jax.random.PRNGKey(4), (2,) + shape)
      ys = jax.jit(jax.vmap(lambda o, x: o.H(x)))(ops, xs)
      h = jax.jit(lambda o, x: o.H(x))
      for i in range(2):
        single = operators.make(deg, shape, key=keys[i])
        np.testing.assert_array_equal(ops.perm[i], single.perm)
        np.testing.assert_allclose(ys[i], h(single, xs[i]), atol=ATOL)


class MakeTest(parameterized.TestCase):

  def test_every_name_builds_at_256(self):
    shape = (256, 256, 3)
    n = math.prod(shape)
    for deg in operators.NAMES:
      op = operators.make(deg, shape)
      self.assertEqual(op.x_shape, shape)
      y = jax.eval_shape(op.H, jax.ShapeDtypeStruct(shape, jnp.float32))
      self.assertEqual(y.shape, op.y_shape, deg)
      self.assertEqual(jax.eval_shape(op.Ut, y).shape, (n,), deg)
      self.assertEqual(jax.eval_shape(op.singulars).shape, (n,), deg)
      for leaf in jax.tree_util.tree_leaves(op):  # Theta(n) memory: no n x n matrix.
        self.assertLessEqual(leaf.size, n, deg)

  def test_names(self):
    self.assertEqual(set(operators.NAMES), {
        'deno', 'inp', 'inp_lolcat', 'inp_lorem', 'sr2', 'sr4', 'sr8', 'sr16', 'sr_bicubic4',
        'sr_bicubic8', 'sr_bicubic16', 'deblur_uni', 'deblur_gauss', 'deblur_aniso',
        'deblur_motion', 'blur2d', 'color', 'cs2', 'cs4'})

  @parameterized.named_parameters(
      ('unknown_name', 'sr3', (8, 8, 3), {}, 'unknown degradation'),
      ('bad_shape', 'deno', (8, 8), {}, r'3 entries'),
      ('zero_size', 'deno', (0, 8, 3), {}, 'positive'),
      ('float_channels', 'sr4', (8, 8, 2.5), {}, r'tuple of ints, got \(8, 8, 2.5\)'),
      ('str_channels', 'color', (8, 8, '3'), {}, r'tuple of ints'),
      ('bool_channels', 'deno', (8, 8, True), {}, r'tuple of ints'),
      ('sr_not_dividing', 'sr4', (8, 10, 3), {}, r'factor 4 does not divide the image width 10'),
      ('bicubic_not_dividing', 'sr_bicubic4', (12, 10, 3), {}, r'does not divide .* width 10'),
      ('bicubic_too_wide', 'sr_bicubic8', (8, 8, 3), {}, 'too wide for the image height 8'),
      ('cs_not_pow2', 'cs2', (6, 10, 3), {}, r'power of two, got 6\*10 = 60'),
      ('unknown_option', 'sr2', (8, 8, 3), {'zero_threshold': 0.1}, 'unknown option'),
      ('bad_threshold', 'deblur_uni', (8, 8, 3), {'zero_threshold': -1.0}, 'zero_threshold'),
      ('mask_shape', 'inp', (8, 8, 3), {'mask': np.ones((8, 7))}, r'mask must have shape'),
      ('mask_values', 'inp', (2, 2, 3), {'mask': np.array([[0, 1], [2, 1]])}, 'only 0'),
      ('mask_and_key', 'inp', (2, 2, 3), {'mask': np.ones((2, 2)), 'key': 1}, 'not both'),
      ('text_mask_size', 'inp_lorem', (128, 128, 3), {}, 'must have that height and width'),
      ('perm_not_perm', 'cs2', (4, 4, 1), {'perm': np.zeros(16, np.int32)}, 'permutation'),
      ('perm_shape', 'cs2', (4, 4, 1), {'perm': np.arange(8)}, r'shape \(16,\)'),
  )
  def test_errors(self, deg, shape, options, message):
    with self.assertRaisesRegex(ValueError, message):
      operators.make(deg, shape, **options)

  def test_separable_blur_kernels(self):
    """circular_blur's kernel rules, per 1-D kernel: non-negative, sum 1 as given, or
    normalised; any real taps only when signed."""
    box = np.full(3, 1 / 3)
    cases = ((box * 1e-30, {}, r'kernel_v sums to 1e-30, not 1 \(within 0.001\)'),
             (np.array([0.6, 0.6, -0.2]), {}, r'kernel_v has negative taps \(min -0.2\)'),
             (np.array([1.0, -1.0]), {'normalize': True}, 'kernel_v has negative taps'),
             (np.array([1.0, -1.0]), {'signed': True, 'normalize': True},
              'kernel_v sums to 0: it cannot be normalised'),
             ('k.npy', {}, r"kernel_v must be an array of taps, got the path 'k.npy'"))
    for k_v, options, message in cases:
      with self.assertRaisesRegex(ValueError, message):
        operators.separable_blur(k_v, box, (8, 8, 1), **options)
    with self.assertRaisesRegex(ValueError, 'kernel_h sums to 3, not 1'):
      operators.separable_blur(box, np.ones(3), (8, 8, 1))
    want = operators.separable_blur(box, box, (8, 8, 1)).singulars()
    got = operators.separable_blur(box * 1e-30, np.ones(3), (8, 8, 1), normalize=True)
    # Normalised in float64 on the host: at most one float32 rounding apart.
    np.testing.assert_allclose(got.singulars(), want, rtol=2**-23, atol=0)

  def test_constructor_errors(self):
    with self.assertRaisesRegex(ValueError, 'stride 2 does not divide'):
      operators.strided_separable_conv(np.ones(3), np.ones(3), (7, 8, 1), stride=2)
    with self.assertRaisesRegex(ValueError, 'padding'):
      operators.strided_separable_conv(np.ones(3), np.ones(3), (8, 8, 1), padding='wrap')
    with self.assertRaisesRegex(ValueError, 'non-empty finite 1-D'):
      operators.separable_blur(np.ones((3, 3)), np.ones(3), (8, 8, 1))
    with self.assertRaisesRegex(ValueError, r'matrix must have shape \(m, 12\)'):
      operators.from_matrix(np.ones((3, 11)), (2, 2, 3))
    with self.assertRaisesRegex(ValueError, 'positive int'):
      operators.block_superres((8, 8, 1), 2.0)


if __name__ == '__main__':
  absltest.main()
