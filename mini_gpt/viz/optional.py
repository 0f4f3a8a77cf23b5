"""The optional libraries the pictures need, imported only when a picture is drawn.

matplotlib (plots), ipywidgets (the kernel-backed explorer) and IPython (showing HTML in a
notebook) come with `pip install 'mini_gpt[book]'`. Nothing imports them at `import mini_gpt.viz`,
so the HTML explorer and the explorer's numbers work without them; a function that needs one says
how to install it.
"""

from __future__ import annotations

INSTALL_HINT = "pip install 'mini_gpt[book]'"


def import_matplotlib():
    """matplotlib (with `matplotlib.figure` loaded), or an ImportError saying how to install it."""
    try:
        import matplotlib
        import matplotlib.figure
    except ImportError as exc:
        raise ImportError(
            f"mini_gpt.viz needs matplotlib to draw plots: {INSTALL_HINT} (or pip install matplotlib)"
        ) from exc
    return matplotlib


def import_pyplot():
    """matplotlib.pyplot, for functions that make a new figure themselves."""
    import_matplotlib()
    import matplotlib.pyplot as plt

    return plt


def import_widgets():
    """ipywidgets, or an ImportError naming what works without it."""
    try:
        import ipywidgets
    except ImportError as exc:
        raise ImportError(
            f"AttentionExplorer's widget needs ipywidgets (and a Jupyter kernel): {INSTALL_HINT} "
            f"(or pip install ipywidgets). Without it, use attention_html(...) or explorer.plot()."
        ) from exc
    return ipywidgets


def import_ipython_display():
    """IPython.display, to show HTML or a widget as a cell's output."""
    try:
        from IPython import display
    except ImportError as exc:
        raise ImportError(f"showing HTML in a notebook needs IPython: {INSTALL_HINT}") from exc
    return display
