"""Params validation: unknown keys, bad values, the profiles and the defaults that conf/config.yaml states."""

import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from zerovlm import config
from zerovlm.cli import compose_params, main
from zerovlm.config import (
    SECTIONS,
    CustomView,
    Section,
    ViewsConfig,
    dataset_config,
    load_section,
    parse_section,
    validate_all,
    vlm_config,
)
from zerovlm.io import ZeroVLMError

ROOT = Path(__file__).resolve().parents[1]
# conf/config.yaml's base values, read here without config.py's loader
CONF = {k: v for k, v in yaml.safe_load((ROOT / "conf" / "config.yaml").read_text()).items() if k != "defaults"}
DEFAULTED = ("data", "models", "views", "stitch", "infer", "score", "report")  # grid: always given in full


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(ZeroVLMError, match=r"views.guidance_scal: unknown key.*Did you mean 'guidance_scale'"):
        parse_section("views", {"guidance_scal": 3.0})


def test_a_renamed_key_gets_its_new_name():
    with pytest.raises(ZeroVLMError, match=r"score.bootstrap_unit: renamed to score.sampling_unit") as error:
        parse_section("score", {"bootstrap_unit": "cluster"})
    assert "bootstrap_samples" not in str(error.value)  # not the look-alike


def test_bad_choice_lists_the_valid_ones():
    with pytest.raises(ZeroVLMError, match=r"stitch.layout: Input should be 'grid' or 'strip'"):
        parse_section("stitch", {"layout": "mosaic"})


def test_unknown_configuration_is_rejected():
    with pytest.raises(ZeroVLMError, match=re.escape("unknown configuration 'origin+top+left'")):
        parse_section("stitch", {"configurations": ["origin+top+left"]})


@pytest.mark.parametrize(
    "section, values, message",
    [
        ("infer", {"view_prompt": [True, True]}, "view_prompt: give true, false or both, each once"),
        ("infer", {"view_prompt": []}, "view_prompt: give true, false or both, each once"),
        ("stitch", {"configurations": ["origin", "all", "all"]}, "configurations: each once"),
        ("stitch", {"configurations": ["all"]}, "configurations: include 'origin', the baseline"),
    ],
)
def test_a_repeated_value_would_count_answers_twice_and_is_rejected(section, values, message):
    with pytest.raises(ZeroVLMError, match=message):
        parse_section(section, values)


def test_paper_answer_mode_needs_a_yes_no_template():
    parse_section("infer", {"answer_mode": "paper", "question_template": "yes_no"})
    parse_section("infer", {"answer_mode": "loglik", "question_template": "true_false"})
    with pytest.raises(ZeroVLMError, match="question_template 'true_false' answers \\['true', 'false'\\]"):
        parse_section("infer", {"answer_mode": "paper", "question_template": "true_false"})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"backend": "lava"}, "infer: Value error, unknown backend 'lava'. Did you mean 'llava'"),
        (
            {"question_template": "yes_n"},
            "infer: Value error, unknown question_template 'yes_n'. Did you mean 'yes_no'",
        ),
    ],
)
def test_backend_and_template_names_are_checked_with_the_params(values, message):
    with pytest.raises(ZeroVLMError, match=re.escape(message)):
        parse_section("infer", values)


def test_a_mistake_is_reported_in_the_section_that_holds_it():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    typo = {**params, "infer": {**params["infer"], "question_templat": "yes_no"}}
    with pytest.raises(ZeroVLMError, match=r"infer.question_templat: unknown key"):
        vlm_config(typo, params["grid"]["vlms"][0])
    bad_backend = {**params, "vlms": {**params["vlms"], "x": {"backend": "lava"}}}
    with pytest.raises(ZeroVLMError, match=r"vlms.x: Value error, unknown backend 'lava'"):
        vlm_config(bad_backend, "x")


def test_unknown_section_is_rejected(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"viewz": {}}))
    with pytest.raises(ZeroVLMError, match="unknown section 'viewz'.*Did you mean 'views'"):
        load_section("views", ViewsConfig, path)


def test_committed_params_file_is_valid():
    sections = validate_all(ROOT / "params.yaml")
    assert sections["data"].source == "synthetic"


def test_separate_configurations_mirror_the_multi_panel_ones():
    from zerovlm.view_configurations import CONFIGURATIONS, images_per_request, is_separate

    stitch = parse_section("stitch", {"configurations": ["origin", "all", "all-separate"]})
    assert stitch.configurations[2] == "all-separate"
    assert CONFIGURATIONS["all-separate"] == CONFIGURATIONS["all"] == ("origin", "left", "right", "random")
    assert is_separate("origin+left-separate") and not is_separate("all")
    assert (
        images_per_request("all"),
        images_per_request("all-separate"),
        images_per_request("no-origin-separate"),
    ) == (1, 4, 3)
    with pytest.raises(ZeroVLMError, match=re.escape("unknown configuration 'left-separate'")):
        parse_section("stitch", {"configurations": ["left-separate"]})  # one panel: nothing to separate


def test_the_report_method_must_be_a_configuration_that_runs(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["report"]["method_configuration"] = "origin+left"
    params["stitch"]["configurations"] = ["origin", "all"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ZeroVLMError, match=r"report.method_configuration 'origin\+left' is not in stitch"):
        validate_all(path)


def test_the_old_llava_template_name_names_its_replacement(tmp_path, capsys):
    with pytest.raises(ZeroVLMError, match=r"infer.chat_format: 'llava_original' was renamed to 'llava_v1'"):
        parse_section("infer", {"chat_format": "llava_original"})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["vlms"]["llava_tiny"]["chat_format"] = "llava_original"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as exit_status:
        main(["validate", "--params", str(path)])
    problem = capsys.readouterr().err.splitlines()[0]  # one problem: on the error line itself
    assert exit_status.value.code == 2
    assert (
        problem.startswith(
            "error: invalid params: vlms.llava_tiny.chat_format: 'llava_original' was renamed "
            "to 'llava_v1' (the same prompt"
        )
        and "'vicuna_v1' is conv_vicuna_v1" in problem
    )


def test_max_new_tokens_is_one_value_per_generating_answer_mode():
    assert parse_section("infer", {}).max_new_tokens.model_dump() == {"generate": 16, "paper": 512}
    assert parse_section("infer", {"max_new_tokens": {"paper": 64}}).max_new_tokens.generate == 16
    with pytest.raises(
        ZeroVLMError,
        match=re.escape(
            "infer.max_new_tokens: Value error, give one value per answer mode, e.g. {generate: 16, paper: 512}"
        ),
    ):
        parse_section("infer", {"max_new_tokens": 16})


def test_the_paper_profile_runs_llava_as_the_authors_did(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    compose_params("paper", tmp_path / "paper.yaml", [])
    params = yaml.safe_load((tmp_path / "paper.yaml").read_text())
    llavas = [name for name in params["grid"]["vlms"] if params["vlms"][name]["backend"] == "llava"]
    assert llavas
    for name in llavas:  # run_llava.py: conv_llava_v1, image_aspect_ratio pad; answers by log-likelihood
        infer = vlm_config(params, name)
        assert (infer.chat_format, infer.image_preprocess, infer.answer_mode) == ("llava_v1", "pad", "loglik")
    compose_params("paper", tmp_path / "evaluator.yaml", ["infer.answer_mode=paper"])
    evaluator = vlm_config(yaml.safe_load((tmp_path / "evaluator.yaml").read_text()), llavas[0])
    assert (evaluator.answer_mode, evaluator.temperature, evaluator.max_new_tokens.paper) == ("paper", 0.2, 512)
    assert evaluator.question_template == "yes_no"


def _nested(model) -> dict:
    """field name -> the Section class of a nested section (data.synthetic, infer.max_new_tokens, ...)."""
    return {
        name: field.annotation
        for name, field in model.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section)
    }


def _key_mismatches(model, conf: dict, where: str) -> list[str]:
    """Keys the schema and conf/config.yaml do not share, at every nesting level."""
    problems = [
        f"{where}.{key}: a schema field without a value in conf/config.yaml"
        for key in model.model_fields
        if key not in conf
    ]
    problems += [
        f"{where}.{key}: in conf/config.yaml but not a schema field" for key in conf if key not in model.model_fields
    ]
    for name, sub in _nested(model).items():
        if isinstance(conf.get(name), dict):
            problems += _key_mismatches(sub, conf[name], f"{where}.{name}")
    return problems


def test_conf_states_every_schema_field_and_nothing_else():
    assert set(CONF) == set(SECTIONS)
    problems = [p for name in DEFAULTED + ("grid",) for p in _key_mismatches(SECTIONS[name], CONF[name], name)]
    assert problems == []
    for name in CONF["datasets"]:  # catalog entries: only keys of the section they are merged over
        dataset_config(CONF, name)
    for name in CONF["vlms"]:
        vlm_config(CONF, name)


def test_the_key_check_sees_both_directions_at_every_level():
    conf = yaml.safe_load(yaml.safe_dump(CONF["data"]))
    del conf["download_max_mb"]["image"]
    conf["synthetic"]["colours"] = 3
    assert _key_mismatches(SECTIONS["data"], conf, "data") == [
        "data.download_max_mb.image: a schema field without a value in conf/config.yaml",
        "data.synthetic.colours: in conf/config.yaml but not a schema field",
    ]


def _flat(values: dict, where: str) -> dict:
    """{"a": {"b": 1}} -> {"where.a.b": 1}"""
    flat = {}
    for key, value in values.items():
        flat.update(_flat(value, f"{where}.{key}") if isinstance(value, dict) else {f"{where}.{key}": value})
    return flat


def test_a_key_left_out_takes_its_conf_base_value():
    built = {k: v for name in DEFAULTED for k, v in _flat(SECTIONS[name]().model_dump(mode="json"), name).items()}
    stated = {k: v for name in DEFAULTED for k, v in _flat(CONF[name], name).items()}
    assert {k: (v, stated.get(k)) for k, v in built.items() if v != stated.get(k)} == {}  # (built, conf)
    data = parse_section("data", {"synthetic": {"num_scenes": 3}, "download_max_mb": {"image": 1.0}})
    assert data.synthetic.model_dump(mode="json") == {**CONF["data"]["synthetic"], "num_scenes": 3}
    assert data.download_max_mb.model_dump() == {**CONF["data"]["download_max_mb"], "image": 1.0}


def test_the_schema_states_no_default_values():
    def stated(model, where):
        found = [f"{where}.{name}" for name, field in model.model_fields.items() if not field.is_required()]
        return found + [f for name, sub in _nested(model).items() for f in stated(sub, f"{where}.{name}")]

    assert [f for name in DEFAULTED + ("grid",) for f in stated(SECTIONS[name], name)] == []


def test_defaults_need_the_repository_conf_and_say_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(config, "CONF_FILE", tmp_path / "site-packages" / "conf" / "config.yaml")
    config.conf_base.cache_clear()
    try:
        with pytest.raises(
            ZeroVLMError,
            match=r"conf/config.yaml: not found\. zerovlm reads the params defaults "
            r"from conf/config.yaml .*a wheel does not carry.*pip install -e \.",
        ):
            ViewsConfig(seed=1)
        with pytest.raises(SystemExit):
            main(["validate", "--params", str(ROOT / "params.yaml")])
        assert capsys.readouterr().err.startswith(f"error: {tmp_path}/site-packages/conf/config.yaml: not found")
    finally:
        monkeypatch.undo()
        config.conf_base.cache_clear()
    assert ViewsConfig(seed=1).model == CONF["views"]["model"]


def test_view_names_variants_and_ranges_are_stated_once_in_poses():
    from zerovlm.views import poses

    assert poses.VIEW_PRESETS == (*poses.PRESETS, poses.RANDOM_PRESET) == ("left", "right", "top", "random")
    fields = ViewsConfig.model_fields
    assert typing.get_args(typing.get_args(fields["presets"].annotation)[0]) == poses.VIEW_PRESETS
    assert typing.get_args(fields["variant"].annotation) == poses.POSE_VARIANTS
    for key, (low, high) in (
        ("polar_deg", poses.POLAR_RANGE_DEG),
        ("azimuth_deg", poses.AZIMUTH_RANGE_DEG),
        ("radius", poses.RADIUS_RANGE),
    ):  # the schema accepts exactly the poses' ranges
        view = {"name": "back", "polar_deg": 0.0, "azimuth_deg": 0.0}
        for value in (low, high):
            assert getattr(CustomView(**{**view, key: value}), key) == value
        for value in (low - 1e-6, high + 1e-6):
            with pytest.raises(ZeroVLMError, match=f"views.custom.0.{key}: Input should be"):
                parse_section("views", {"custom": [{**view, key: value}]})


def test_validating_params_loads_no_torch():
    code = "import sys, zerovlm.config as c; c.validate_all('params.yaml'); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
