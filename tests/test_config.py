import dataclasses
import pytest

from conftest import flat_keys

from ltcompress.api import build_config
from ltcompress.config import list_presets, load_preset, resolve
from ltcompress.errors import UsageError
from ltcompress.registry import Registry


def test_builtin_presets_resolve():
    assert {"fmnist-lt", "fmnist-lt-bench", "fmnist-lt-best"} <= set(list_presets())
    default = resolve(None, {})
    assert default.preset == "fmnist-lt" and default.data.dataset == "fmnist-lt"
    assert (default.data.n_max, default.data.imbalance) == (1000, 100.0)
    bench = resolve("fmnist-lt-bench", {})
    assert bench.teacher.train.epochs == 30 and bench.student.train.epochs == 30
    assert bench.student.train.lr == 0.05 and bench.student.train.batch_size == 64
    best = resolve("fmnist-lt-best", {})  # the recipe that met the balanced and worst-class targets
    assert (best.data.input_size, best.data.resize, best.student.train.epochs, best.method.name) == (
        64,
        True,
        100,
        "bsce",
    )


def test_tail_preset_is_the_default_with_the_measured_changes_only():
    """fmnist-lt-tail's numbers come from the default preset run with three --set changes
    (bench/teacher_recipes.py, tau-norm-0.5 x bkd-80ep): anything else that differs would void them."""
    default = flat_keys(resolve("fmnist-lt", {}).to_dict())
    tail = flat_keys(resolve("fmnist-lt-tail", {}).to_dict())
    labels = ("preset", "description", "recipe_reason")
    changed = {k: tail[k] for k in default if tail[k] != default[k] and k not in labels}
    assert tail["preset"] == "fmnist-lt-tail" and changed == {
        "teacher.rebalance": "tau-norm",
        "teacher.rebalance_args": {"tau": 0.5},
        "student.train.epochs": 80,
    }


def test_precedence_preset_then_overrides_then_keywords():
    cfg = build_config("fmnist-lt", {"student.train.epochs": 3, "method.name": "kd"}, method="ce", gates=["few >= 0.5"])
    assert cfg.student.train.epochs == 3 and cfg.method.name == "ce" and cfg.gates == ("few >= 0.5",)
    assert cfg.teacher.train.epochs == load_preset("fmnist-lt")["teacher"]["train"]["epochs"]


def test_teacher_seed_follows_run_seed_unless_fixed():
    assert resolve(None, {"run.seed": 3}).teacher_seed == 3
    assert resolve(None, {"run.seed": 3, "teacher.seed": 0}).teacher_seed == 0


def test_exponent_without_dot_is_a_float():
    assert resolve(None, {"student.train.lr": "1e-3"}).student.train.lr == 0.001


def test_method_args_merge_over_preset(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("method: {name: kd, args: {T: 3}}\n")
    cfg = build_config(str(preset), {"method.args": {"a_kd": 0.5}})
    assert dict(cfg.method.args) == {"T": 3, "a_kd": 0.5}
    # a user's file states what differs: the rest is its dataset's recipe, and the log says so
    assert cfg.student.train.epochs == resolve("fmnist-lt", {}).student.train.epochs
    assert cfg.recipe_reason == f"from --preset {preset} over recipe fmnist-lt"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"student.train.epoch": 3}, "unknown config key 'student.train.epoch'. Did you mean: epochs"),
        ({"stduent.arch": "x"}, "Did you mean: student"),
        ({"student.train.epochs": "many"}, "should be of type int"),
        ({"student.train.lr": True}, "should be of type float"),
        ({"teacher.init": "imagenet"}, "teacher.init must be"),
        ({"student.train.epochs": 0}, "epochs must be at least 1"),
        ({"student.train.grad_clip": 0}, "grad_clip must be positive"),
        ({"method.args": "T=2"}, "method.args='T=2' should be of type Mapping"),
        ({"gates": 0.5}, "should be of type tuple"),
    ],
)
def test_bad_config_is_usage_error(overrides, message):
    with pytest.raises(UsageError, match=message) as info:
        resolve(None, overrides)
    assert info.value.exit_code == 2


def test_unknown_preset_and_bad_yaml(tmp_path):
    with pytest.raises(UsageError, match="unknown preset 'fmnist'.*fmnist-lt"):
        resolve("fmnist", {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        resolve(str(bad), {})
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("data: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(UsageError):
        resolve(str(unsafe), {})


def test_config_round_trips_through_its_dict():
    cfg = resolve(None, {"gates": ["few >= 0.1"]})
    d = cfg.to_dict()
    d.pop("preset")
    assert resolve(None, flat_keys(d)) == cfg


def test_registry_names_closest_valid_names():
    reg: Registry[int] = Registry("widget")
    for name in ("alpha", "beta", "gamma"):
        reg.register(name, 1)
    with pytest.raises(UsageError, match="unknown widget 'alpah'. Did you mean: alpha"):
        reg.get("alpah")
    with pytest.raises(ValueError):
        reg.register("alpha", 2)


def test_the_environment_is_read_when_the_config_resolves_and_recorded(monkeypatch, tmp_path):
    from ltcompress.config import apply_environment, resolve

    def unresolved(**run_data):  # the defaults, before any environment
        cfg = resolve(None, {})
        return dataclasses.replace(
            cfg,
            run=dataclasses.replace(cfg.run, cache_dir=run_data.get("cache")),
            data=dataclasses.replace(cfg.data, data_dir=run_data.get("data"), download=True),
        )

    env = {"LTCOMPRESS_CACHE": str(tmp_path / "c"), "LTCOMPRESS_DATA": str(tmp_path / "d"), "LTCOMPRESS_OFFLINE": "1"}
    cfg = apply_environment(unresolved(), env)
    assert cfg.run.cache_dir == str(tmp_path / "c") and cfg.data.data_dir == str(tmp_path / "d")
    assert cfg.data.download is False
    mine = apply_environment(unresolved(cache="/x", data="/y"), env)
    assert (mine.run.cache_dir, mine.data.data_dir) == ("/x", "/y")  # explicit settings win
    bare = apply_environment(unresolved(), {"XDG_CACHE_HOME": str(tmp_path)})
    assert bare.run.cache_dir == str(tmp_path / "ltcompress") and bare.data.download is True
    monkeypatch.setenv("LTCOMPRESS_CACHE", str(tmp_path / "e"))
    assert resolve(None, {}).to_dict()["run"]["cache_dir"] == str(tmp_path / "e")  # what config.yaml records
