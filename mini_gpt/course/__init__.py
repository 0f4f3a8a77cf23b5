"""What the course's chapters share: notebook setup, small models, the shared Shakespeare model,
figures and exercise checks, one module per chapter.

The chapters build each mechanism by hand and compare it with the library. This package holds
what a notebook would otherwise paste from another, and re-exports all of it, so a chapter
writes `from mini_gpt import course` and then `course.check_causal_mask(my_mask)`:

- `notebook`: `setup_notebook()` (seeds, one CPU thread, no progress bars, no version-dependent
  warnings: what keeps a notebook's outputs the same from run to run), the Colab and source links.
- `shared`: `small_model()`, `small_config()`, `shakespeare_text()`, `char_tokenizer()`,
  `bpe_tokenizer()`, `SHAKESPEARE_LINE`, and the shared trained model (`shakespeare_model()`).
- `figures`: `draw_pipeline()`, the whole model with the chapter's part highlighted.
- one module per chapter, named like its notebook (`causal_masks`, `sampling`, ...): that
  chapter's figures and its exercise checks, `check_*(fn)`. Each runs the reader's function on
  several inputs, compares it with the library (or PyTorch), and prints a ✓ line when it agrees
  (it returns None, so the cell shows only that line). A wrong answer raises an AssertionError
  that says what differs and, for the usual mistakes, what the mistake probably is. A function
  that still returns None (an exercise not started yet) gets a reminder, not an error.
- `checking`: the harness every check runs on; `crashsim`: the simulated crashes of the
  checkpointing chapter.

`course` sits on top of the library: nothing in `mini_gpt` imports it.
"""

from __future__ import annotations

from . import (
    autoregressive_loss,
    causal_masks,
    checkpointing,
    crashsim,
    evaluation,
    figures,
    lora,
    modern_blocks,
    notebook,
    overview,
    rope,
    sampling,
    shared,
    the_full_gpt,
    tokens,
    training,
    transformer_blocks,
)
from .autoregressive_loss import *  # noqa: F403
from .causal_masks import *  # noqa: F403
from .checkpointing import *  # noqa: F403
from .crashsim import *  # noqa: F403
from .evaluation import *  # noqa: F403
from .figures import *  # noqa: F403
from .lora import *  # noqa: F403
from .modern_blocks import *  # noqa: F403
from .notebook import *  # noqa: F403
from .overview import *  # noqa: F403
from .rope import *  # noqa: F403
from .sampling import *  # noqa: F403
from .shared import *  # noqa: F403
from .the_full_gpt import *  # noqa: F403
from .tokens import *  # noqa: F403
from .training import *  # noqa: F403
from .transformer_blocks import *  # noqa: F403

# in the order of the book: setup and shared pieces, then each chapter's figures and checks
__all__ = [
    *notebook.__all__,
    *shared.__all__,
    *figures.__all__,
    *overview.__all__,
    *tokens.__all__,
    *causal_masks.__all__,
    *autoregressive_loss.__all__,
    *transformer_blocks.__all__,
    *the_full_gpt.__all__,
    *training.__all__,
    *sampling.__all__,
    *evaluation.__all__,
    *lora.__all__,
    *rope.__all__,
    *modern_blocks.__all__,
    *crashsim.__all__,
    *checkpointing.__all__,
]
