"""Saves checkpoints of a small model in a tight loop until killed (for the SIGKILL test)."""
import sys

import torch

from mini_gpt import GPT, GPTConfig
from mini_gpt.checkpoint import save_checkpoint

out = sys.argv[1]
torch.manual_seed(0)
config = GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32)
model = GPT(config)
opt = torch.optim.AdamW(model.parameters())
model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
opt.step()
step = int(sys.argv[2])
while True:
    with torch.no_grad():  # each checkpoint's weights differ, and say which step they are
        model.transformer.wte.weight[0, 0] = float(step)
    save_checkpoint(out, step=step, model=model, model_config=config, optimizer=opt)
    print(step, flush=True)
    step += 1
