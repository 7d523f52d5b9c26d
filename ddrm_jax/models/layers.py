"""Building blocks shared by the UNet families (DDPM "simple" and ADM).

Conventions: activations NHWC, conv kernels HWIO, dense kernels (in, out). Parameters are
always float32; `dtype` is the compute dtype of convs and dense layers. GroupNorm statistics and
softmax are computed in float32 whatever the compute dtype.
"""

import contextlib
import contextvars
import functools
import math
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
PARAM_DTYPE = jnp.float32


class GroupNorm(nn.Module):
  """GroupNorm computed in float32, output in `dtype` (default: the input dtype).

  Matches `torch.nn.GroupNorm` (biased variance over H, W and the channels of a group).
  Params: `scale` and `bias`, shape (C,), float32.
  """
  num_groups: int = 32
  epsilon: float = 1e-6
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    if c % self.num_groups:
      raise ValueError(f'GroupNorm: {c} channels not divisible by {self.num_groups} groups')
    scale = self.param('scale', nn.initializers.ones, (c,), PARAM_DTYPE)
    bias = self.param('bias', nn.initializers.zeros, (c,), PARAM_DTYPE)
    out_dtype = self.dtype or x.dtype
    h = x.astype(jnp.float32)
    b, g = h.shape[0], self.num_groups
    spatial = tuple(range(1, h.ndim - 1))
    count = math.prod(h.shape[1:-1]) * (c // g)
    # Sums per (image, channel) over the spatial axes, then per group on the small (B, C)
    # array: channels stay the minor axis, which XLA reduces far faster than a
    # (..., groups, channels per group) view of the activations.
    group_mean = lambda v: jnp.repeat(
        jnp.sum(v, axis=spatial).reshape(b, g, c // g).sum(-1) / count, c // g, axis=-1)
    per_channel = lambda v: v.reshape((b,) + (1,) * len(spatial) + (c,))
    mean = group_mean(h)
    var = group_mean(jnp.square(h - per_channel(mean)))  # Two passes: no E[x^2] - E[x]^2.
    # One fused pass x * a + b (a = scale / std, b = bias - mean * a): its rounding is below
    # that of x itself (ulp(mean) / std), and XLA need not materialise x - mean.
    a = scale * jax.lax.rsqrt(var + self.epsilon)
    h = h * per_channel(a) + per_channel(bias - mean * a)
    return h.astype(out_dtype)


def timestep_embedding(t, dim: int, *, order: str = 'sin_cos', freq_shift: int = 1,
                       max_period: float = 10000.0):
  """Sinusoidal embedding of timesteps `t` (B,) -> (B, dim), float32.

  Frequencies f_i = exp(-log(max_period) * i / (half - freq_shift)), i < half = dim // 2;
  features [sin(t f), cos(t f)] (`order='sin_cos'`) or [cos, sin] (`order='cos_sin'`); an odd
  `dim` gets one zero column at the end.
    DDPM: order='sin_cos', freq_shift=1.   ADM: order='cos_sin', freq_shift=0.
  """
  if order not in ('sin_cos', 'cos_sin'):
    raise ValueError(f"timestep_embedding: order must be 'sin_cos' or 'cos_sin', got {order!r}")
  t = jnp.asarray(t)
  if t.ndim != 1:
    raise ValueError(f'timestep_embedding: t must have shape (B,), got {t.shape}')
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) / (half - freq_shift)
                  * jnp.arange(half, dtype=jnp.float32))
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  sin, cos = jnp.sin(args), jnp.cos(args)
  emb = jnp.concatenate([sin, cos] if order == 'sin_cos' else [cos, sin], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def _padding(kernel_size: Sequence[int], padding):
  if padding is None:  # torch's padding=k//2 (symmetric, explicit: not 'SAME')
    return tuple((k // 2, k // 2) for k in kernel_size)
  return padding


_NHWC_HWIO = ('NHWC', 'HWIO', 'NHWC')


def conv_general_dilated(lhs, rhs, window_strides, padding, *, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None):
  """`jax.lax.conv_general_dilated` (NHWC input, HWIO kernel) with the same value and
  derivatives, whose derivative in `lhs` is written as a conv of the kernel transposed to HWOI
  (`jnp.swapaxes(rhs, 2, 3)`). Its transpose, the input gradient that a vector-Jacobian
  product (ΠGDM, DPS, classifier guidance) computes, is then a conv with a kernel in the HWIO
  layout itself. Differentiated directly, the input gradient's kernel is the HWIO array read as
  HWOI; inside a `lax.scan` XLA:CPU runs that conv without its fast library path, about 3x slower
  (the tiny UNet's vjp in a scan: 7x a forward call instead of 2.2x; docs/benchmarks.md).

  Other dimension numbers or grouped convs are passed to lax unchanged.
  """
  conv = functools.partial(jax.lax.conv_general_dilated, window_strides=window_strides,
                           padding=padding, lhs_dilation=lhs_dilation,
                           rhs_dilation=rhs_dilation, feature_group_count=feature_group_count,
                           precision=precision)
  if (lhs.ndim != 4 or feature_group_count != 1
      or jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
      != jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC_HWIO)):
    return conv(lhs, rhs, dimension_numbers=dimension_numbers)

  @jax.custom_jvp
  def hwio_conv(x, w):
    return conv(x, w, dimension_numbers=_NHWC_HWIO)

  def hwio_conv_jvp(primals, tangents):
    (x, w), (dx, dw) = primals, tangents
    out = hwio_conv(x, w)
    terms = []
    if not isinstance(dx, jax.custom_derivatives.SymbolicZero):
      terms.append(conv(dx, jnp.swapaxes(w, 2, 3), dimension_numbers=('NHWC', 'HWOI', 'NHWC')))
    if not isinstance(dw, jax.custom_derivatives.SymbolicZero):
      terms.append(conv(x, dw, dimension_numbers=_NHWC_HWIO))
    return out, (sum(terms[1:], terms[0]) if terms else jnp.zeros_like(out))

  hwio_conv.defjvp(hwio_conv_jvp, symbolic_zeros=True)
  return hwio_conv(lhs, rhs)


class PointwiseConv(nn.Conv):
  """An unpadded 1x1 stride-1 `nn.Conv` (same params and init) run over all positions as one
  row of pixels, (1, 1, B*H*W, C): the same conv, which XLA:CPU runs 2-3x faster than over
  the (B, H, W) grid (there it is a plain matmul)."""

  def __call__(self, inputs):
    y = super().__call__(inputs.reshape((1, 1, -1, inputs.shape[-1])))
    return y.reshape(inputs.shape[:-1] + (self.features,))


def conv(features: int, kernel_size: Union[int, Sequence[int]] = 3, *, stride: int = 1,
         padding=None, dtype: Dtype = jnp.float32, kernel_init=None, use_bias: bool = True,
         name: Optional[str] = None) -> nn.Module:
  """2-D conv (NHWC, HWIO kernel, float32 params, compute in `dtype`).

  `padding=None` pads k // 2 on every side (torch `padding=k//2`); otherwise passed to nn.Conv.
  Unpadded 1x1 stride-1 convs are `PointwiseConv` (the same conv on a faster layout).
  """
  if isinstance(kernel_size, int):
    kernel_size = (kernel_size, kernel_size)
  kwargs = {} if kernel_init is None else {'kernel_init': kernel_init}
  padding = _padding(kernel_size, padding)
  pointwise = tuple(kernel_size) == (1, 1) and stride == 1 and padding in (
      ((0, 0), (0, 0)), 'VALID')
  return (PointwiseConv if pointwise else nn.Conv)(
      features, tuple(kernel_size), strides=(stride, stride), padding=padding,
      use_bias=use_bias, dtype=dtype, param_dtype=PARAM_DTYPE,
      conv_general_dilated=conv_general_dilated, name=name, **kwargs)


def dense(features: int, *, dtype: Dtype = jnp.float32, kernel_init=None, use_bias: bool = True,
          name: Optional[str] = None) -> nn.Dense:
  """Dense layer (kernel (in, out), float32 params, compute in `dtype`)."""
  kwargs = {} if kernel_init is None else {'kernel_init': kernel_init}
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=PARAM_DTYPE, name=name,
                  **kwargs)


def softmax_f32(logits, axis: int = -1, dtype: Optional[Dtype] = None):
  """Softmax computed in float32, cast to `dtype` (default: the dtype of `logits`)."""
  out_dtype = dtype or logits.dtype
  return jax.nn.softmax(logits.astype(jnp.float32), axis=axis).astype(out_dtype)


ATTENTION_IMPLEMENTATIONS = ('auto', 'xla', 'cudnn')
_ATTENTION = contextvars.ContextVar('ddrm_jax_attention', default='auto')


@contextlib.contextmanager
def attention_implementation(name: str):
  """Chooses how self-attention is computed while tracing inside this context (like
  `jax.default_matmul_precision`): 'xla' (two einsums and a float32 softmax, the logits
  materialised), 'cudnn' (`jax.nn.dot_product_attention` with cuDNN's fused flash attention:
  GPU, 16-bit inputs, head size <= 128 and a multiple of 8), or 'auto' (the default: cuDNN
  where those hold, else XLA). The setting is read when a function is traced, and jit reuses
  its trace of the same function: jit a fresh function (e.g. a new lambda) for each setting."""
  if name not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f'attention implementation must be one of {ATTENTION_IMPLEMENTATIONS}, '
                     f'got {name!r}')
  token = _ATTENTION.set(name)
  try:
    yield
  finally:
    _ATTENTION.reset(token)


def cudnn_attention_applies(q) -> bool:
  """Whether 'auto' uses cuDNN's fused attention for q (B, T, heads, head size)."""
  return (jax.default_backend() == 'gpu' and q.dtype in (jnp.bfloat16, jnp.float16)
          and q.shape[-1] <= 128 and q.shape[-1] % 8 == 0)


def attention(q, k, v, scale: float):
  """softmax(scale * q k^T) v per head: q (B, T, heads, ch), k and v (B, S, heads, ch) ->
  (B, T, heads, ch) in q's dtype. The softmax runs in float32 in both implementations (cuDNN
  keeps its running max and sum in float32); the weights meet v in the compute dtype."""
  name = _ATTENTION.get()
  if name == 'cudnn' or (name == 'auto' and cudnn_attention_applies(q)):
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation='cudnn')
  logits = jnp.einsum('bthc,bshc->bhts', q, k)
  if scale != 1.0:
    logits = logits * scale
  weights = softmax_f32(logits, axis=-1, dtype=q.dtype)
  return jnp.einsum('bhts,bshc->bthc', weights, v)


def upsample_nearest_2x(x):
  """Nearest-neighbour 2x upsampling of NHWC `x` (torch `interpolate(scale_factor=2)`)."""
  x = jnp.repeat(x, 2, axis=1)
  return jnp.repeat(x, 2, axis=2)


def avg_pool_2x(x):
  """2x2 average pooling, stride 2, of NHWC `x` (torch `avg_pool2d(kernel_size=2, stride=2)`)."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2), padding='VALID')


class Upsample(nn.Module):
  """Nearest 2x upsampling, then a 3x3 conv (params under `conv`) if `use_conv`."""
  use_conv: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = upsample_nearest_2x(x)
    if self.use_conv:
      x = conv(x.shape[-1], 3, dtype=self.dtype, name='conv')(x)
    return x


swish = nn.swish  # x * sigmoid(x), torch SiLU
