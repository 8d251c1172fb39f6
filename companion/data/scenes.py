"""Procedural images with captions, for the vision-language chapters (no image-caption data ships offline).

Small RGB canvases with coloured shapes drawn from 6 x 6 bitmaps, and templated captions over a
closed word list. Everything is generated from a ``torch.Generator``: the same seed gives the
same scenes.

* :func:`two_object_scenes` -- two objects side by side (the ARO / NegCLIP chapter);
  :func:`mirrored` -- the same scenes with the objects exchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.75, 0.2), "blue": (0.15, 0.3, 0.95), "yellow": (0.95, 0.85, 0.1),
    "purple": (0.6, 0.2, 0.8), "orange": (1.0, 0.55, 0.0), "cyan": (0.1, 0.85, 0.9), "white": (1.0, 1.0, 1.0),
}

_BITMAPS = {
    "square": ["######", "######", "######", "######", "######", "######"],
    "circle": [".####.", "######", "######", "######", "######", ".####."],
    "triangle": ["..##..", "..##..", ".####.", ".####.", "######", "######"],
    "cross": ["..##..", "..##..", "######", "######", "..##..", "..##.."],
    "ring": ["######", "#....#", "#....#", "#....#", "#....#", "######"],
    "bar": ["......", "######", "######", "######", "######", "......"],
}
SHAPES: tuple[str, ...] = tuple(_BITMAPS)
OBJECT_SIZE = 6


def shape_mask(shape: str) -> Tensor:
    """The 6 x 6 float mask (1 = inside) of a shape name in :data:`SHAPES`."""
    if shape not in _BITMAPS:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    return torch.tensor([[c == "#" for c in row] for row in _BITMAPS[shape]], dtype=torch.float32)


def draw_object(canvas: Tensor, color: str, shape: str, top: int, left: int) -> Tensor:
    """Paint one object into ``canvas`` (3, H, W) in place at (top, left); returns the canvas."""
    if canvas.ndim != 3 or canvas.shape[0] != 3:
        raise ValueError(f"canvas must have shape (3, H, W), got {tuple(canvas.shape)}")
    if color not in COLORS:
        raise ValueError(f"color must be one of {tuple(COLORS)}, got {color!r}")
    _, H, W = canvas.shape
    if not (0 <= top <= H - OBJECT_SIZE and 0 <= left <= W - OBJECT_SIZE):
        raise ValueError(f"object at (top={top}, left={left}) does not fit a {H} x {W} canvas")
    m = shape_mask(shape)  # (6, 6)
    rgb = torch.tensor(COLORS[color])[:, None, None]  # (3, 1, 1)
    patch = canvas[:, top:top + OBJECT_SIZE, left:left + OBJECT_SIZE]
    patch.mul_(1 - m).add_(rgb * m)
    return canvas


@dataclass
class TwoObjectScenes:
    """A batch of two-object scenes: ``images`` (N, 3, H, W) and the ids of the objects.

    ``colors[:, 0]``/``shapes[:, 0]`` describe the object on the **left**, index 1 the one on the right
    (indices into :data:`COLORS` and :data:`SHAPES`).
    """

    images: Tensor  # (N, 3, H, W) float in [0, 1]
    colors: Tensor  # (N, 2) long
    shapes: Tensor  # (N, 2) long
    left: Tensor | None = None  # (N, 2) long: column of each object's top-left corner
    top: Tensor | None = None  # (N, 2) long: row of each object's top-left corner

    def __len__(self) -> int:
        return self.images.shape[0]


def two_object_scenes(n: int, generator: torch.Generator, height: int = 8, width: int = 24, jitter: int = 2,
                      noise: float = 0.05, n_colors: int = len(COLORS), n_shapes: int = len(SHAPES),
                      layout: str = "free") -> TwoObjectScenes:
    """``n`` scenes with two non-overlapping objects side by side.

    ``layout="free"``: the two objects sit anywhere along the width (uniform over all non-overlapping
    placements), so whether an object is "the left one" depends on where the *other* one is.
    ``layout="halves"``: one object in each half, moved by up to ``jitter`` pixels.

    The two objects always differ in colour *and* in shape, so swapping the objects or swapping only
    their colours changes the scene. The vertical position of each object is uniform; Gaussian pixel noise of std ``noise`` is added. ``n_colors``/``n_shapes`` restrict the
    palette (fewer objects make the mirrored scene common in a batch).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if layout not in ("free", "halves"):
        raise ValueError(f"layout must be 'free' or 'halves', got {layout!r}")
    if not (2 <= n_colors <= len(COLORS)) or not (2 <= n_shapes <= len(SHAPES)):
        raise ValueError(f"n_colors must lie in [2, {len(COLORS)}] and n_shapes in [2, {len(SHAPES)}], "
                         f"got {n_colors}, {n_shapes}")
    if width < 2 * OBJECT_SIZE + (2 * jitter if layout == "halves" else 0) or height < OBJECT_SIZE:
        raise ValueError(f"a {height} x {width} canvas cannot hold two {OBJECT_SIZE}-pixel objects with "
                         f"jitter {jitter}")
    # two distinct colours and two distinct shapes per scene: the first two entries of a random permutation
    colors = torch.rand(n, n_colors, generator=generator).argsort(dim=1)[:, :2]  # (N, 2)
    shapes = torch.rand(n, n_shapes, generator=generator).argsort(dim=1)[:, :2]  # (N, 2)
    if layout == "halves":  # one object per half, jittered: the side of an object gives its role away
        half = width // 2
        side = torch.arange(2)  # 0 = left half, 1 = right half
        base = (half - OBJECT_SIZE) // 2 + side * half  # (2,)
        dx = torch.randint(-jitter, jitter + 1, (n, 2), generator=generator)
        left = torch.minimum(torch.maximum(base + dx, side * half), side * half + half - OBJECT_SIZE)  # (N, 2)
    else:  # "free": any non-overlapping horizontal placement, uniformly; only the order is fixed
        u = torch.randint(0, width - 2 * OBJECT_SIZE + 1, (n, 2), generator=generator).sort(dim=1).values
        left = u + torch.tensor([0, OBJECT_SIZE])  # (N, 2): x of the left object < x of the right one
    top = torch.randint(0, height - OBJECT_SIZE + 1, (n, 2), generator=generator)  # (N, 2)
    return render_scenes(colors, shapes, left, top, height, width, noise, generator)


def render_scenes(colors: Tensor, shapes: Tensor, left: Tensor, top: Tensor, height: int, width: int,
                  noise: float, generator: torch.Generator | None) -> TwoObjectScenes:
    """Paint scenes from object ids and corners, all (N, 2) long; the objects must not overlap."""
    for name, t in (("colors", colors), ("shapes", shapes), ("left", left), ("top", top)):
        if t.ndim != 2 or t.shape[1] != 2 or t.is_floating_point() or t.shape[0] != colors.shape[0]:
            raise ValueError(f"{name} must be an integer tensor of shape (N, 2), got {tuple(t.shape)}")
    n = colors.shape[0]
    masks = torch.stack([shape_mask(s) for s in SHAPES])[shapes]  # (N, 2, 6, 6)
    rgb = torch.tensor(list(COLORS.values()))[colors]  # (N, 2, 3)
    canvas = torch.zeros(n, height, width, 3)  # channels last while painting
    r = torch.arange(OBJECT_SIZE)
    rows = top[..., None, None] + r[:, None]  # (N, 2, 6, 1)
    cols = left[..., None, None] + r[None, :]  # (N, 2, 1, 6)
    idx = torch.arange(n)[:, None, None, None]
    canvas[idx, rows, cols] = masks[..., None] * rgb[:, :, None, None, :]  # objects never overlap
    images = canvas.permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
    if noise:
        images = (images + noise * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    return TwoObjectScenes(images=images, colors=colors, shapes=shapes, left=left, top=top)


def mirrored(scenes: TwoObjectScenes, generator: torch.Generator | None = None, noise: float = 0.05) -> TwoObjectScenes:
    """The same scenes with the two objects exchanged (same places, fresh noise): "B left of A"."""
    if scenes.left is None or scenes.top is None:
        raise ValueError("scenes must carry their object positions (left, top) to be mirrored")
    _, _, h, w = scenes.images.shape
    return render_scenes(scenes.colors.flip(1), scenes.shapes.flip(1), scenes.left, scenes.top, h, w, noise,
                         generator)
