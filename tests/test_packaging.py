"""What `pip install .` ships: every package folder, the built-in data, and the kernels under their own name."""

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed():
    listed = set(_setuptools()["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "aapp").rglob("__init__.py")}
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


def test_kernels_install_as_aapp_kernels():
    import aapp_kernels

    assert _setuptools()["package-dir"] == {"aapp_kernels": "kernels"}
    assert Path(aapp_kernels.__file__).resolve().parent == REPO / "kernels"


def test_every_built_in_data_file_ships():
    # The built-in prompt sets are read from the installed package: a file no glob names is left out.
    globs = _setuptools()["package-data"]["aapp"]
    files = [p.relative_to(REPO / "aapp") for p in (REPO / "aapp" / "data").iterdir() if p.name != "README.md"]
    assert files and not [f for f in files if not any(f.match(g) for g in globs)]
