"""Flax param paths of `ADMUNet` / `ADMClassifier` -> guided-diffusion state-dict keys.

The map is derived from the config alone (a walk of guided-diffusion's block layout), so the
converter's check against `jax.eval_shape` of the Flax module is an independent test of both.
"""

_CONV = (('kernel', 'weight', 'conv'), ('bias', 'bias', 'identity'))
_LINEAR = (('kernel', 'weight', 'linear'), ('bias', 'bias', 'identity'))
_CONV1D = (('kernel', 'weight', 'conv1d_to_dense'), ('bias', 'bias', 'identity'))  # 1x1 Conv1d
_NORM = (('scale', 'weight', 'identity'), ('bias', 'bias', 'identity'))


def name_map(config):
  """{flax path (tuple, relative to variables['params']): (torch key, transform name)}.

  Works for `ADMConfig` (family 'adm') and `ClassifierConfig` (family 'adm_classifier').
  """
  if config.family not in ('adm', 'adm_classifier'):
    raise ValueError(f"adm_map: family must be 'adm' or 'adm_classifier', got {config.family!r}")
  out = {}

  def add(flax_prefix, torch_prefix, leaves):
    for flax_leaf, torch_leaf, transform in leaves:
      out[tuple(flax_prefix) + (flax_leaf,)] = (f'{torch_prefix}.{torch_leaf}', transform)

  def block(i, j, up=False):  # Flax module name and torch prefix of TimestepEmbedSequential i, j
    kind = 'output_blocks' if up else 'input_blocks'
    return f'{kind}_{i}_{j}', f'{kind}.{i}.{j}'

  def resblock(names, c_in, c_out):
    flax_name, torch_prefix = names
    for sub, leaves in (('in_layers_0', _NORM), ('in_layers_2', _CONV),
                        ('emb_layers_1', _LINEAR), ('out_layers_0', _NORM),
                        ('out_layers_3', _CONV)):
      add((flax_name, sub), f'{torch_prefix}.{sub.replace("_layers_", "_layers.")}', leaves)
    if c_in != c_out:
      add((flax_name, 'skip_connection'), f'{torch_prefix}.skip_connection', _CONV)

  def attention(names):
    flax_name, torch_prefix = names
    add((flax_name, 'norm'), f'{torch_prefix}.norm', _NORM)
    add((flax_name, 'qkv'), f'{torch_prefix}.qkv', _CONV1D)
    add((flax_name, 'proj_out'), f'{torch_prefix}.proj_out', _CONV1D)

  widths = [int(m * config.model_channels) for m in config.channel_mult]
  attention_ds = {config.image_size // r for r in config.attention_resolutions}
  add(('time_embed_0',), 'time_embed.0', _LINEAR)
  add(('time_embed_2',), 'time_embed.2', _LINEAR)
  if config.family == 'adm' and config.num_classes:
    out[('label_emb', 'embedding')] = ('label_emb.weight', 'identity')

  # Encoder: input_blocks.0 is the stem conv; then per level num_res_blocks ResBlocks (each
  # optionally followed by attention) and, except at the last level, a down block.
  add(('input_blocks_0_0',), 'input_blocks.0.0', _CONV)
  ch, ds, i = widths[0], 1, 1
  skips = [ch]
  for level, c in enumerate(widths):
    for _ in range(config.num_res_blocks):
      resblock(block(i, 0), ch, c)
      ch = c
      if ds in attention_ds:
        attention(block(i, 1))
      skips.append(ch)
      i += 1
    if level != len(widths) - 1:
      if config.resblock_updown:
        resblock(block(i, 0), ch, ch)
      elif config.conv_resample:
        add((f'input_blocks_{i}_0', 'op'), f'input_blocks.{i}.0.op', _CONV)
      skips.append(ch)
      i += 1
      ds *= 2

  resblock(('middle_block_0', 'middle_block.0'), ch, ch)
  attention(('middle_block_1', 'middle_block.1'))
  resblock(('middle_block_2', 'middle_block.2'), ch, ch)

  if config.family == 'adm_classifier':
    add(('out_0',), 'out.0', _NORM)
    if config.pool == 'attention':
      # positional_embedding: torch (C, HW + 1) -> Flax (HW + 1, C).
      out[('out_2', 'positional_embedding')] = ('out.2.positional_embedding', 'transpose')
      add(('out_2', 'qkv_proj'), 'out.2.qkv_proj', _CONV1D)
      add(('out_2', 'c_proj'), 'out.2.c_proj', _CONV1D)
    else:  # 'adaptive': norm, SiLU, AdaptiveAvgPool2d, 1x1 conv, Flatten
      add(('out_3',), 'out.3', _CONV)
    return out

  # Decoder: per level (deepest first) num_res_blocks + 1 ResBlocks on [h, skip], each
  # optionally followed by attention; the last of a level (but level 0) adds an up block.
  i = 0
  for level in reversed(range(len(widths))):
    c = widths[level]
    for j in range(config.num_res_blocks + 1):
      resblock(block(i, 0, up=True), ch + skips.pop(), c)
      ch, k = c, 1
      if ds in attention_ds:
        attention(block(i, k, up=True))
        k += 1
      if level and j == config.num_res_blocks:
        if config.resblock_updown:
          resblock(block(i, k, up=True), ch, ch)
        elif config.conv_resample:
          add((f'output_blocks_{i}_{k}', 'conv'), f'output_blocks.{i}.{k}.conv', _CONV)
        ds //= 2
      i += 1
  add(('out_0',), 'out.0', _NORM)
  add(('out_2',), 'out.2', _CONV)
  return out
