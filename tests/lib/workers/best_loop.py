"""Trains a small model with an evaluation, a new best and a checkpoint at every step, until
killed (for the test that a kill while `best/` is written leaves a loadable best).

The validation loss is replaced by minus the time, so every evaluation, in this process or the
next one resuming it, beats all earlier ones and `best/` is rewritten at every step.
"""
import sys
import time

import torch

from mini_gpt import GPT, GPTConfig
from mini_gpt import train as train_mod
from mini_gpt.data import TextDataset
from mini_gpt.tokenizer import CharTokenizer


def always_better(model, data, **kwargs):
    loss = -time.time()
    print(f"eval {loss!r}", flush=True)
    return {"val_loss": loss}


train_mod.evaluate = always_better
text = "the quick brown fox jumps over the lazy dog. " * 40
data = TextDataset.from_text(text, CharTokenizer.from_text(text))
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=data.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
cfg = train_mod.TrainConfig(out_dir=sys.argv[1], batch_size=2, block_size=16, max_iters=10**6, eval_interval=1,
                            log_interval=1, warmup_iters=1, resume=True, device="cpu", dtype="float32",
                            progress=False)
train_mod.train(model, data, cfg)
