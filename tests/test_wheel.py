"""A regular wheel carries the shipped model: build one, install it into a fresh venv, run
`cogcore generate` from outside the checkout. Skipped when pip cannot build offline."""

import os
import site
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_install_answers_with_the_shipped_model(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                            ROOT], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(f"pip cannot build a wheel here (offline?): {build.stderr.strip()[-200:]}")
    wheel = next((tmp_path / "dist").glob("cogcore-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True)
    # numpy, numba, ... from this venv, as plain paths: its editable cogcore is not among them
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(purelib, "deps.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    run = subprocess.run([python, "-m", "cogcore", "generate", "--backend", "numpy", "12+345="],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "357\n"
    where = subprocess.run([python, "-c", "import cogcore.cli as c; print(c.DEFAULT_MODEL, c.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv)) and ROOT not in where
