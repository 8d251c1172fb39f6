"""ipywidgets explorers. In the static book the controls render with their initial state;
run the chapter as a notebook to make them live."""

from __future__ import annotations

from typing import Callable, Sequence

import ipywidgets as W
import matplotlib.pyplot as plt
import torch

from .nn.masks import (
    CausalMask, FullMask, Mask, PrefixLMMask, SegmentMask, SetMask, SlidingWindowMask,
)
from .viz import plot_mask

MASK_FAMILIES = ("causal", "bidirectional", "prefix-LM", "sliding window", "segments (packed docs)", "set-based")


def _lengths(text: str, name: str) -> list[int]:
    try:
        out = [int(x) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers, got {text!r}") from None
    if not out or min(out) < 0:
        raise ValueError(f"{name} must hold at least one non-negative integer, got {text!r}")
    return out


def build_mask(family: str, n: int, prefix: int = 4, window: int = 4, segments: str = "3,4,2") -> Mask:
    """The mask the explorer shows for one setting of its controls.

    For ``"segments"`` the comma-separated lengths split the ``n`` positions into documents;
    for ``"set-based"`` they are the lengths of the set elements that follow a prefix of
    ``prefix`` tokens (the remaining positions are the suffix).
    """
    if family not in MASK_FAMILIES:
        raise ValueError(f"family must be one of {MASK_FAMILIES}, got {family!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if family == "causal":
        return CausalMask()
    if family == "bidirectional":
        return FullMask()
    if family == "prefix-LM":
        return PrefixLMMask(min(prefix, n))
    if family == "sliding window":
        return SlidingWindowMask(window)
    lens = _lengths(segments, "segments")
    if family.startswith("segments"):
        ids = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))[:n]
        ids = torch.cat([ids, torch.full((n - len(ids),), len(lens))])  # the rest: one more document
        return CausalMask() & SegmentMask(ids)
    ids = torch.full((n,), -1)
    pos = min(prefix, n)
    for i, length in enumerate(lens):
        ids[pos:pos + length] = i
        pos += length
    return CausalMask() & SetMask(ids)


def mask_explorer(n: int = 16) -> W.Widget:
    """Pick a mask family and its parameters; see the boolean mask and its visible fraction."""
    family = W.Dropdown(options=MASK_FAMILIES, value="set-based", description="mask")
    size = W.IntSlider(value=n, min=2, max=64, description="n tokens")
    prefix = W.IntSlider(value=3, min=0, max=32, description="prefix")
    window = W.IntSlider(value=4, min=1, max=32, description="window")
    segs = W.Text(value="3,4,2", description="segments", tooltip="comma-separated segment lengths")
    out = W.Output()

    def draw(*_):
        with out:
            out.clear_output(wait=True)
            try:
                m = build_mask(family.value, size.value, prefix.value, window.value, segs.value)
            except ValueError as err:
                print(err)
                return
            dense = m.dense(size.value)[0]
            fig, ax = plt.subplots(figsize=(4.2, 4.2))
            plot_mask(dense, ax=ax, title=f"{family.value}: {dense.float().mean():.0%} of pairs visible")
            plt.show()

    for w in (family, size, prefix, window, segs):
        w.observe(draw, names="value")
    draw()
    return W.HBox([W.VBox([family, size, prefix, window, segs]), out])


def redraw_on(controls: Sequence[W.Widget], draw: Callable[[], None], *, vertical: bool = False) -> W.Widget:
    """The observe-and-redraw wiring every explorer repeats.

    ``draw()`` makes one figure from the controls' current values; it is called once now and
    again whenever any control's value changes, each time into the same cleared output area.
    Returns the controls (stacked) beside the output, or above it with ``vertical``.
    """
    controls = list(controls)
    if not controls or not all(isinstance(w, W.Widget) for w in controls):
        raise ValueError("controls must be a non-empty sequence of ipywidgets")
    if not callable(draw):
        raise ValueError(f"draw must be callable, got {type(draw).__name__}")
    out = W.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            draw()
            plt.show()

    for w in controls:
        w.observe(redraw, names="value")
    redraw()
    return W.VBox([*controls, out]) if vertical else W.HBox([W.VBox(controls), out])
