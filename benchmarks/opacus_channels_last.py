# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Opacus's per-sample conv gradients are wrong on a channels-last input.

One ``Conv2d`` fed a channels-last tensor: Opacus's ``GradSampleModule``
per-sample weight gradients against ``torch.func.vmap(grad(...))``. Opacus's
``unfold2d`` (``opacus/utils/tensor_utils.py``, used by its conv grad sampler
and, for a layer without a norm sampler, by ghost clipping) takes the batch and
channel strides from the tensor but writes the spatial strides of a standard
(NCHW) layout into ``as_strided``; on a channels-last tensor with two or more
channels it reads the wrong elements. With one channel both layouts have the
same spatial strides, and a standard-layout copy
(``x.clone(memory_format=torch.contiguous_format)``) is exact.

A channels-last tensor arises without being asked for: permuting a
one-channel NHWC array to NCHW gives one that counts as contiguous, so
``.contiguous()`` keeps it, and the first convolution's output (the second
convolution's input) then comes out channels-last.

  python benchmarks/opacus_channels_last.py      # seconds; torch + opacus only
"""

from __future__ import annotations

import math
import sys
import warnings

import opacus
import torch
from opacus import GradSampleModule
try:  # ghost clipping: opacus >= 1.5
  from opacus.grad_sample import GradSampleModuleFastGradientClipping
except ImportError:
  GradSampleModuleFastGradientClipping = None
from torch.func import functional_call, grad, vmap


def relative_errors(in_channels: int, layout: str, *, seed: int = 0) -> dict[str, float]:
  """Opacus against ``torch.func`` on one Conv2d: relative errors.

  ``weight``, ``bias``: ``||G_opacus - G_func|| / ||G_func||`` of the hooks'
  per-sample gradients; ``ghost norms``: the same for the per-sample gradient
  norms of ghost clipping (``GradSampleModuleFastGradientClipping``).
  """
  torch.manual_seed(seed)
  conv = torch.nn.Conv2d(in_channels, 3, 3, padding=1)
  x = torch.randn(4, in_channels, 6, 5)
  if layout == 'channels_last':
    x = x.to(memory_format=torch.channels_last)
  loss = lambda out: (out ** 2).sum()
  params = {k: v.detach() for k, v in conv.named_parameters()}
  want = vmap(grad(lambda p, xi: loss(functional_call(conv, p, (xi[None],)))),
              in_dims=(None, 0))(params, x)
  model = GradSampleModule(conv, loss_reduction='sum')
  loss(model(x)).backward()
  errors = {k: float((p.grad_sample - want[k]).norm() / want[k].norm())
            for k, p in model._module.named_parameters()}  # pylint: disable=protected-access
  model._close()  # pylint: disable=protected-access
  if GradSampleModuleFastGradientClipping is None:
    return errors | {'ghost norms': math.nan}
  conv.zero_grad()
  ghost = GradSampleModuleFastGradientClipping(conv, max_grad_norm=1.0, use_ghost_clipping=True,
                                               loss_reduction='sum')
  loss(ghost(x)).backward()
  norms = torch.cat([g.flatten(1) for g in want.values()], 1).norm(dim=1)
  errors['ghost norms'] = float((ghost.get_norm_sample() - norms).norm() / norms.norm())
  return errors


def main() -> int:
  # The module's input needs no gradient here; Opacus's hooks fire all the same.
  warnings.filterwarnings('ignore', message='Full backward hook')
  print(f'torch {torch.__version__}, opacus {opacus.__version__}'
        + ('' if GradSampleModuleFastGradientClipping else ' (no ghost clipping: norms not run)'))
  print('| input channels | input layout | weight rel. error | bias rel. error | '
        'ghost norms rel. error |')
  print('|---:|---|---:|---:|---:|')
  wrong = {}
  for channels in (1, 2, 4):
    for layout in ('contiguous', 'channels_last'):
      err = relative_errors(channels, layout)
      wrong[(channels, layout)] = (err['weight'] > 1e-4,
                                   err['ghost norms'] > 1e-4 or math.isnan(err['ghost norms']))
      ghost_cell = '-' if math.isnan(err['ghost norms']) else f'{err["ghost norms"]:.2g}'
      print(f'| {channels} | {layout} | {err["weight"]:.2g} | {err["bias"]:.2g} | {ghost_cell} |')
  # The finding: wrong exactly for channels-last inputs with >= 2 channels.
  ghost = GradSampleModuleFastGradientClipping is not None
  expected = {key: (key[0] >= 2 and key[1] == 'channels_last',
                    key[0] >= 2 and key[1] == 'channels_last' or not ghost) for key in wrong}
  print('reproduced' if wrong == expected else f'NOT reproduced: wrong = {wrong}')
  return 0 if wrong == expected else 1


if __name__ == '__main__':
  sys.exit(main())
