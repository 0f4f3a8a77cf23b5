import errno
import os
import pickle
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mini_gpt import GPT, GPTConfig
from mini_gpt import checkpoint as ckpt_mod
from mini_gpt.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model,
    restore_model,
    restore_training_state,
    save_checkpoint,
)
from mini_gpt.tokenizer import CharTokenizer

CONFIG = GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.1)
WORKERS = Path(__file__).parent / "workers"


def trained_model_and_optimizer(seed=0):
    torch.manual_seed(seed)
    model = GPT(CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        model(torch.randint(0, 65, (2, 8))).float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_round_trip_restores_everything(tmp_path):
    model, opt = trained_model_and_optimizer()
    tok = CharTokenizer.from_text("abc xyz\n")
    random.seed(5)
    torch.manual_seed(6)
    path = save_checkpoint(tmp_path, step=7, model=model, model_config=CONFIG, optimizer=opt, tokenizer=tok,
                           extra={"data_stream": {"seed": 1, "step": 9, "world_size": 1}})
    expected_rand, expected_torch = random.random(), torch.rand(3)

    ck = load_checkpoint(path)
    assert ck.step == 7 and ck.model_config == CONFIG and ck.state["data_stream"]["step"] == 9
    assert ck.tokenizer() == tok
    fresh, fresh_opt = trained_model_and_optimizer(seed=1)
    restore_model(ck, fresh)
    restore_training_state(ck, fresh_opt)
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert fresh.lm_head.weight is fresh.transformer.wte.weight  # still tied
    for p, q in zip(opt.param_groups[0]["params"], fresh_opt.param_groups[0]["params"]):
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][name], fresh_opt.state[q][name])
    assert random.random() == expected_rand and torch.equal(torch.rand(3), expected_torch)


def test_keeps_the_last_two(tmp_path):
    model, opt = trained_model_and_optimizer()
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step=step, model=model, model_config=CONFIG, optimizer=opt)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000030", "ckpt-00000040"]
    assert latest_checkpoint(tmp_path).step == 40
    assert not list(tmp_path.glob(".tmp-*"))


def test_compiled_model_state_loads_into_plain_model(tmp_path):
    model, _ = trained_model_and_optimizer()
    compiled = torch.compile(model)  # compilation is lazy: the wrapper's keys carry `_orig_mod.`
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    save_checkpoint(tmp_path, step=1, model=compiled, model_config=CONFIG)
    plain, _ = load_model(tmp_path)
    x = torch.randint(0, 65, (1, 8))
    assert torch.equal(plain(x), model.eval()(x))


def test_disk_full_is_a_clear_error_and_keeps_the_previous(tmp_path, monkeypatch):
    model, opt = trained_model_and_optimizer()
    save_checkpoint(tmp_path, step=1, model=model, model_config=CONFIG, optimizer=opt)
    real_save = ckpt_mod.save_file

    def full_disk(tensors, path, *args, **kwargs):
        if path.endswith("optim.safetensors"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(ckpt_mod, "save_file", full_disk)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*ckpt-00000002: No space left on device"):
        save_checkpoint(tmp_path, step=2, model=model, model_config=CONFIG, optimizer=opt)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000001"]
    assert not list(tmp_path.glob(".tmp-*"))
    assert latest_checkpoint(tmp_path).step == 1


class _Exploit:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_planted_pickle_is_refused_without_running_it(tmp_path):
    model, opt = trained_model_and_optimizer()
    save_checkpoint(tmp_path, step=1, model=model, model_config=CONFIG, optimizer=opt)
    good = list_checkpoints(tmp_path)[0]
    planted = tmp_path / "ckpt-00000099"
    planted.mkdir()
    (planted / "state.json").write_text((good / "state.json").read_text().replace('"step": 1', '"step": 99'))
    marker = tmp_path / "code-ran"
    payload = {"wte": _Exploit(marker)}
    (planted / "model.safetensors").write_bytes(pickle.dumps(payload))
    torch.save(payload, planted / "optim.safetensors")  # a torch pickle, too
    with pytest.raises(CheckpointError, match="never pickle"):
        load_checkpoint(planted)
    assert latest_checkpoint(tmp_path).step == 1  # the planted one is skipped
    assert not marker.exists()
    assert pickle.loads(pickle.dumps(payload)) and marker.exists()  # the payload was live


@pytest.mark.slow
def test_sigkill_during_saves_always_leaves_a_loadable_checkpoint(tmp_path):
    rng = random.Random(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start, kills = 0, 0
    model = GPT(CONFIG.replace(dropout=0.0))
    while kills < 20:
        proc = subprocess.Popen([sys.executable, str(WORKERS / "save_loop.py"), str(tmp_path), str(start)],
                                stdout=subprocess.PIPE, text=True, env=env)
        proc.stdout.readline()  # one save done: the loop is now saving continuously
        time.sleep(rng.uniform(0.0, 0.15))
        proc.kill()
        proc.wait()
        proc.stdout.close()
        kills += 1
        ck = latest_checkpoint(tmp_path)
        assert ck.step >= start
        restore_model(ck, model)
        assert model.transformer.wte.weight[0, 0].item() == ck.step  # the weights of that very step
        opt = torch.optim.AdamW(model.parameters())
        restore_training_state(ck, opt)
        start = ck.step + 1
    assert len(list_checkpoints(tmp_path)) <= 3


def test_a_trained_bpe_tokenizer_is_saved_beside_the_weights(tmp_path):
    from mini_gpt.bpe import train_bpe

    tok = train_bpe("the cat sat on the mat; a dog lay on the rug. " * 20, 270)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    torch.manual_seed(0)
    model = GPT(config)
    path = save_checkpoint(tmp_path, step=3, model=model, model_config=config, tokenizer=tok)
    assert (path / "tokenizer.json").is_file()
    assert load_checkpoint(path).state["tokenizer"] == {"type": "bytepair", "vocab_size": 270}
    loaded, loaded_tok = load_model(tmp_path)
    assert loaded_tok == tok and loaded_tok.encode(" the mat") == tok.encode(" the mat")
    ids = torch.tensor([tok.encode("the cat")])
    assert torch.equal(loaded(ids), model.eval()(ids))
    # a tampered tokenizer file is refused by name, not used
    (path / "tokenizer.json").write_text((path / "tokenizer.json").read_text().replace("[97, 116, 256]", "[116, 97, 256]"))
    with pytest.raises(CheckpointError, match="has no loadable tokenizer: .*tokenizer.json"):
        load_model(tmp_path)
