import pytest
from conftest import REPO

from shapshift.config import RunConfig
from shapshift.errors import ConfigError
from shapshift.validation import load_config


def test_defaults_validate_and_demo_config_loads():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.model.spec == "smollm2-135m"
    assert cfg.run_dir.name == "demo"
    assert RunConfig().validate().data.template.count("{input}") == 1


def test_overrides_are_parsed_as_yaml():
    cfg = load_config(REPO / "configs" / "demo.yaml", ["data.n_explain=2", "adapt.conditions=[few_shot]",
                                                               "explain.noise_floor=false"])
    assert cfg.data.n_explain == 2 and cfg.adapt.conditions == ["few_shot"] and cfg.explain.noise_floor is False


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="(?s)Valid keys in data: .*input_column"):
        load_config({"data": {"inptu_column": "x"}})


@pytest.mark.parametrize("values, match", [
    ({"data": {"template": "no slot here"}}, "no \\{input\\} slot"),
    ({"explain": {"method": "magic"}}, "Choose one of"),
    ({"data": {"n_explain": "many"}}, "must be a number"),
    ({"adapt": {"conditions": ["zero_shot", "telepathy"]}}, "unknown names"),
])
def test_bad_values_get_clear_messages(values, match):
    with pytest.raises(ConfigError, match=match):
        load_config(values)


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_fingerprint_tracks_sections():
    a, b = RunConfig(), load_config({"compare": {"ks": [2]}})
    assert a.fingerprint("model", "explain") == b.fingerprint("model", "explain")
    assert a.fingerprint() != b.fingerprint()


def test_a_set_value_that_is_not_yaml_is_taken_as_text():
    """``--set 'data.template=Review: {input}\\nSentiment:'`` (not valid YAML) is the template as typed."""
    cfg = load_config(REPO / "configs" / "demo.yaml", ["data.template=Review: {input}\\nSentiment:",
                                                               'adapt.instruction="Say: yes or no"'])
    assert cfg.data.template == "Review: {input}\nSentiment:"
    assert cfg.adapt.instruction == "Say: yes or no"


@pytest.mark.parametrize("override, key, expected", [
    ("data.template=Review: {input}", "template", "Review: {input}"),  # YAML would read a mapping
    ("data.template=Review {input}: yes", "template", "Review {input}: yes"),
    ("data.template=Review {input}\\nSentiment", "template", "Review {input}\nSentiment"),  # plain YAML keeps \\n
    ('data.template="Quoted: {input}\\tx"', "template", "Quoted: {input}\tx"),  # quoted: YAML's escapes
    ("adapt.instruction=yes", "instruction", "yes"),  # not the boolean True
    ("data.target_column=null", "target_column", None),
    ("data.n_explain=3", "n_explain", 3),
])
def test_set_values_of_text_settings_are_taken_as_typed(override, key, expected):
    """Item 7: a text setting takes the --set value as typed; quoted values and null keep their YAML meaning."""
    cfg = load_config(REPO / "configs" / "demo.yaml", [override])
    section = getattr(cfg, override.split(".")[0])
    assert getattr(section, key) == expected


def test_cli_set_template_needs_no_quoting_tricks(tmp_path):
    """Item 7: the README's template override goes through the CLI without a YAML traceback."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "shapshift.cli", "report", "--config", str(REPO / "configs" / "demo.yaml"),
                           "--set", f"output_dir={tmp_path}", "--set", "data.template=Review: {input}\\nSentiment:"],
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr and "YAML" not in done.stderr, done.stderr
    assert done.returncode == 2 and "compare" in done.stderr  # nothing to report yet: the one-paragraph error
