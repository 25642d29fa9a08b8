"""The original DARTS networks (quark0/darts: cnn/operations.py, cnn/model.py, cnn/model_search.py) in current
PyTorch, with the original's module structure and therefore its state_dict keys: the reference of the conversion
tests (tests/test_convert.py) and of the accelerator check's forward+backward (darts_jax.bench_accelerator).
Needs PyTorch (``pip install -e '.[torch]'``); no other module of the package imports this one at import time.

Differences from the original, none of which touch a parameter: Python 3 (``range``), no ``.cuda()``, alphas as
plain tensors given to the search network, and ``NetworkImageNet``'s final 7x7 average pool written as a global
average pool (the same on the 7x7 map of a 224x224 input; the tests use smaller inputs). Drop path is left out:
the tests compare the networks at drop path probability 0.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

PRIMITIVES = ['none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3', 'sep_conv_5x5',
              'dil_conv_3x3', 'dil_conv_5x5']


class ReLUConvBN(nn.Module):
  def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
    super().__init__()
    self.op = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(C_in, C_out, kernel_size, stride, padding, bias=False),
                            nn.BatchNorm2d(C_out, affine=affine))

  def forward(self, x):
    return self.op(x)


class DilConv(nn.Module):
  def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
    super().__init__()
    self.op = nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation=dilation, groups=C_in, bias=False),
        nn.Conv2d(C_in, C_out, 1, padding=0, bias=False),
        nn.BatchNorm2d(C_out, affine=affine))

  def forward(self, x):
    return self.op(x)


class SepConv(nn.Module):
  def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
    super().__init__()
    self.op = nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C_in, C_in, kernel_size, stride, padding, groups=C_in, bias=False),
        nn.Conv2d(C_in, C_in, 1, padding=0, bias=False),
        nn.BatchNorm2d(C_in, affine=affine),
        nn.ReLU(inplace=False),
        nn.Conv2d(C_in, C_in, kernel_size, 1, padding, groups=C_in, bias=False),
        nn.Conv2d(C_in, C_out, 1, padding=0, bias=False),
        nn.BatchNorm2d(C_out, affine=affine))

  def forward(self, x):
    return self.op(x)


class Identity(nn.Module):
  def forward(self, x):
    return x


class Zero(nn.Module):
  def __init__(self, stride):
    super().__init__()
    self.stride = stride

  def forward(self, x):
    return x.mul(0.) if self.stride == 1 else x[:, :, ::self.stride, ::self.stride].mul(0.)


class FactorizedReduce(nn.Module):
  def __init__(self, C_in, C_out, affine=True):
    super().__init__()
    self.relu = nn.ReLU(inplace=False)
    self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
    self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
    self.bn = nn.BatchNorm2d(C_out, affine=affine)

  def forward(self, x):
    x = self.relu(x)
    return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


OPS = {
    'none': lambda C, stride, affine: Zero(stride),
    'avg_pool_3x3': lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    'max_pool_3x3': lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    'skip_connect': lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine),
    'sep_conv_3x3': lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    'sep_conv_5x5': lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    'sep_conv_7x7': lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine=affine),
    'dil_conv_3x3': lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    'dil_conv_5x5': lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
    'conv_7x1_1x7': lambda C, stride, affine: nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
        nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
        nn.BatchNorm2d(C, affine=affine)),
}


class Cell(nn.Module):
  def __init__(self, genotype, C_prev_prev, C_prev, C, reduction, reduction_prev):
    super().__init__()
    self.preprocess0 = (FactorizedReduce(C_prev_prev, C) if reduction_prev
                        else ReLUConvBN(C_prev_prev, C, 1, 1, 0))
    self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
    op_names, indices = zip(*(genotype.reduce if reduction else genotype.normal))
    self._concat = genotype.reduce_concat if reduction else genotype.normal_concat
    self.multiplier = len(self._concat)
    self._steps = len(op_names) // 2
    self._ops = nn.ModuleList([OPS[name](C, 2 if reduction and index < 2 else 1, True)
                               for name, index in zip(op_names, indices)])
    self._indices = indices

  def forward(self, s0, s1):
    states = [self.preprocess0(s0), self.preprocess1(s1)]
    for i in range(self._steps):
      states.append(self._ops[2 * i](states[self._indices[2 * i]])
                    + self._ops[2 * i + 1](states[self._indices[2 * i + 1]]))
    return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
  def __init__(self, C, num_classes):
    super().__init__()
    self.features = nn.Sequential(
        nn.ReLU(inplace=True), nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
        nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
        nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=True))
    self.classifier = nn.Linear(768, num_classes)

  def forward(self, x):
    x = self.features(x)
    return self.classifier(x.view(x.size(0), -1))


class AuxiliaryHeadImageNet(nn.Module):
  def __init__(self, C, num_classes):
    super().__init__()
    self.features = nn.Sequential(
        nn.ReLU(inplace=True), nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),
        nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
        nn.Conv2d(128, 768, 2, bias=False), nn.ReLU(inplace=True))
    self.classifier = nn.Linear(768, num_classes)

  def forward(self, x):
    x = self.features(x)
    return self.classifier(x.view(x.size(0), -1))


class _Network(nn.Module):
  def _cells(self, genotype, C, layers, C_prev_prev, C_prev, reduction_prev):
    self.cells = nn.ModuleList()
    C_curr = C
    for i in range(layers):
      reduction = i in [layers // 3, 2 * layers // 3]
      C_curr *= 2 if reduction else 1
      cell = Cell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
      reduction_prev = reduction
      self.cells.append(cell)
      C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
      if i == 2 * layers // 3:
        C_to_auxiliary = C_prev
    return C_prev, C_to_auxiliary

  def _run_cells(self, s0, s1):
    logits_aux = None
    for i, cell in enumerate(self.cells):
      s0, s1 = s1, cell(s0, s1)
      if i == 2 * self._layers // 3 and self._auxiliary and self.training:
        logits_aux = self.auxiliary_head(s1)
    return self.classifier(s1.mean((2, 3))), logits_aux


class NetworkCIFAR(_Network):
  def __init__(self, C, num_classes, layers, auxiliary, genotype, in_channels=3):
    super().__init__()
    self._layers, self._auxiliary = layers, auxiliary
    self.stem = nn.Sequential(nn.Conv2d(in_channels, 3 * C, 3, padding=1, bias=False), nn.BatchNorm2d(3 * C))
    C_prev, C_aux = self._cells(genotype, C, layers, 3 * C, 3 * C, False)
    if auxiliary:
      self.auxiliary_head = AuxiliaryHeadCIFAR(C_aux, num_classes)
    self.classifier = nn.Linear(C_prev, num_classes)

  def forward(self, x):
    s = self.stem(x)
    return self._run_cells(s, s)


class NetworkImageNet(_Network):
  def __init__(self, C, num_classes, layers, auxiliary, genotype):
    super().__init__()
    self._layers, self._auxiliary = layers, auxiliary
    self.stem0 = nn.Sequential(
        nn.Conv2d(3, C // 2, kernel_size=3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C // 2),
        nn.ReLU(inplace=True), nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C))
    self.stem1 = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
                               nn.BatchNorm2d(C))
    C_prev, C_aux = self._cells(genotype, C, layers, C, C, True)
    if auxiliary:
      self.auxiliary_head = AuxiliaryHeadImageNet(C_aux, num_classes)
    self.classifier = nn.Linear(C_prev, num_classes)

  def forward(self, x):
    s0 = self.stem0(x)
    return self._run_cells(s0, self.stem1(s0))


class MixedOp(nn.Module):
  def __init__(self, C, stride):
    super().__init__()
    self._ops = nn.ModuleList()
    for primitive in PRIMITIVES:
      op = OPS[primitive](C, stride, False)
      if 'pool' in primitive:
        op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
      self._ops.append(op)

  def forward(self, x, weights):
    return sum(w * op(x) for w, op in zip(weights, self._ops))


class SearchCell(nn.Module):
  def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev):
    super().__init__()
    self.reduction = reduction
    self.preprocess0 = (FactorizedReduce(C_prev_prev, C, affine=False) if reduction_prev
                        else ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False))
    self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
    self._steps, self._multiplier = steps, multiplier
    self._ops = nn.ModuleList([MixedOp(C, 2 if reduction and j < 2 else 1) for i in range(steps) for j in range(2 + i)])

  def forward(self, s0, s1, weights):
    states = [self.preprocess0(s0), self.preprocess1(s1)]
    offset = 0
    for _ in range(self._steps):
      s = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
      offset += len(states)
      states.append(s)
    return torch.cat(states[-self._multiplier:], dim=1)


class SearchNetwork(nn.Module):
  """``model_search.Network`` with its alphas passed to ``forward``."""

  def __init__(self, C, num_classes, layers, steps=4, multiplier=4, stem_multiplier=3, in_channels=3):
    super().__init__()
    C_curr = stem_multiplier * C
    self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
    C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
    self.cells = nn.ModuleList()
    reduction_prev = False
    for i in range(layers):
      reduction = i in [layers // 3, 2 * layers // 3]
      C_curr *= 2 if reduction else 1
      self.cells.append(SearchCell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev))
      reduction_prev = reduction
      C_prev_prev, C_prev = C_prev, multiplier * C_curr
    self.classifier = nn.Linear(C_prev, num_classes)

  def forward(self, x, alphas_normal, alphas_reduce):
    s0 = s1 = self.stem(x)
    for cell in self.cells:
      weights = F.softmax(alphas_reduce if cell.reduction else alphas_normal, dim=-1)
      s0, s1 = s1, cell(s0, s1, weights)
    return self.classifier(s1.mean((2, 3)))


def randomize_(module, seed=0):
  """Random BN affine parameters and running statistics (PyTorch initialises them to 1/0), so that a scale, shift,
  mean or variance sent to the wrong place changes the outputs."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=generator))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=generator))
        if m.affine:
          m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=generator))
          m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=generator))
  return module
