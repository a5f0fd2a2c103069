"""The command line derived from the config dataclasses (`needlework.cli_options`): one model-options
group for every command that loads a model, option defaults equal to the dataclass defaults (none
restated), help from the fields, and the built configs handed to the commands."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import typer
from typer.main import get_command

from needlework.cli import app
from needlework.cli_options import MODEL, Options, field_help, with_options
from needlework.models.load import ModelConfig
from needlework.train.config import TrainConfig

MODEL_FLAGS = {"--model", "--adapter", "--device", "--dtype", "--attn-implementation", "--rope-theta", "--max-position-embeddings"}
MODEL_COMMANDS = [("train",), ("evaluate",), ("heads", "score"), ("knockout",), ("serve-writer",)]


def _command(*path: str):
    cmd = get_command(app)
    for name in path:
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    return cmd


def _options(cmd) -> dict:
    return {flag: p for p in cmd.params if p.param_type_name == "option" for flag in p.opts + p.secondary_opts}


@pytest.mark.parametrize("path", MODEL_COMMANDS)
def test_every_model_command_has_the_model_group(path):
    opts = _options(_command(*path))
    assert MODEL_FLAGS <= set(opts)
    for f in dataclasses.fields(ModelConfig):
        flag = "--model" if f.name == "name" else "--" + f.name.replace("_", "-")
        if flag in MODEL_FLAGS:
            assert opts[flag].default == f.default, flag  # the dataclass default, not a restated one


def test_patch_shares_the_model_settings_of_both_models():
    opts = _options(_command("patch"))
    assert MODEL_FLAGS - {"--model", "--adapter"} <= set(opts)
    assert {"--source", "--target", "--source-adapter", "--target-adapter"} <= set(opts)


@pytest.mark.parametrize(
    "path, cls",
    [
        (("evaluate",), "EvalConfig"),
        (("heads", "score"), "ScoreConfig"),
        (("heads", "compare"), "CompareConfig"),
        (("load",), "LoadConfig"),
        (("generate",), "GenerateConfig"),
    ],
)
def test_stage_option_defaults_are_the_dataclass_defaults(path, cls):
    import needlework.data.generate as gen
    import needlework.data.loaders as loaders
    import needlework.evaluate.config as ev
    import needlework.heads.compare as compare
    import needlework.heads.score as score

    klass = next(getattr(m, cls) for m in (ev, score, compare, loaders, gen) if hasattr(m, cls))
    opts = _options(_command(*path))
    checked = 0
    for f in dataclasses.fields(klass):
        p = opts.get("--" + f.name.replace("_", "-"))
        if p is None or f.default is dataclasses.MISSING or isinstance(f.default, tuple):
            continue
        assert p.default == f.default, (cls, f.name)
        checked += 1
    assert checked >= 3


def test_train_options_are_unset_until_given_and_show_the_dataclass_default():
    opts = _options(_command("train"))
    assert opts["--lr"].default is None and "(default: 0.0002)" in opts["--lr"].help
    assert opts["--max-grad-norm"].default is None  # every scalar TrainConfig field is an option
    assert "--betas" not in opts  # a pair: YAML only


def test_flags_of_earlier_versions_still_exist():
    assert {"--list", "--top", "--threshold", "--mode", "--random-seeds", "--mean-reference", "-d", "-o", "-m"} <= set(
        _options(_command("knockout"))
    )
    assert {"--set", "--heads-source", "--heads-target"} <= set(_options(_command("patch")))
    assert {"--writer", "--writer-model", "--writer-base-url"} <= set(_options(_command("generate")))
    assert {"--writer", "--no-cache", "--cache-dir", "--base-url"} <= set(_options(_command("write-docs")))


def test_help_comes_from_the_field_comment():
    assert field_help(TrainConfig, "lr") == "peak learning rate"
    assert "retrieval | insight | mass" in _options(_command("heads", "score"))["--score"].help
    assert _options(_command("heads", "score"))["--criteria"].help.endswith("(default: none)")  # an empty list says so


@dataclasses.dataclass
class _Cfg:
    """A toy config.

    note: a longer description
        over two lines.
    """

    n: int = 3  # how many
    names: list[str] = dataclasses.field(default_factory=lambda: ["a"])  # comma-separated
    flag: bool | None = None  # None: decided later
    note: str = "x"
    pair: tuple[float, float] = (1.0, 2.0)


def test_options_build_the_config_and_lists_split_on_commas():
    group = Options(_Cfg, minimum={"n": 1})
    params = {p.name: p for p in group.parameters()}
    assert set(params) == {"n", "names", "flag", "note"}  # the pair is not a command-line type
    assert params["n"].default.help == "how many" and params["note"].default.help == "a longer description over two lines."
    assert params["flag"].default.help == "default: decided later"
    got = group.collect({"n": 5, "names": "b, c", "flag": None, "note": "y"})
    assert _Cfg(**got) == _Cfg(n=5, names=["b", "c"], flag=None, note="y")
    assert _Cfg(**group.collect({"n": 3, "names": None, "flag": True, "note": "x"})).names == ["a"]  # unset list: default


def test_with_options_hands_the_command_its_config():
    seen = {}
    group = Options(_Cfg, fields=("n", "note"))

    @with_options(cfg=group)
    def cmd(out: str = typer.Option("o"), cfg: _Cfg = group) -> None:
        seen["cfg"], seen["out"] = cfg, out

    assert list(inspect.signature(cmd).parameters) == ["out", "n", "note"]
    small = typer.Typer()
    small.command()(cmd)
    from typer.testing import CliRunner

    r = CliRunner().invoke(small, ["--n", "7", "--out", "z"])
    assert r.exit_code == 0, r.output
    assert seen == {"cfg": _Cfg(n=7), "out": "z"}


def test_a_name_taken_twice_is_refused():
    with pytest.raises(TypeError, match="named twice"):

        @with_options(model=MODEL)
        def cmd(device: str = typer.Option("x"), model: ModelConfig = MODEL) -> None: ...
