"""What every chapter's first cells use: the course's links (Colab, the library's source on GitHub)
and `setup_notebook()`, which makes a notebook's outputs the same from run to run (nbval re-runs
the chapters as tests)."""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch

from ..validation import check_int

__all__ = ["REPO", "BRANCH", "source_url", "colab_url", "setup_notebook"]

REPO = "mini-gpt/mini_gpt"  # the course's GitHub repository (Colab badges, source links)
BRANCH = "main"


def source_url(module: str) -> str:
    """The GitHub page of a part of the library: a module's file, or a package's folder.

    source_url("masks") -> .../blob/main/mini_gpt/masks.py, source_url("course.sampling") ->
    .../blob/main/mini_gpt/course/sampling.py, source_url("viz") -> .../tree/main/mini_gpt/viz/.
    The name may start with "mini_gpt." and end with ".py"; it must name a module of mini_gpt.
    """
    if not isinstance(module, str):
        raise TypeError(f"module must be a str naming a module of mini_gpt, got {module!r}")
    name = module.removeprefix("mini_gpt.").removesuffix(".py")
    # the installed package says what is a folder and what a file: a package split later keeps its links
    try:
        spec = importlib.util.find_spec(f"mini_gpt.{name}") if name else None
    except (ImportError, ValueError):  # a parent that is not a package, or a malformed name
        spec = None
    if spec is None:
        raise ValueError(f"module must name a module of mini_gpt (e.g. 'masks', 'course.sampling'), got {module!r}")
    path = name.replace(".", "/")
    if spec.submodule_search_locations is not None:
        return f"https://github.com/{REPO}/tree/{BRANCH}/mini_gpt/{path}/"
    return f"https://github.com/{REPO}/blob/{BRANCH}/mini_gpt/{path}.py"


def colab_url(notebook: str) -> str:
    """Where a chapter opens in Colab, e.g. colab_url("causal_masks")."""
    name = notebook.removesuffix(".ipynb")
    return f"https://colab.research.google.com/github/{REPO}/blob/{BRANCH}/chapters/{name}.ipynb"


def setup_notebook(seed: int = 0, threads: int = 1) -> None:
    """Make a notebook's outputs reproducible: seed torch, pin the CPU thread count, silence
    progress bars and version-dependent warnings.

    One thread by default: float sums can differ in their last digits between thread counts,
    and two threads slow down a lot when another process takes a core. The course's models are
    small enough that one thread is fast.
    """
    threads = check_int("threads", threads, min=1)
    os.environ["TQDM_DISABLE"] = "1"  # tqdm reads it when a bar is created
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    # deprecation notices depend on the installed versions: they would make a cell's stderr
    # differ from one machine to another without saying anything about the course
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if importlib.util.find_spec("matplotlib") is not None:  # figures need mini_gpt[book]; the rest works without
        import matplotlib

        matplotlib.rcParams.update({"figure.dpi": 100, "axes.spines.top": False, "axes.spines.right": False})
