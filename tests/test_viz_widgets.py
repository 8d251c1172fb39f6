import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from companion import viz, widgets  # noqa: E402
from companion.nn import CausalMask  # noqa: E402
from companion.train import History  # noqa: E402


def test_plots_have_titles_and_labels():
    ax = viz.plot_mask(CausalMask(), n=5)
    assert ax.get_xlabel() == "key position" and "Causal" in ax.get_title()
    ax = viz.plot_attention(torch.softmax(torch.randn(1, 4, 6), -1), title="w")
    assert ax.get_title() == "w" and ax.get_ylabel() == "query position"
    h = History(steps=[0, 1, 2], losses=[3.0, 2.0, 1.0])
    ax = viz.plot_curves({"model": h, "raw": [1, 2]}, hlines={"bound": 0.5})
    assert len(ax.get_lines()) == 3 and ax.get_legend() is not None
    plt.close("all")


def test_plot_errors():
    with pytest.raises(ValueError, match="n \\(number"):
        viz.plot_mask(CausalMask())
    with pytest.raises(ValueError, match="2-D"):
        viz.plot_attention(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="at least one"):
        viz.plot_curves({})


def test_mask_explorer_builds_every_family():
    for fam in widgets.MASK_FAMILIES:
        d = widgets.build_mask(fam, 10).dense(10)
        assert d.shape == (1, 10, 10) and d[0].diagonal().all() or fam == "set-based"
    w = widgets.mask_explorer(12)
    family = w.children[0].children[0]
    family.value = "sliding window"  # triggers a redraw without error
    with pytest.raises(ValueError, match="segments must be"):
        widgets.build_mask("segments (packed docs)", 8, segments="a,b")
    plt.close("all")
