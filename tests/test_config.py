import pytest
from conftest import REPO

from shapshift.config import RunConfig
from shapshift.errors import ConfigError


def test_defaults_validate_and_demo_config_loads():
    cfg = RunConfig.from_yaml(REPO / "configs" / "demo.yaml")
    assert cfg.model.spec == "smollm2-135m"
    assert cfg.run_dir.name == "demo"
    assert RunConfig().validate().data.template.count("{input}") == 1


def test_overrides_are_parsed_as_yaml():
    cfg = RunConfig.from_yaml(REPO / "configs" / "demo.yaml", ["data.n_explain=2", "adapt.conditions=[few_shot]",
                                                               "explain.noise_floor=false"])
    assert cfg.data.n_explain == 2 and cfg.adapt.conditions == ["few_shot"] and cfg.explain.noise_floor is False


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="Valid keys in data: .*input_column"):
        RunConfig.from_dict({"data": {"inptu_column": "x"}})


@pytest.mark.parametrize("values, match", [
    ({"data": {"template": "no slot here"}}, "no \\{input\\} slot"),
    ({"explain": {"method": "magic"}}, "Choose one of"),
    ({"data": {"n_explain": "many"}}, "must be a number"),
    ({"adapt": {"conditions": ["zero_shot", "telepathy"]}}, "unknown names"),
])
def test_bad_values_get_clear_messages(values, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_dict(values)


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.from_yaml(tmp_path / "nope.yaml")


def test_fingerprint_tracks_sections():
    a, b = RunConfig(), RunConfig.from_dict({"compare": {"ks": [2]}})
    assert a.fingerprint("model", "explain") == b.fingerprint("model", "explain")
    assert a.fingerprint() != b.fingerprint()


def test_a_set_value_that_is_not_yaml_is_taken_as_text():
    """``--set 'data.template=Review: {input}\\nSentiment:'`` (not valid YAML) is the template as typed."""
    cfg = RunConfig.from_yaml(REPO / "configs" / "demo.yaml", ["data.template=Review: {input}\\nSentiment:",
                                                               'adapt.instruction="Say: yes or no"'])
    assert cfg.data.template == "Review: {input}\nSentiment:"
    assert cfg.adapt.instruction == "Say: yes or no"
