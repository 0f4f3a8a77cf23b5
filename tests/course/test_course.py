"""mini_gpt.course: every exercise check accepts a right answer, explains the usual wrong ones,
and treats an unanswered exercise (a function returning None) as a reminder, not an error."""

import inspect
import math
import re

import pytest
import torch
import torch.nn.functional as F

from mini_gpt import GPT, GPTConfig, course
from mini_gpt.course.checking import max_diff
from mini_gpt.masks import causal_mask

from check_helpers import fails, passes

# ---------------------------------------------------------------------------- shared behaviour


def test_unanswered_exercise_gets_a_reminder_not_an_error(capsys):
    def my_causal_mask(T):
        ...

    assert course.check_causal_mask(my_causal_mask) is None
    out = capsys.readouterr().out
    assert "my_causal_mask returned None" in out


# every check of every chapter that takes one function (the reader's answer)
ONE_FUNCTION_CHECKS = [
    getattr(course, name) for name in sorted(course.__all__)
    if name.startswith("check_") and len(inspect.signature(getattr(course, name)).parameters) == 1
]


def test_the_checks_of_every_chapter_are_found():
    assert len(ONE_FUNCTION_CHECKS) >= 12 + 3 + 4 + 3 + 3 + 2  # chapters 1-4, 5, 6, 7, 8, 9


@pytest.mark.parametrize("check", ONE_FUNCTION_CHECKS, ids=lambda c: c.__name__)
def test_every_check_reminds_when_unanswered_and_wants_a_function(check, capsys):
    def unanswered(*args):
        return None

    assert check(unanswered) is None
    assert capsys.readouterr().out.startswith("\u270e unanswered ")  # a reminder, not an error
    with pytest.raises(TypeError, match="takes your function itself"):
        check(torch.ones(3))


def test_an_exception_in_the_answer_names_the_input():
    def my_causal_mask(T):
        raise RuntimeError("boom")

    fails(course.check_causal_mask, my_causal_mask, r"raised RuntimeError: boom \(on T=4\)")


# check_atomic_write runs the answer under simulated crashes: its report of an exception is its own
@pytest.mark.parametrize("check", [c for c in ONE_FUNCTION_CHECKS if c is not course.check_atomic_write],
                         ids=lambda c: c.__name__)
def test_every_check_names_the_input_an_answer_raised_on(check):
    def broken(*args):
        raise RuntimeError("boom")

    fails(check, broken, r"raised RuntimeError: boom \(on ")


def test_setup_notebook_pins_threads_and_silences_progress(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    try:
        course.setup_notebook(seed=3, threads=1)
        assert torch.get_num_threads() == 1
        import os

        assert os.environ["TQDM_DISABLE"] == "1"
        a = torch.rand(3)
        course.setup_notebook(seed=3, threads=1)
        assert torch.equal(a, torch.rand(3))
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="threads"):
        course.setup_notebook(threads=0)


def test_links_point_at_the_course_repository():
    assert course.REPO == "mini-gpt/mini_gpt"
    blob, tree = "https://github.com/mini-gpt/mini_gpt/blob/main", "https://github.com/mini-gpt/mini_gpt/tree/main"
    assert course.source_url("masks") == f"{blob}/mini_gpt/masks.py"
    assert course.source_url("mini_gpt.loss") == f"{blob}/mini_gpt/loss.py"
    assert course.source_url("rope.py") == f"{blob}/mini_gpt/rope.py"
    # a package's module is a file in its folder; the package itself is the folder
    assert course.source_url("course.sampling") == f"{blob}/mini_gpt/course/sampling.py"
    assert course.source_url("mini_gpt.course.checking") == f"{blob}/mini_gpt/course/checking.py"
    assert course.source_url("course") == f"{tree}/mini_gpt/course/"
    for name in ("nope", "masks.nope", "", "course.nope"):
        with pytest.raises(ValueError, match="module must name a module of mini_gpt"):
            course.source_url(name)
    with pytest.raises(TypeError, match="module"):
        course.source_url(None)
    assert course.colab_url("causal_masks.ipynb") == (
        "https://colab.research.google.com/github/mini-gpt/mini_gpt/blob/main/chapters/causal_masks.ipynb"
    )
    assert course.colab_url("sampling") == course.colab_url("sampling.ipynb")


def test_small_model_is_deterministic_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    a, b = course.small_model(seed=1), course.small_model(seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert not torch.equal(a.lm_head.weight, course.small_model(seed=2).lm_head.weight)
    assert not a.training
    assert course.small_model(n_layer=1).config.n_layer == 1


def test_tokenizers_and_line():
    tok = course.char_tokenizer()
    assert tok.vocab_size == 65
    assert course.SHAKESPEARE_LINE in course.shakespeare_text()
    assert tok.decode(tok.encode(course.SHAKESPEARE_LINE)) == course.SHAKESPEARE_LINE
    assert course.bpe_tokenizer().vocab_size == 50257


def test_figures_draw_without_warnings(recwarn):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = course.draw_pipeline(highlight="blocks")
    ax.figure.canvas.draw()
    ax = course.draw_tokens(course.SHAKESPEARE_LINE, {"chars": course.char_tokenizer(), "bpe": course.bpe_tokenizer()})
    ax.figure.canvas.draw()
    for kind in ("pre", "post"):
        course.draw_block(kind).figure.canvas.draw()
    plt.close("all")
    assert not [w for w in recwarn if "Glyph" in str(w.message)]
    with pytest.raises(ValueError, match="highlight"):
        course.draw_pipeline(highlight="nope")
    with pytest.raises(ValueError, match="kind"):
        course.draw_block("middle")


# ---------------------------------------------------------------------------- chapter 0


def test_check_char_encode(capsys):
    def right(text, chars):
        return [chars.index(c) for c in text]

    passes(course.check_char_encode, right, capsys)
    fails(course.check_char_encode, lambda text, chars: [ord(c) for c in text], "code points")
    fails(course.check_char_encode, lambda text, chars: [chars.index(c) + 1 for c in text], "one too large")
    fails(course.check_char_encode, lambda text, chars: [sorted(chars).index(c) for c in text], "as given")
    fails(course.check_char_encode, lambda text, chars: text, "return the list of ids")


# ---------------------------------------------------------------------------- chapter 1


def test_check_causal_mask(capsys):
    def my_mask(T):
        return torch.tril(torch.ones(T, T, dtype=torch.bool))

    out = passes(course.check_causal_mask, my_mask, capsys)
    assert "my_mask matches mini_gpt.masks.causal_mask" in out
    passes(course.check_causal_mask, causal_mask, capsys)


@pytest.mark.parametrize(
    "wrong, match",
    [
        (lambda T: torch.triu(torch.ones(T, T, dtype=torch.bool)), "upper triangle"),
        (lambda T: ~torch.tril(torch.ones(T, T, dtype=torch.bool)), "swapped"),
        (lambda T: torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-1), "diagonal is False"),
        (lambda T: torch.tril(torch.ones(T, T)), "dtype is torch.float32"),
        (
            lambda T: torch.zeros(T, T).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")),
            "additive bias",
        ),
        (lambda T: torch.ones(T, T + 1, dtype=torch.bool).tril(), r"shape \(4, 5\)"),
        (lambda T: torch.ones(T, T, dtype=torch.bool), "expected"),
    ],
)
def test_check_causal_mask_explains_mistakes(wrong, match):
    fails(course.check_causal_mask, wrong, match)


def test_check_offset_causal_mask(capsys):
    passes(course.check_offset_causal_mask, lambda T, S: torch.ones(T, S, dtype=torch.bool).tril(S - T), capsys)
    fails(course.check_offset_causal_mask, lambda T, S: torch.ones(T, S, dtype=torch.bool).tril(), "diagonal=S - T")
    fails(course.check_offset_causal_mask, lambda T, S: torch.ones(T, T, dtype=torch.bool).tril(), "shape")


def hand_attention(q, k, v):
    T = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def test_check_attention(capsys):
    passes(course.check_attention, hand_attention, capsys)
    passes(course.check_attention, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), capsys)


def _attention_with(scale=True, mask="tril", fill=float("-inf"), dim=-1, weights_only=False):
    def fn(q, k, v):
        T = q.shape[-2]
        s = q @ k.transpose(-2, -1)
        if scale:
            s = s / math.sqrt(q.shape[-1])
        ones = torch.ones(T, T, dtype=torch.bool)
        if mask == "tril":
            s = s.masked_fill(~ones.tril(), fill)
        elif mask == "triu":
            s = s.masked_fill(~ones.triu(), fill)
        w = torch.softmax(s, dim=dim)
        return w if weights_only else w @ v

    return fn


@pytest.mark.parametrize(
    "wrong, match",
    [
        (_attention_with(mask=None), "no causal mask"),
        (_attention_with(scale=False), "not scaled"),
        (_attention_with(mask="triu"), "upper triangle"),
        (_attention_with(fill=0.0), "set them to -inf"),
        (_attention_with(dim=-2), "over the keys"),
        (_attention_with(weights_only=True), "multiply them by v"),
        (lambda q, k, v: (hand_attention(q, k, v), None), "tuple"),
    ],
)
def test_check_attention_explains_mistakes(wrong, match):
    fails(course.check_attention, wrong, match)


# ---------------------------------------------------------------------------- chapter 2


def hand_loss(logits, tokens):
    V = logits.shape[-1]
    pred = logits[:, :-1].reshape(-1, V)
    target = tokens[:, 1:].reshape(-1)
    keep = target != -100
    logp = torch.log_softmax(pred[keep], dim=-1)
    return -logp.gather(1, target[keep, None]).mean()


def test_check_shifted_loss(capsys):
    passes(course.check_shifted_loss, hand_loss, capsys)
    passes(course.check_shifted_loss, lambda lg, t: F.cross_entropy(lg[:, :-1].flatten(0, 1), t[:, 1:].flatten()),
           capsys)


@pytest.mark.parametrize(
    "wrong, match",
    [
        (lambda lg, t: F.cross_entropy(lg.flatten(0, 1), t.flatten()), "no shift"),
        (lambda lg, t: F.cross_entropy(lg[:, 1:].flatten(0, 1), t[:, :-1].flatten()), "wrong way"),
        (lambda lg, t: F.cross_entropy(lg[:, :-1].flatten(0, 1), t[:, 1:].flatten(), reduction="sum"), "sum"),
        (
            lambda lg, t: F.cross_entropy(lg[:, :-1].flatten(0, 1), t[:, 1:].flatten(), reduction="sum")
            / t[:, 1:].numel(),
            "padding is counted",
        ),
        (lambda lg, t: -hand_loss(lg, t), "sign"),
        (
            # gathers with the padding id -100: an IndexError on the padded batch
            lambda lg, t: -torch.log_softmax(lg[:, :-1], -1).gather(2, t[:, 1:, None]).mean(),
            r"raised RuntimeError.* \(on a padded batch",
        ),
        (lambda lg, t: F.cross_entropy(lg[:, :-1].flatten(0, 1), t[:, 1:].flatten(), reduction="none"), "one number"),
    ],
)
def test_check_shifted_loss_explains_mistakes(wrong, match):
    fails(course.check_shifted_loss, wrong, match)


def test_check_next_token_accuracy(capsys):
    def right(logits, tokens):
        pred, target = logits[:, :-1].argmax(-1), tokens[:, 1:]
        keep = target != -100
        return (pred == target)[keep].float().mean()

    passes(course.check_next_token_accuracy, right, capsys)
    fails(course.check_next_token_accuracy, lambda lg, t: (lg.argmax(-1) == t).float().mean(), "no shift")
    fails(course.check_next_token_accuracy, lambda lg, t: (lg[:, :-1].argmax(-1) == t[:, 1:]).float().mean(),
          "padding is counted")
    fails(course.check_next_token_accuracy, lambda lg, t: 1 - right(lg, t), "fraction wrong")


# ---------------------------------------------------------------------------- chapter 3


def layer_norm(x, weight, bias, eps, *, unbiased=False, eps_inside=True, use_eps=True):
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=unbiased, keepdim=True)
    if not use_eps:
        return (x - mean) / var.sqrt() * weight + bias
    if eps_inside:
        return (x - mean) / torch.sqrt(var + eps) * weight + bias
    return (x - mean) / (var.sqrt() + eps) * weight + bias


def test_check_layer_norm(capsys):
    passes(course.check_layer_norm, layer_norm, capsys)
    passes(course.check_layer_norm, lambda x, w, b, eps: F.layer_norm(x, x.shape[-1:], w, b, eps), capsys)


@pytest.mark.parametrize(
    "wrong, match",
    [
        (lambda x, w, b, eps: layer_norm(x, w, b, eps, unbiased=True), "unbiased"),
        (lambda x, w, b, eps: layer_norm(x, w, b, eps, use_eps=False), "eps is missing"),
        (lambda x, w, b, eps: layer_norm(x, w, b, eps, eps_inside=False), "inside the square root"),
        (lambda x, w, b, eps: layer_norm(x, 1.0, 0.0, eps), "weight and bias are not applied"),
        (lambda x, w, b, eps: x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w + b, "RMSNorm"),
        (lambda x, w, b, eps: x / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps) * w + b, "mean is not"),
    ],
)
def test_check_layer_norm_explains_mistakes(wrong, match):
    fails(course.check_layer_norm, wrong, match)


def test_check_gelu(capsys):
    c = math.sqrt(2 / math.pi)
    passes(course.check_gelu, lambda x: 0.5 * x * (1 + torch.tanh(c * (x + 0.044715 * x**3))), capsys)
    passes(course.check_gelu, torch.nn.GELU(approximate="tanh"), capsys)
    fails(course.check_gelu, F.gelu, "exact GELU")
    fails(course.check_gelu, F.relu, "ReLU")
    fails(course.check_gelu, lambda x: 0.5 * x * (1 + torch.tanh(c * x)), "cubic term")
    fails(course.check_gelu, lambda x: x * torch.sigmoid(1.702 * x), "sigmoid approximation")


def hand_mha(x, attn, *, split="right", merge="right", scale="head", mask=True, proj=True):
    B, T, C = x.shape
    H = attn.n_head
    hs = C // H
    q, k, v = attn.c_attn(x).split(C, dim=2)

    def heads(t):
        if split == "right":
            return t.view(B, T, H, hs).transpose(1, 2)
        return t.reshape(B, H, T, hs)

    q, k, v = heads(q), heads(k), heads(v)
    s = q @ k.transpose(-2, -1) / math.sqrt(hs if scale == "head" else C)
    if mask:
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    y = torch.softmax(s, -1) @ v
    y = y.transpose(1, 2).reshape(B, T, C) if merge == "right" else y.reshape(B, T, C)
    return attn.c_proj(y) if proj else y


def test_check_multi_head_attention(capsys):
    passes(course.check_multi_head_attention, hand_mha, capsys)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mask=False), "no causal mask"),
        (dict(scale="embd"), r"sqrt\(n_embd\)"),
        (dict(split="wrong"), "mixes positions and channels"),
        (dict(merge="wrong"), "without transposing back"),
        (dict(proj=False), "c_proj is missing"),
    ],
)
def test_check_multi_head_attention_explains_mistakes(kwargs, match):
    fails(course.check_multi_head_attention, lambda x, attn: hand_mha(x, attn, **kwargs), match)


def test_check_block(capsys):
    def pre_norm(x, block):
        x = x + block.attn(block.ln_1(x))
        return x + block.mlp(block.ln_2(x))

    passes(course.check_block, pre_norm, capsys)
    passes(course.check_block, lambda x, block: block(x), capsys)

    def post_norm(x, block):
        x = block.ln_1(x + block.attn(x))
        return block.ln_2(x + block.mlp(x))

    fails(course.check_block, post_norm, "post-norm")
    fails(course.check_block, lambda x, b: b.mlp(b.ln_2(b.attn(b.ln_1(x)))), "residual connections are missing")
    fails(course.check_block, lambda x, b: (h := x + b.attn(b.ln_1(x))) + b.mlp(b.ln_1(h)), "ln_1 is used twice")
    fails(course.check_block, lambda x, b: x + b.attn(b.ln_1(x)) + b.mlp(b.ln_2(x)), "in parallel")


# ---------------------------------------------------------------------------- chapter 4


def hand_forward(model, idx, *, positions=True, ln_f=True):
    tr = model.transformer
    x = tr.wte(idx)
    if positions:
        x = x + tr.wpe(torch.arange(idx.shape[1]))
    for block in tr.h:
        x = block(x)
    if ln_f:
        x = tr.ln_f(x)
    return x @ tr.wte.weight.T


def test_check_gpt_forward(capsys):
    passes(course.check_gpt_forward, hand_forward, capsys)
    fails(course.check_gpt_forward, lambda m, idx: hand_forward(m, idx, positions=False), "position embeddings")
    fails(course.check_gpt_forward, lambda m, idx: hand_forward(m, idx, ln_f=False), "final LayerNorm")
    fails(course.check_gpt_forward, lambda m, idx: hand_forward(m, idx).softmax(-1), "probabilities")


def count(config, *, tied=True, wpe=True, ln=True, biases=True, mlp=4):
    V, P, L, C = config.vocab_size, config.block_size, config.n_layer, config.n_embd
    b = config.bias and biases
    n = V * C * (1 if tied else 2)
    if wpe and (config.pos_encoding == "learned" or wpe == "always"):
        n += P * C
    per_ln = (2 if config.bias else 1) * C if ln else 0
    attn = 3 * C * C + C * C + (4 * C if b else 0)
    mlp_ = 2 * mlp * C * C + (mlp * C + C if b else 0)
    return n + L * (attn + mlp_ + 2 * per_ln) + per_ln


def test_count_reference_is_right():
    for config in (GPTConfig.preset("gpt2"), GPTConfig(vocab_size=7, block_size=5, n_layer=2, n_head=2, n_embd=8,
                                                        bias=False, pos_encoding="rope")):
        with torch.device("meta"):
            assert count(config) == GPT(config).num_parameters()
    assert count(GPTConfig.preset("gpt2")) == 124_439_808


def test_check_param_count(capsys):
    passes(course.check_param_count, count, capsys)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tied=False), "tied"),
        (dict(wpe=False), "position embeddings wpe"),
        (dict(wpe="always"), "have no parameters"),
        (dict(ln=False), "LayerNorms are missing"),
        (dict(biases=False), "biases of the Linear layers"),
        (dict(mlp=1), "4x wider"),
    ],
)
def test_check_param_count_explains_mistakes(kwargs, match):
    fails(course.check_param_count, lambda c: count(c, **kwargs), match)


def test_check_param_count_wants_an_int():
    fails(course.check_param_count, lambda c: "124M", "return an int")
    fails(course.check_param_count, lambda c: count(c) + 1, r"difference \+1")


def test_course_is_not_imported_by_the_library():
    import pathlib

    import mini_gpt

    root = pathlib.Path(mini_gpt.__file__).parent
    on_top = ("course", "viz", "cli.py")  # the parts that sit on top of the library may use each other
    uses_course = re.compile(r"\bcourse\b(?!_)|from \. import .*\bcourse\b")
    modules = [path for path in root.rglob("*.py") if path.relative_to(root).parts[0] not in on_top]
    assert root / "model.py" in modules and root / "__init__.py" in modules
    for path in modules:
        imports = [line for line in path.read_text("utf-8").splitlines() if re.match(r"\s*(from|import) ", line)]
        assert not [line for line in imports if uses_course.search(line)], path


def test_the_course_imports_without_fcntl():
    # Windows has no fcntl: the shared model's lock must not need it
    import subprocess
    import sys

    code = "import sys; sys.modules['fcntl'] = None; import mini_gpt.course; print(len(mini_gpt.course.__all__))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) == len(course.__all__)


def test_course_modules_import_no_private_names():
    import ast
    import pathlib

    for path in (pathlib.Path(course.__file__).parent).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:  # from .x import y / from ..x import y
                private = [alias.name for alias in node.names if alias.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"


def test_every_name_the_chapters_use_resolves():
    import json
    import pathlib

    chapters = sorted((pathlib.Path(__file__).parents[2] / "chapters").glob("*.ipynb"))
    assert chapters
    used = {}
    for path in chapters:
        cells = json.loads(path.read_text("utf-8"))["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        for name in re.findall(r"\bcourse\.([A-Za-z_]\w*)", code):
            used.setdefault(name, path.name)
    assert "check_causal_mask" in used and "shakespeare_model" in used
    missing = {name: where for name, where in used.items() if not hasattr(course, name)}
    assert not missing, f"course has no {missing}"
    assert set(used) <= set(course.__all__), set(used) - set(course.__all__)  # part of the public vocabulary


def test_max_diff_reports_infinities_as_infinite_and_equal_infinities_as_equal():
    inf = math.inf
    assert max_diff(torch.tensor([-inf, 1.0]), torch.tensor([-inf, 1.5])) == 0.5
    assert max_diff(torch.tensor([-inf, 1.0]), torch.tensor([0.0, 1.0])) == inf
    assert max_diff(torch.tensor([float("nan")]), torch.tensor([0.0])) == inf
    assert max_diff(torch.empty(0), torch.empty(0)) == 0.0


def test_no_two_course_modules_export_the_same_name():
    """`course/__init__` re-exports every module's names with `import *`: a name two chapters
    both export (e.g. two `check_merge`s) would silently give one chapter the other's check."""
    import importlib
    import pkgutil

    owners: dict[str, list[str]] = {}
    for info in pkgutil.iter_modules(course.__path__):
        module = importlib.import_module(f"mini_gpt.course.{info.name}")
        for name in getattr(module, "__all__", ()):
            if name in course.__all__:  # the re-exported ones (the harness in `checking` is not)
                owners.setdefault(name, []).append(info.name)
    shared = {name: mods for name, mods in owners.items() if len(mods) > 1}
    assert not shared, shared
    for name, (mod,) in owners.items():
        assert getattr(course, name) is getattr(importlib.import_module(f"mini_gpt.course.{mod}"), name), name
