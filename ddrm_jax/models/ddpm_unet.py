"""The DDPM "simple" UNet (Ho et al. 2020; the CelebA-HQ and LSUN models used by DDRM).

A faithful port of the PyTorch architecture the paper's checkpoints were trained with: GroupNorm
(32 groups, eps 1e-6), swish, [sin, cos] timestep embedding with frequencies
exp(-log(10000) i / (half - 1)), stride-2 3x3 conv downsampling after zero padding of 0 on the
left/top and 1 on the right/bottom, nearest 2x upsampling followed by a 3x3 conv, single-head
self-attention at the resolutions in `attn_resolutions`. NHWC layout; float32 params; convs in
`dtype`, norms, softmax and the output head (norm_out, conv_out) in float32; output float32.
"""

import dataclasses
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from ddrm_jax.models import layers

Dtype = Any


@dataclasses.dataclass(frozen=True)
class DDPMConfig:
  """Architecture of a DDPM "simple" UNet (the `model` section of the paper's YAML configs).

  `image_size` is the training resolution; attention is applied at the levels whose resolution
  (image_size / 2**level) is in `attn_resolutions`. `dtype` is the default compute dtype
  ('float32', 'bfloat16', 'float16'); params are float32 whatever it is.
  """
  image_size: int = 256
  in_channels: int = 3
  out_ch: int = 3
  ch: int = 128
  ch_mult: Tuple[int, ...] = (1, 1, 2, 2, 4, 4)
  num_res_blocks: int = 2
  attn_resolutions: Tuple[int, ...] = (16,)
  dropout: float = 0.0
  resamp_with_conv: bool = True
  num_groups: int = 32
  norm_eps: float = 1e-6
  dtype: str = 'float32'
  family: str = 'ddpm'

  def __post_init__(self):
    # Tuples from lists (JSON), so configs stay hashable and compare equal after a round trip.
    object.__setattr__(self, 'ch_mult', tuple(int(m) for m in self.ch_mult))
    object.__setattr__(self, 'attn_resolutions', tuple(int(r) for r in self.attn_resolutions))
    if self.family != 'ddpm':
      raise ValueError(f"DDPMConfig: family must be 'ddpm', got {self.family!r}")
    if not self.ch_mult or min(self.ch_mult) < 1:
      raise ValueError(f'DDPMConfig: ch_mult must be positive integers, got {self.ch_mult}')
    widths = [self.ch] + [self.ch * m for m in self.ch_mult]
    bad = sorted({w for w in widths if w % self.num_groups})
    if bad:
      raise ValueError(f'DDPMConfig: widths {bad} not divisible by num_groups={self.num_groups}')
    try:
      jnp.dtype(self.dtype)
    except TypeError:
      raise ValueError(f'DDPMConfig: unknown dtype {self.dtype!r}') from None
    if self.num_res_blocks < 1:
      raise ValueError(f'DDPMConfig: num_res_blocks must be >= 1, got {self.num_res_blocks}')
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f'DDPMConfig: dropout must be in [0, 1), got {self.dropout}')
    levels = len(self.ch_mult)
    if self.image_size % 2 ** (levels - 1):
      raise ValueError(f'DDPMConfig: image_size={self.image_size} not divisible by '
                       f'2**{levels - 1} (one halving per level)')
    reached = sorted({self.image_size // 2 ** k for k in range(levels)})
    missing = sorted(set(self.attn_resolutions) - set(reached))
    if missing:
      raise ValueError(f'DDPMConfig: attn_resolutions {missing} are not feature-map sizes of '
                       f'this network (image_size={self.image_size}: {reached})')

  def to_dict(self):
    d = dataclasses.asdict(self)
    d['ch_mult'] = list(self.ch_mult)
    d['attn_resolutions'] = list(self.attn_resolutions)
    return d

  @classmethod
  def from_dict(cls, d):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f'DDPMConfig: unknown fields {unknown}')
    return cls(**d)

  def module(self, dtype: Optional[Dtype] = None):
    """The Linen module of this architecture, computing in `dtype` (default `self.dtype`)."""
    return DDPMUNet(self, dtype=dtype)


# The paper's DDPM checkpoints (celeba_hq.ckpt and the LSUN model-x.ckpt files) share one
# architecture at 256x256.
DDPM_CONFIGS = {
    'celeba_hq': DDPMConfig(),
    'bedroom': DDPMConfig(),
    'cat': DDPMConfig(),
    'church': DDPMConfig(),
}


class ResnetBlock(nn.Module):
  """norm1-swish-conv1, + temb_proj(swish(temb)), norm2-swish-dropout-conv2, + shortcut."""
  out_ch: int
  num_groups: int
  eps: float
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb, train: bool = False):
    norm = lambda name: layers.GroupNorm(self.num_groups, self.eps, dtype=self.dtype, name=name)
    h = layers.conv(self.out_ch, 3, dtype=self.dtype, name='conv1')(
        layers.swish(norm('norm1')(x)))
    h = h + layers.dense(self.out_ch, dtype=self.dtype, name='temb_proj')(
        layers.swish(temb))[:, None, None, :]
    h = layers.swish(norm('norm2')(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = layers.conv(self.out_ch, 3, dtype=self.dtype, name='conv2')(h)
    if x.shape[-1] != self.out_ch:
      x = layers.conv(self.out_ch, 1, dtype=self.dtype, name='nin_shortcut')(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all H*W positions, 1x1-conv q, k, v, proj_out; residual."""
  num_groups: int
  eps: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, hh, ww, c = x.shape
    h = layers.GroupNorm(self.num_groups, self.eps, dtype=self.dtype, name='norm')(x)
    q, k, v = (layers.conv(c, 1, dtype=self.dtype, name=n)(h).reshape(b, hh * ww, c)
               for n in ('q', 'k', 'v'))
    h = layers.attention(q[:, :, None], k[:, :, None], v[:, :, None], scale=c ** -0.5)
    h = h.reshape(b, hh, ww, c)
    return x + layers.conv(c, 1, dtype=self.dtype, name='proj_out')(h)


class Downsample(nn.Module):
  """Stride-2 3x3 conv after zero padding (0 left/top, 1 right/bottom), or 2x2 average pool."""
  with_conv: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if not self.with_conv:
      return layers.avg_pool_2x(x)
    return layers.conv(x.shape[-1], 3, stride=2, padding=((0, 1), (0, 1)), dtype=self.dtype,
                       name='conv')(x)


class DDPMUNet(nn.Module):
  """DDPM "simple" UNet: `(x (B, H, W, C) in [-1, 1], t (B,)) -> eps (B, H, W, out_ch)` float32.

  Submodule names mirror the PyTorch state dict (`down_1_attn_0` for `down.1.attn.0`).
  `dtype` is the compute dtype (e.g. bfloat16 on accelerators; None: `config.dtype`); params
  stay float32.
  """
  config: DDPMConfig
  dtype: Optional[Dtype] = None

  def _check_inputs(self, x, t):
    cfg = self.config
    if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
      raise ValueError(f'DDPMUNet: x must be (B, H, W, {cfg.in_channels}), got {x.shape}')
    f = 2 ** (len(cfg.ch_mult) - 1)
    if x.shape[1] % f or x.shape[2] % f:
      raise ValueError(f'DDPMUNet: H and W must be multiples of {f}, got {x.shape[1:3]}')
    if t.shape != (x.shape[0],):
      raise ValueError(f'DDPMUNet: t must have shape ({x.shape[0]},), got {t.shape}')

  @nn.compact
  def __call__(self, x, t, train: bool = False):
    cfg = self.config
    dt = jnp.dtype(cfg.dtype if self.dtype is None else self.dtype)
    x, t = jnp.asarray(x), jnp.asarray(t)
    self._check_inputs(x, t)
    block = lambda out, name: ResnetBlock(out, cfg.num_groups, cfg.norm_eps, cfg.dropout, dt,
                                          name=name)
    attn = lambda name: AttnBlock(cfg.num_groups, cfg.norm_eps, dt, name=name)
    num_levels = len(cfg.ch_mult)

    temb = layers.timestep_embedding(t, cfg.ch, order='sin_cos', freq_shift=1).astype(dt)
    temb = layers.dense(4 * cfg.ch, dtype=dt, name='temb_dense_0')(temb)
    temb = layers.dense(4 * cfg.ch, dtype=dt, name='temb_dense_1')(layers.swish(temb))

    hs = [layers.conv(cfg.ch, 3, dtype=dt, name='conv_in')(x.astype(dt))]
    res = cfg.image_size
    for i in range(num_levels):
      for j in range(cfg.num_res_blocks):
        h = block(cfg.ch * cfg.ch_mult[i], f'down_{i}_block_{j}')(hs[-1], temb, train)
        if res in cfg.attn_resolutions:
          h = attn(f'down_{i}_attn_{j}')(h)
        hs.append(h)
      if i != num_levels - 1:
        hs.append(Downsample(cfg.resamp_with_conv, dt, name=f'down_{i}_downsample')(hs[-1]))
        res //= 2

    h = hs[-1]
    h = block(h.shape[-1], 'mid_block_1')(h, temb, train)
    h = attn('mid_attn_1')(h)
    h = block(h.shape[-1], 'mid_block_2')(h, temb, train)

    for i in reversed(range(num_levels)):
      for j in range(cfg.num_res_blocks + 1):
        h = jnp.concatenate([h, hs.pop()], axis=-1)
        h = block(cfg.ch * cfg.ch_mult[i], f'up_{i}_block_{j}')(h, temb, train)
        if res in cfg.attn_resolutions:
          h = attn(f'up_{i}_attn_{j}')(h)
      if i != 0:
        h = layers.Upsample(cfg.resamp_with_conv, dt, name=f'up_{i}_upsample')(h)
        res *= 2

    # The output head runs in float32 (as the ADM UNet's): DDRM divides eps by sqrt(alpha_bar)
    # (up to 160x at t = 999), which would amplify its rounding to a 16-bit dtype; on the bundled
    # prior this cuts the bf16 error of eps from 0.70% to 0.63% RMS, for < 0.2% of the FLOPs.
    h = layers.GroupNorm(cfg.num_groups, cfg.norm_eps, dtype=jnp.float32, name='norm_out')(h)
    return layers.conv(cfg.out_ch, 3, dtype=jnp.float32, name='conv_out')(layers.swish(h))
