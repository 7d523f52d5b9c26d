"""Flax param paths of `DDPMUNet` -> PyTorch state-dict keys of the DDPM "simple" `Model`."""

_CONV = (('kernel', 'weight', 'conv'), ('bias', 'bias', 'identity'))
_DENSE = (('kernel', 'weight', 'linear'), ('bias', 'bias', 'identity'))
_NORM = (('scale', 'weight', 'identity'), ('bias', 'bias', 'identity'))


def name_map(config):
  """{flax path (tuple, relative to variables['params']): (torch key, transform name)}."""
  out = {}

  def add(flax_prefix, torch_prefix, leaves):
    for flax_leaf, torch_leaf, transform in leaves:
      out[flax_prefix + (flax_leaf,)] = (f'{torch_prefix}.{torch_leaf}', transform)

  def resnet(flax_name, torch_prefix, c_in, c_out):
    for sub, leaves in (('norm1', _NORM), ('conv1', _CONV), ('temb_proj', _DENSE),
                        ('norm2', _NORM), ('conv2', _CONV)):
      add((flax_name, sub), f'{torch_prefix}.{sub}', leaves)
    if c_in != c_out:
      add((flax_name, 'nin_shortcut'), f'{torch_prefix}.nin_shortcut', _CONV)

  def attn(flax_name, torch_prefix):
    add((flax_name, 'norm'), f'{torch_prefix}.norm', _NORM)
    for sub in ('q', 'k', 'v', 'proj_out'):
      add((flax_name, sub), f'{torch_prefix}.{sub}', _CONV)

  ch, mult, nrb = config.ch, config.ch_mult, config.num_res_blocks
  levels = len(mult)
  add(('temb_dense_0',), 'temb.dense.0', _DENSE)
  add(('temb_dense_1',), 'temb.dense.1', _DENSE)
  add(('conv_in',), 'conv_in', _CONV)
  res, c_in = config.image_size, ch
  skips = [ch]
  for i in range(levels):
    for j in range(nrb):
      resnet(f'down_{i}_block_{j}', f'down.{i}.block.{j}', c_in, ch * mult[i])
      c_in = ch * mult[i]
      skips.append(c_in)
      if res in config.attn_resolutions:
        attn(f'down_{i}_attn_{j}', f'down.{i}.attn.{j}')
    if i != levels - 1:
      if config.resamp_with_conv:
        add((f'down_{i}_downsample', 'conv'), f'down.{i}.downsample.conv', _CONV)
      skips.append(c_in)
      res //= 2
  resnet('mid_block_1', 'mid.block_1', c_in, c_in)
  attn('mid_attn_1', 'mid.attn_1')
  resnet('mid_block_2', 'mid.block_2', c_in, c_in)
  for i in reversed(range(levels)):
    for j in range(nrb + 1):
      c_cat = c_in + skips.pop()
      resnet(f'up_{i}_block_{j}', f'up.{i}.block.{j}', c_cat, ch * mult[i])
      c_in = ch * mult[i]
      if res in config.attn_resolutions:
        attn(f'up_{i}_attn_{j}', f'up.{i}.attn.{j}')
    if i != 0:
      if config.resamp_with_conv:
        add((f'up_{i}_upsample', 'conv'), f'up.{i}.upsample.conv', _CONV)
      res *= 2
  add(('norm_out',), 'norm_out', _NORM)
  add(('conv_out',), 'conv_out', _CONV)
  return out
