from dataclasses import dataclass
from pathlib import Path

import pytest

from stream.config import ServeConfig
from twincast.config import build_config, load_toml
from twincast.errors import InputError


@dataclass(frozen=True)
class Example:
    port: int = 1
    name: str = "a"
    sizes: tuple[int, ...] = (1,)
    verbose: bool = False


def test_layers_apply_in_order(tmp_path: Path) -> None:
    toml_file = tmp_path / "twincast.toml"
    toml_file.write_text('[example]\nport = 2\nname = "toml"\nsizes = [3, 4]\n')
    toml = load_toml(toml_file)
    env = {"TWINCAST_EXAMPLE_NAME": "env", "TWINCAST_EXAMPLE_VERBOSE": "yes", "TWINCAST_OTHER_X": "ignored"}
    config = build_config(Example, section="example", toml=toml, env=env, overrides={"port": 5, "name": None})
    assert config == Example(port=5, name="env", sizes=(3, 4), verbose=True)


def test_unknown_keys_and_bad_values_are_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\[example\] has unknown key 'colour'"):
        build_config(Example, section="example", toml={"example": {"colour": 1}})
    with pytest.raises(InputError, match="TWINCAST_EXAMPLE_VERBOSE: cannot read 'maybe' as bool"):
        build_config(Example, section="example", env={"TWINCAST_EXAMPLE_VERBOSE": "maybe"})
    with pytest.raises(InputError, match="not valid TOML"):
        bad = tmp_path / "bad.toml"
        bad.write_text("[serve\n")
        load_toml(bad)


def test_serve_config_validates_itself() -> None:
    with pytest.raises(InputError, match="serve pose 'dance'"):
        ServeConfig(pose="dance")
    with pytest.raises(InputError, match="serve host 'example.com' is not an IP address"):
        ServeConfig(host="example.com")
    assert ServeConfig().is_loopback and not ServeConfig(host="0.0.0.0").is_loopback
    assert "s3cret-token" not in repr(ServeConfig(operator_token="s3cret-token"))
