"""Shared base of the SVD operators (Appendix D): H = U diag(s) V^T.

A subclass implements the spectral parts on ONE image (`_Vt`, `_V`, `_Ut`, `_U`, `singulars`);
the base class checks input shapes eagerly and derives `H`, `Ht` and `H_pinv` from them once.
With n = prod(x_shape):

- `Vt(x)`: image of `x_shape` -> (n,) spectral coefficients.
- `V(v)`: (n,) -> image of `x_shape`.
- `Ut(y)`: measurement of `y_shape` -> (n,), zero past the measurement's dimension.
- `U(u)`: (n,) -> measurement of `y_shape` (entries past the measurement's dimension ignored).
- `singulars()`: (n,) non-negative, descending, zeros for unobserved directions.
"""

import math
import numbers
import os

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST
DEFAULT_ZERO_THRESHOLD = 3e-2


def as_shape(shape, what='image_shape', ndim=3):
  """Validates a static shape: a tuple of `ndim` positive ints."""
  try:
    shape = tuple(shape)
  except TypeError:
    raise ValueError(f'{what} must be a tuple of ints, got {shape!r}') from None
  if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in shape):
    raise ValueError(f'{what} must be a tuple of ints, got {shape!r}')
  shape = tuple(int(d) for d in shape)
  if ndim is not None and len(shape) != ndim:
    raise ValueError(f'{what} must have {ndim} entries (H, W, C), got {shape}')
  if any(d < 1 for d in shape):
    raise ValueError(f'{what} must have positive sizes, got {shape}')
  return shape


def as_key(key):
  """None -> PRNGKey(0); an int -> PRNGKey(int); otherwise a JAX key as given."""
  if key is None:
    return jax.random.PRNGKey(0)
  if isinstance(key, (int, np.integer)):
    return jax.random.PRNGKey(int(key))
  return key


def concrete_or_none(x):
  """x as a numpy array, or None when x is traced (then value checks are skipped)."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


KERNEL_SUM_TOLERANCE = 1e-3  # |sum - 1| a kernel kept as given may have (4 decimals, float16).


def check_kernel_values(k, normalize, signed, what='kernel', axes=None):
  """Value rules of a blur kernel (concrete numpy taps, summed over `axes`; default all).

  Taps finite and not all zero. Unless `signed`: no negative taps (a blur only averages). With
  `normalize` the sums must be > 0 (they are then divided out); without it and unless `signed`
  each sum must be 1 within KERNEL_SUM_TOLERANCE. `signed=True` and `normalize=False`: any real
  filter, used as given. ValueError naming `what` otherwise.
  """
  k = np.asarray(k, np.float64)
  if not np.all(np.isfinite(k)):
    raise ValueError(f'{what} has non-finite (NaN or inf) entries')
  if not np.any(k):
    raise ValueError(f'{what} is all zero')
  if not signed and np.any(k < 0):
    raise ValueError(f'{what} has negative taps (min {k.min():.3g}); a blur kernel is '
                     'non-negative (signed=True takes any real filter as given)')
  sums = np.sum(k, axis=axes)
  scale = np.sum(np.abs(k), axis=axes)
  if normalize and np.any(sums <= k.size * np.finfo(np.float32).eps * scale):
    raise ValueError(f'{what} sums to {np.min(sums):.3g}: it cannot be normalised to sum 1 '
                     '(a blur kernel sums to a positive number)')
  if not normalize and not signed and np.any(np.abs(sums - 1.0) > KERNEL_SUM_TOLERANCE):
    raise ValueError(f'{what} sums to {np.ravel(sums)[np.argmax(np.abs(sums - 1.0))]:.6g}, not 1 '
                     f'(within {KERNEL_SUM_TOLERANCE:g}); normalize=True divides it by its sum')


def not_a_path(kernel, what='kernel'):
  """ValueError when a file name is given where an array of taps belongs."""
  if isinstance(kernel, (str, bytes, os.PathLike)):
    raise ValueError(f'{what} must be an array of taps, got the path {str(kernel)!r}; load the '
                     'file first (e.g. numpy.load)')


def zero_small(s, shape, zero_threshold):
  """Sets singular values below `zero_threshold`, or numerically zero (below numpy's rank
  tolerance max(shape) * eps * s_max), to zero. `s` from a float64 SVD of a matrix of `shape`."""
  tol = max(shape) * np.finfo(np.float64).eps * (s.max() if s.size else 0.0)
  return np.where((s < zero_threshold) | (s <= tol), 0.0, s)


def check_threshold(zero_threshold):
  t = float(zero_threshold)
  if not math.isfinite(t) or t < 0:
    raise ValueError(f'zero_threshold must be a finite number >= 0, got {zero_threshold!r}')
  return t


def inverse_permutation(perm):
  """inv[perm[i]] = i, by one scatter (works on traced permutations)."""
  n = perm.shape[0]
  return jnp.zeros(n, jnp.int32).at[perm].set(jnp.arange(n, dtype=jnp.int32))


def _as_float(a):
  a = jnp.asarray(a)
  return a if jnp.issubdtype(a.dtype, jnp.inexact) else a.astype(jnp.float32)


class Operator(struct.PyTreeNode):
  """Linear degradation y = H x given by its SVD; methods act on one image."""

  x_shape: tuple = struct.field(pytree_node=False)
  y_shape: tuple = struct.field(pytree_node=False)

  @property
  def n(self):
    return math.prod(self.x_shape)

  # -- subclass interface ------------------------------------------------------------------------
  def _Vt(self, x):
    raise NotImplementedError

  def _V(self, v):
    raise NotImplementedError

  def _Ut(self, y):
    raise NotImplementedError

  def _U(self, u):
    raise NotImplementedError

  def singulars(self):
    """(n,) singular values, non-negative and descending; zeros for unobserved directions."""
    raise NotImplementedError

  # -- checked public spectral maps --------------------------------------------------------------
  def _check(self, a, shape, method, what):
    a = _as_float(a)
    if a.shape != tuple(shape):
      raise ValueError(f'{type(self).__name__}.{method}: expected {what} of shape '
                       f'{tuple(shape)}, got {a.shape}')
    return a

  def Vt(self, x):
    return self._Vt(self._check(x, self.x_shape, 'Vt', 'an image'))

  def V(self, v):
    return self._V(self._check(v, (self.n,), 'V', 'a spectral vector'))

  def Ut(self, y):
    return self._Ut(self._check(y, self.y_shape, 'Ut', 'a measurement'))

  def U(self, u):
    return self._U(self._check(u, (self.n,), 'U', 'a spectral vector'))

  # -- derived maps --------------------------------------------------------------------------------
  def H(self, x):
    """y = U diag(s) V^T x."""
    return self.U(self.singulars() * self.Vt(x))

  def Ht(self, y):
    """x = V diag(s) U^T y (the adjoint of H)."""
    return self.V(self.singulars() * self.Ut(y))

  def H_pinv(self, y):
    """x = V diag(s)^+ U^T y; zero singular values map to zero."""
    s = self.singulars()
    observed = s > 0
    s_inv = jnp.where(observed, 1.0 / jnp.where(observed, s, 1.0), 0.0)
    return self.V(s_inv * self.Ut(y))


class PrefixOperator(Operator):
  """U = I: the flattened measurement is the first m = prod(y_shape) spectral entries, all with
  the same singular value `singular_value` (zeros after them)."""

  @property
  def singular_value(self):
    raise NotImplementedError

  def _Ut(self, y):
    return jnp.pad(y.reshape(-1), (0, self.n - y.size))

  def _U(self, u):
    return u[:math.prod(self.y_shape)].reshape(self.y_shape)

  def singulars(self):
    m = math.prod(self.y_shape)
    return jnp.concatenate([jnp.full((m,), self.singular_value, jnp.float32),
                            jnp.zeros((self.n - m,), jnp.float32)])
