"""pyproject.toml lists its packages by hand (kernels/ is mapped to cogcore.kernels): none is missed."""

import os
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_package_is_listed_and_kernels_install_as_cogcore_kernels():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        tool = tomllib.load(f)["tool"]["setuptools"]
    assert tool["package-dir"] == {"cogcore.kernels": "kernels"}
    found = {"cogcore.kernels"}
    for folder, _, files in os.walk(os.path.join(ROOT, "cogcore")):
        if "__init__.py" in files:
            found.add(os.path.relpath(folder, ROOT).replace(os.sep, "."))
    assert set(tool["packages"]) == found
