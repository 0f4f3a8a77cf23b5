"""mini_gpt: a small, real GPT, built one mechanism at a time for the course.

Data flows one way: text -> tokenizer -> batches -> GPT -> logits -> loss | generate.
"""

from .config import GPTConfig
from .generate import GenerationConfig, generate, stream
from .model import GPT
from .tokenizer import BPETokenizer, CharTokenizer

__all__ = ["GPTConfig", "GPT", "CharTokenizer", "BPETokenizer", "GenerationConfig", "generate", "stream"]
__version__ = "0.1.0"
