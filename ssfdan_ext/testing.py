"""Label layouts for tests and benchmarks: street-like scenes and the checkerboard worst case.

Discriminator costs depend on how labels are laid out (large regions vs. fragmented ones), so benchmarks use
maps shaped like driving scenes rather than noise. Class ids follow the Cityscapes train ids
(0 road, 1 sidewalk, 2 building, 3 wall, 4 fence, 5 pole, 6 traffic light, 7 traffic sign, 8 vegetation,
9 terrain, 10 sky, 11 person, 12 rider, 13 car, 14 truck, 15 bus, 16 train, 17 motorcycle, 18 bicycle);
with fewer classes an id k becomes k mod C.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .types import IGNORE


def _rand(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _paint(canvas: Tensor, cls: int, top: float, bottom: float, left: float, right: float) -> None:
    H, W = canvas.shape
    r0, r1 = max(0, int(top * H)), min(H, max(int(top * H) + 1, int(bottom * H)))
    c0, c1 = max(0, int(left * W)), min(W, max(int(left * W) + 1, int(right * W)))
    canvas[r0:r1, c0:c1] = cls


def street_scene(height: int, width: int, gen: torch.Generator, horizon: tuple[float, float] = (0.38, 0.48),
                 vehicles: tuple[int, int] = (2, 8), people: tuple[int, int] = (1, 6)) -> Tensor:
    """One (H, W) int64 street-like label map with the 19 Cityscapes classes and an IGNORE ego-vehicle strip.

    ``horizon`` is the range of the horizon's height (a fraction of H from the top: sky and buildings lie above
    it), ``vehicles`` and ``people`` the ranges [lo, hi) of the number of vehicles and of people/riders; other
    values give another label distribution from the same generator (the defaults draw exactly as before).
    """
    canvas = torch.full((height, width), 10, dtype=torch.int64)  # sky
    horizon = _rand(gen, *horizon)
    x = 0.0
    while x < 1.0:  # a skyline of buildings, walls and trees
        span = _rand(gen, 0.06, 0.2)
        kind = int(torch.randint(0, 10, (), generator=gen))
        cls = 8 if kind < 3 else 3 if kind == 3 else 2
        _paint(canvas, cls, _rand(gen, 0.05, horizon - 0.05), horizon + 0.05, x, x + span)
        x += span
    _paint(canvas, 9, horizon, horizon + 0.06, 0.0, 1.0)  # terrain strip
    _paint(canvas, 4, horizon - 0.04, horizon + 0.04, _rand(gen, 0.0, 0.3), _rand(gen, 0.35, 0.6))  # fence
    rows = torch.linspace(0, 1, height).unsqueeze(1)
    cols = torch.linspace(0, 1, width).unsqueeze(0)
    below = rows > horizon + 0.04
    depth = ((rows - horizon) / (1 - horizon)).clamp(min=0)  # 0 at the horizon, 1 at the bottom
    half_road = 0.08 + 0.5 * depth
    canvas[below & (cols < 0.5)] = 9  # terrain left of the road, vegetation right of it
    canvas[below & (cols >= 0.5)] = 8
    canvas[below & ((cols - 0.5).abs() <= half_road + 0.2 * depth)] = 1  # sidewalks
    canvas[below & ((cols - 0.5).abs() <= half_road)] = 0  # road
    for _ in range(int(torch.randint(2, 6, (), generator=gen))):  # poles with signs or lights
        px = _rand(gen, 0.02, 0.98)
        top = _rand(gen, 0.15, horizon - 0.05)
        _paint(canvas, 5, top, horizon + _rand(gen, 0.05, 0.2), px, px + 0.006)
        _paint(canvas, 7 if _rand(gen, 0, 1) < 0.6 else 6, top - 0.03, top + 0.02, px - 0.012, px + 0.018)
    for _ in range(int(torch.randint(*vehicles, (), generator=gen))):  # vehicles on the road
        y = _rand(gen, horizon + 0.05, 0.85)
        size = 0.05 + 0.25 * (y - horizon)
        cx = 0.5 + _rand(gen, -1, 1) * (0.08 + 0.5 * (y - horizon) / (1 - horizon))
        cls = [13, 13, 13, 14, 15, 16][int(torch.randint(0, 6, (), generator=gen))]
        _paint(canvas, cls, y - size, y, cx - size, cx + size)
    for _ in range(int(torch.randint(*people, (), generator=gen))):  # people, riders and two-wheelers
        y = _rand(gen, horizon + 0.03, 0.8)
        size = 0.02 + 0.1 * (y - horizon)
        cx = _rand(gen, 0.05, 0.95)
        kind = int(torch.randint(0, 4, (), generator=gen))
        if kind < 2:
            _paint(canvas, 11, y - 2.5 * size, y, cx - 0.4 * size, cx + 0.4 * size)
        else:
            _paint(canvas, 17 if kind == 2 else 18, y - size, y, cx - 0.8 * size, cx + 0.8 * size)
            _paint(canvas, 12, y - 2.2 * size, y - size, cx - 0.3 * size, cx + 0.3 * size)
    _paint(canvas, IGNORE, 0.93, 1.0, 0.0, 1.0)  # ego vehicle
    return canvas


def street_labels(batch: int, height: int, width: int, num_classes: int = 19, seed: int = 0) -> Tensor:
    """A batch of street-like label maps, deterministic per seed.

    Shapes: returns (batch, height, width) int64 with values in [0, num_classes) or IGNORE.
    """
    gen = torch.Generator().manual_seed(seed)
    maps = torch.stack([street_scene(height, width, gen) for _ in range(batch)])
    labelled = maps != IGNORE
    return torch.where(labelled, maps % num_classes, maps)


def checkerboard_labels(batch: int, height: int, width: int, num_classes: int = 19, cell: int = 8) -> Tensor:
    """Classes cycling over ``cell`` x ``cell`` squares: every feature cell's neighbours differ (worst case).

    Shapes: returns (batch, height, width) int64.
    """
    rows = torch.arange(height).unsqueeze(1) // cell
    cols = torch.arange(width).unsqueeze(0) // cell
    board = (rows * 7 + cols) % num_classes
    return board.unsqueeze(0).expand(batch, height, width).contiguous()
