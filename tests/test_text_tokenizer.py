import argparse
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers

from engine.errors import BadInputError, BundleError
from engine.instructions import PARAPHRASES, Task, heldout_paraphrases, prompt_texts
from engine.text_tokenizer import TextTokenizer
from training import text_commands
from training.commands import COMMAND_MODULES
from training.text_tokenizer_train import folder_corpus, shapes_corpus, tokens_per_text, train_text_tokenizer


@pytest.fixture(scope="module")
def corpus():
    return list(shapes_corpus(300))


@pytest.fixture(scope="module")
def tok(corpus):
    return train_text_tokenizer(corpus, vocab_size=1536)


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_any_unicode_round_trips(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.size for i in ids)
    assert tok.decode(ids) == text


EXAMPLES = ["", "😀👩‍👩‍👧 emoji", "中文 日本語 한국어", "\x00\x01\x1f\x7f\u200b", "  leading\n\ttabs  ",
            "a red circle", "Ünïcödé — “quotes”", "\U0010ffff"]


@pytest.mark.parametrize("text", EXAMPLES)
def test_examples_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_domain_text_is_compact(tok):
    # every caption word is one token, so a canonical caption costs about one token per word
    text = "a large red circle at the top left and a small blue square in the center"
    assert len(tok.encode(text)) == len(text.split())
    assert 400 < tok.size <= 1536


def test_every_box_number_is_one_token(tok):
    for i in range(256):
        assert len(tok.encode(f"({i}, {i})")) == 5, i  # "(", "i", ",", " i", ")"


def test_corpus_leaves_heldout_paraphrases_out_and_they_use_trained_tokens(corpus, tok):
    trained = {i for text in corpus for i in tok.encode(text)}
    for task in Task:
        for p in heldout_paraphrases(task):
            wording = PARAPHRASES[task][p].text.split("{")[0].strip()
            assert not any(wording in text for text in corpus), wording
            for piece in prompt_texts(task, text="a red circle", paraphrase=p,
                                      boxes=[("red circle", (10, 20, 30, 40))]):
                assert set(tok.encode(piece)) <= trained, piece


def test_save_load(tok, tmp_path):
    path = tmp_path / "sub" / "tokenizer.json"
    tok.save(path)
    assert not list(path.parent.glob("*.tmp"))
    again = TextTokenizer.load(path)
    assert again.size == tok.size
    text = "how many hearts are there? two"
    assert again.encode(text) == tok.encode(text)
    assert TextTokenizer.load(path.parent).size == tok.size  # a folder holding tokenizer.json


def test_bad_files_and_inputs(tok, tmp_path):
    with pytest.raises(BundleError, match="not found"):
        TextTokenizer.load(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(BundleError, match="cannot read"):
        TextTokenizer.load(tmp_path / "junk.json")
    word = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    word.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "word.json").write_text(word.to_str())
    with pytest.raises(BundleError, match="byte-level"):
        TextTokenizer.load(tmp_path / "word.json")
    with pytest.raises(BadInputError, match="outside"):
        tok.decode([tok.size])
    with pytest.raises(BadInputError, match="str"):
        tok.encode(b"bytes")
    with pytest.raises(BadInputError):
        train_text_tokenizer(["abc"], vocab_size=100)


def write_folder(root, captions: list[str]) -> None:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(captions):
        Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(root / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": text}))
    (root / "metadata.jsonl").write_text("\n".join(rows))


def test_folder_corpus(tmp_path):
    write_folder(tmp_path / "a", ["a cat on a mat", ""])
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("  a bird in the sky \n")
    (tmp_path / "README.txt").write_text("not a caption")  # no image beside it
    assert sorted(folder_corpus(tmp_path)) == ["a bird in the sky", "a cat on a mat"]
    write_folder(tmp_path / "empty", [""])
    with pytest.raises(BadInputError, match="no captioned"):
        list(folder_corpus(tmp_path / "empty"))


def test_cli_on_a_folder(tmp_path, capsys):
    write_folder(tmp_path / "data", [f"photo {i} of a red barn" for i in range(50)])
    out = tmp_path / "tok.json"
    # only this command's parser: building the whole `tessera` CLI would import every package
    parser = argparse.ArgumentParser()
    text_commands.register({"train": parser.add_subparsers().add_parser("train").add_subparsers()})
    args = parser.parse_args(["train", "text-tokenizer", "--data", str(tmp_path / "data"), "--out", str(out),
                              "--vocab-size", "300", "--json"])
    assert args.func(args) == 0
    assert "training.text_commands" in COMMAND_MODULES
    summary = json.loads(capsys.readouterr().out)
    tok = TextTokenizer.load(out)
    assert summary["vocab_size"] == tok.size <= 300 and summary["texts"] == 50
    assert tokens_per_text(tok, ["photo 7 of a red barn"]) < len("photo 7 of a red barn") / 2
