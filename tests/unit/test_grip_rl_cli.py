"""`kinject grip rl` through a tiny Typer app (the grip group registers it via `rl_cli.register`):
bad input gives one clear error before anything is written."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from kinject.errors import UserError
from kinject.grip.format import final_turn
from kinject.grip.rl_cli import register


@pytest.fixture()
def app():
    app = typer.Typer()

    @app.callback()
    def main():  # keeps `rl` a subcommand
        pass

    register(app)
    return app


@pytest.fixture(scope="module")
def no_grip_tokens_model(tmp_path_factory):
    """A model whose tokenizer lacks the GRIP control tokens (not an SFT checkpoint)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from kinject.models import TinySpec, make_tiny_model, save_model
    from kinject.tokenizer import BUILTIN_SAMPLE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(BUILTIN_SAMPLE * 2, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_end|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    out = tmp_path_factory.mktemp("plain") / "model"
    save_model(make_tiny_model(TinySpec(vocab=320, hidden=32, layers=1, heads=2), tokenizer=fast), fast, out)
    return out


def _config(tmp_path, model, *extra: str):
    data = tmp_path / "imit.jsonl"
    data.write_text(json.dumps({"question": "q", "target": final_turn("a")}) + "\n")
    cfg = tmp_path / "rl.yaml"
    cfg.write_text("\n".join(["kind: grip_rl", f"model: {model}", "reward: imitation",
                              f"data: {{train: {data}}}", *extra]) + "\n")
    return cfg


def test_checkpoint_without_control_tokens_is_one_error(app, tmp_path, no_grip_tokens_model):
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["rl", "--config", str(_config(tmp_path, no_grip_tokens_model)), "--out", str(out)])
    assert isinstance(res.exception, UserError)
    assert "no single-token [ANSWER]" in str(res.exception) and "\n" not in str(res.exception)
    assert not out.exists()


def test_group_size_one_is_one_error(app, tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["rl", "--config", str(_config(tmp_path, tiny_model_dir)), "--out", str(out),
                                   "rollout.group_size=1"])
    assert isinstance(res.exception, UserError) and "DAPO needs groups" in str(res.exception)
    assert not out.exists()


def test_unknown_key_is_one_error(app, tmp_path, tiny_model_dir):
    res = CliRunner().invoke(app, ["rl", "--config", str(_config(tmp_path, tiny_model_dir, "rollout: {groups: 3}"))])
    assert isinstance(res.exception, UserError) and "rollout.groups" in str(res.exception)
