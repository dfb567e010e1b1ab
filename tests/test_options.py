"""One table of run options (ltcompress.options.OPTIONS): the CLI's click options, compress()'s signature and
docstring, and docs/config.md are generated from it and from config.py, and agree with them."""

import inspect
import pydoc
from pathlib import Path

import click
import pytest

from conftest import flat_keys
from ltcompress import api, cli, config_docs
from ltcompress.api import build_config, compress
from ltcompress.config import resolve
from ltcompress.errors import UsageError
from ltcompress.options import OPTIONS, SETTINGS, check_keywords

ROOT = Path(__file__).resolve().parent.parent
CALLS = [o for o in OPTIONS if o.keyword and not o.targets]  # compress()'s own parameters (preset, resume, ...)


def test_docs_config_page_is_generated_from_the_code():
    page = (ROOT / "docs" / "config.md").read_text()
    assert page == config_docs.page(), "docs/config.md is stale: python -m ltcompress.config_docs > docs/config.md"


def test_the_page_covers_every_config_key_with_a_meaning():
    keys = [key for key, _, _ in config_docs.config_keys()]
    assert sorted(keys) == sorted(flat_keys(resolve(None, {}).to_dict()))
    meanings = config_docs.field_meanings(inspect.getsource(config_docs.config_mod))
    missing = [key for key, cls, f in config_docs.config_keys() if not meanings[(cls.__name__, f.name)]]
    assert not missing, f"give these fields a comment in config.py (their meaning in docs/config.md): {missing}"
    assert all(key in keys for o in SETTINGS.values() for key in o.targets), "an option sets a key that is not one"


def test_a_fields_meaning_is_the_comment_beside_it_else_the_lines_above():
    source = (
        "class A:\n    x: int = 1  # beside\n    # --- a heading\n    # above,\n    # in two lines\n"
        "    y: int = 2\n    z: int = 3\n"
    )
    assert config_docs.field_meanings(source) == {
        ("A", "x"): "beside",
        ("A", "y"): "above, in two lines",
        ("A", "z"): "",
    }


def test_run_click_options_are_the_table_in_its_order():
    params = [p for p in cli.run.params if isinstance(p, click.Option)]
    assert [p.name for p in params] == [o.name for o in OPTIONS]
    for p, o in zip(params, OPTIONS):
        assert p.opts == [o.cli_flag] and p.metavar == o.metavar and p.is_flag == (o.type is bool)
        assert p.help == (o.help if isinstance(o.help, str) else o.help())
        assert p.multiple == (o.multiple or o.pairs)
        assert (p._custom_shell_complete is not None) == (o.completion is not None)
        if o.choices:
            assert isinstance(p.type, click.Choice) and tuple(p.type.choices) == o.choices
        if o.path:
            assert isinstance(p.type, click.Path) and (p.type.dir_okay, p.type.file_okay) == (
                o.path == "dir",
                o.path == "file",
            )


def test_compress_signature_and_docstring_list_every_setting():
    params = inspect.signature(compress).parameters
    assert not [p for p in params.values() if p.kind is p.VAR_KEYWORD]  # every keyword is named
    assert set(params) == {"config", *SETTINGS, *(o.name for o in CALLS)}
    for o in SETTINGS.values():
        assert (params[o.name].default, params[o.name].annotation) == (None, o.annotation)
    doc, rendered = inspect.getdoc(compress) or "", pydoc.render_doc(compress)
    assert all(f"{o.name} (" in doc and o.cli_flag in doc and f"{o.name}:" in rendered for o in SETTINGS.values())


def test_an_unknown_keyword_is_the_type_error_python_raises():
    plain: dict = {}
    exec("def compress(teacher=None):\n    pass", plain)  # a plain function of that name: Python's own message
    with pytest.raises(TypeError) as python:
        plain["compress"](epoch=3)
    with pytest.raises(TypeError) as ours:
        api.compress(epoch=3)
    assert str(ours.value) == str(python.value) == "compress() got an unexpected keyword argument 'epoch'"


@pytest.mark.parametrize(
    "given, named",
    [
        ({"epochs": 3}, "epochs"),
        ({"teacher": "resnet18", "preset": "fmnist-lt"}, "teacher, preset"),
        ({"overrides": {"student.train.lr": 0.1}}, "overrides"),
    ],
)
def test_config_with_a_setting_beside_it_is_exit_2_naming_it(given, named):
    with pytest.raises(UsageError, match=f"got config= and also {named}, .*dataclasses.replace") as info:
        compress(config=build_config(), **given)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    check_keywords({"epochs": None}, build_config())  # None is "not given": the config's value stands


def _cli_value(o):
    """An argument for the row's option and the keyword value it becomes."""
    if o.type is bool:
        return [o.cli_flag], not o.negated
    if o.pairs:
        return [o.cli_flag, "k=1"], {"k": 1}
    raw, value = (o.choices[0], o.choices[0]) if o.choices else ("3", 3) if o.type is int else ("x", "x")
    return [o.cli_flag, raw], (value,) if o.multiple else value


def test_cli_run_passes_each_option_as_its_keyword_and_left_off_keeps_the_recipe(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(api, "compress", lambda **kw: calls.append(kw))
    keywords = [o for o in OPTIONS if o.keyword]
    assert cli.main(["run"]) is None and set(calls[0]) == {o.name for o in keywords}
    defaults = {name: p.default for name, p in inspect.signature(compress).parameters.items()}
    # left off is compress()'s default: a setting None, the recipe's (an empty --gate, --int8 not given)
    assert calls[0] == {o.name: defaults[o.name] for o in keywords}
    args = [a for o in keywords for a in _cli_value(o)[0]]
    cli.main(["run", *args, "--json"])
    assert calls[1] == {o.name: _cli_value(o)[1] for o in keywords}


def test_a_flag_that_implies_another_setting_sets_it_unless_given():
    assert build_config(int8_repair=True).export.int8 is True
    with pytest.raises(UsageError, match="turn it on with --int8"):
        build_config(int8_repair=True, overrides={"export.int8": False})
