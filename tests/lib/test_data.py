import pytest
import torch

from mini_gpt.data import BatchStream, get_batch, load_dataset, load_text, split_tokens


@pytest.fixture(scope="module")
def tokens():
    return torch.arange(1000) % 97  # not monotone, so a wrong window would show


def test_y_is_x_shifted_and_windows_are_contiguous(tokens):
    g = torch.Generator().manual_seed(0)
    x, y = get_batch(tokens, 16, 24, generator=g)
    assert x.shape == y.shape == (16, 24) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x, y):
        start = next(s for s in range(len(tokens) - 24) if torch.equal(tokens[s : s + 24], row_x))
        assert torch.equal(tokens[start + 1 : start + 25], row_y)


def test_every_window_fits_including_the_last_token():
    tokens = torch.arange(30)
    x, y = get_batch(tokens, 5000, 10, generator=torch.Generator().manual_seed(1))
    assert int(x.min()) == 0 and int(y.max()) == 29  # both ends reachable, nothing out of range


def test_deterministic_for_a_seed(tokens):
    a = get_batch(tokens, 8, 16, generator=torch.Generator().manual_seed(3))
    b = get_batch(tokens, 8, 16, generator=torch.Generator().manual_seed(3))
    c = get_batch(tokens, 8, 16, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def test_stream_resumes_exactly(tokens):
    full = BatchStream(tokens, 4, 8, seed=7)
    expected = [next(full) for _ in range(6)]
    first = BatchStream(tokens, 4, 8, seed=7)
    for _ in range(3):
        next(first)
    resumed = BatchStream(tokens, 4, 8, seed=0)
    resumed.load_state_dict(first.state_dict())
    for want in expected[3:]:
        got = next(resumed)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_ranks_together_read_what_one_process_reads(tokens):
    alone = BatchStream(tokens, 4, 8, seed=7)
    ranks = [BatchStream(tokens, 4, 8, seed=7, rank=r, world_size=3) for r in range(3)]
    for _ in range(2):
        for r in range(3):
            assert torch.equal(next(ranks[r])[0], next(alone)[0])
    a, b = next(ranks[0])[0], next(ranks[1])[0]
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, 2\], got 3"):
        BatchStream(tokens, 4, 8, rank=3, world_size=3)


def test_bad_arguments(tokens):
    with pytest.raises(ValueError, match=r"block_size \(1000\) must be smaller than the number of tokens \(1000\)"):
        get_batch(tokens, 2, 1000)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        get_batch(tokens, 0, 8)
    with pytest.raises(ValueError, match=r"val_fraction must be a number in \[0, 1\), got 1.0"):
        split_tokens(tokens, 1.0)


def test_split_keeps_order():
    train, val = split_tokens(torch.arange(100), 0.1)
    assert torch.equal(train, torch.arange(90)) and torch.equal(val, torch.arange(90, 100))


def test_shakespeare_char_dataset():
    data = load_dataset("shakespeare", "char")
    text = load_text("shakespeare")
    assert data.vocab_size == 65
    assert len(data.train) + len(data.val) == len(text) == 1_115_394
    assert len(data.val) == pytest.approx(0.1 * len(text), abs=1)
    assert data.tokenizer.decode(data.train[:40].tolist()) == text[:40]
    assert data.tokenizer.decode(data.val[-20:].tolist()) == text[-20:]


def test_any_text_file_with_bpe(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text("Shall I compare thee to a summer's day?\n" * 20, "utf-8")
    data = load_dataset(path, "gpt2", val_fraction=0.25)
    assert data.vocab_size == 50257
    assert data.tokenizer.decode(torch.cat([data.train, data.val]).tolist()) == path.read_text("utf-8")
    x, y = next(data.batches("train", 2, 8, seed=0))
    assert x.shape == (2, 8) and torch.equal(x[:, 1:], y[:, :-1])


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="source must be 'shakespeare' or a UTF-8 text file"):
        load_text(tmp_path / "missing.txt")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        load_text(tmp_path / "latin1.txt")
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        load_dataset("shakespeare").split("test")


# ---------------------------------------------------------------------------------------------
# a byte-level BPE learned from the data ("bpe:N")

@pytest.fixture
def train_part():
    """The first 4,500 characters of Tiny Shakespeare (read when a test asks, not at collection)."""
    return load_text("shakespeare")[:4500]


def test_bpe_n_learns_its_merges_from_the_training_split_only(train_part):
    from mini_gpt.bpe import train_bpe
    from mini_gpt.data import TextDataset, split_text

    # two texts with the same first 90% of characters and very different last 10%
    a = train_part + "zzzz qqqq " * 50
    b = train_part + "xyxy wvwv " * 50
    assert split_text(a)[0] == split_text(b)[0] and train_part.startswith(split_text(a)[0])
    da, db = TextDataset.from_text(a, "bpe:300"), TextDataset.from_text(b, "bpe:300")
    assert da.tokenizer == db.tokenizer == train_bpe(split_text(a)[0], 300)
    # a tokenizer fitted to the validation text would have merged its frequent pairs
    assert not {da.tokenizer.decode([i]) for i in range(256, da.vocab_size)} & {"zz", "qq", " zz", " qq"}
    assert da.vocab_size == 300
    assert da.tokenizer.decode(da.train.tolist()) == split_text(a)[0]
    assert da.tokenizer.decode(da.val.tolist()) == split_text(a)[1]
    x, y = next(da.batches("train", 2, 8, seed=0))
    assert x.shape == (2, 8) and torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) < 300


def test_a_bytepair_tokenizer_object_splits_the_text_the_same_way(tmp_path, train_part):
    from mini_gpt.data import TextDataset

    path = tmp_path / "t.txt"
    path.write_text(train_part, "utf-8")
    trained = load_dataset(path, "bpe:280", val_fraction=0.2)
    again = TextDataset.from_text(path.read_text("utf-8"), trained.tokenizer, val_fraction=0.2)
    assert torch.equal(again.train, trained.train) and torch.equal(again.val, trained.val)


def test_tokenizer_names():
    from mini_gpt.tokenizer import check_tokenizer_name, get_tokenizer, trained_bpe_size

    assert [trained_bpe_size(n) for n in ("char", "gpt2", "bpe:256", "bpe:0300")] == [None, None, 256, 300]
    assert check_tokenizer_name("bpe:0300") == "bpe:300"
    for bad in ("bpe:255", "bpe:", "bpe:3e2", "bpe: 300", "bpe:-300", "bpe:+300", "bpe:3_00", "BPE:300", "words"):
        with pytest.raises(ValueError, match=r"tokenizer must be one of 'char', 'gpt2', 'r50k_base' or 'bpe:N' "
                                             r"\(N an int >= 256\), got"):
            check_tokenizer_name(bad)
    with pytest.raises(TypeError, match="tokenizer must be .*, got int"):
        check_tokenizer_name(300)
    with pytest.raises(ValueError, match=r"the 'bpe:300' tokenizer is built from a text: pass text="):
        get_tokenizer("bpe:300")
    with pytest.raises(ValueError, match="tokenizer must be"):
        load_dataset("shakespeare", "bpe:12")
