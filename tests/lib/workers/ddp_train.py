"""Trains a small GPT for a few steps and saves its parameters: run alone or under torchrun."""
import os
import sys

import torch
from safetensors.torch import save_file

from mini_gpt import GPT, GPTConfig
from mini_gpt.data import TextDataset
from mini_gpt.train import TrainConfig, train

out, grad_accum = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(1)
torch.manual_seed(0)
text = "".join(chr(97 + (i * 7 + i // 13) % 26) for i in range(5000))
data = TextDataset.from_text(text, "char")
model = GPT(GPTConfig(vocab_size=data.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32))
cfg = TrainConfig(batch_size=4, max_iters=5, grad_accum=grad_accum, warmup_iters=2, learning_rate=3e-3,
                  eval_interval=100, device="cpu", dtype="float32", progress=False)
result = train(model, data, cfg)
if int(os.environ.get("RANK", "0")) == 0:
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}, out)
    print("losses", [r["train_loss"] for r in result.history])
