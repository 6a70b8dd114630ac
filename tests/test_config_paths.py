"""``--config`` takes the configs by the repository path and the package path."""

import pathlib

import pytest
from absl import flags
from ml_collections import config_flags

from siammae_jax.configs import siammae

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "path",
    [
        "configs/siammae.py",  # the documented command-line path (a re-export)
        "siammae_jax/configs/siammae.py",  # the package's file, from a checkout
        siammae.__file__,  # the package's file wherever it is installed
    ],
)
def test_config_flag_loads_the_package_configs(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values)
    values(["prog", f"--config={path}:tiny"])
    assert values.config.to_json() == siammae.get_config("tiny").to_json()
    assert values.config.to_json() != siammae.get_config("vits16").to_json()
