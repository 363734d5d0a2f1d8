"""Installable anywhere: shipped configs found by name, the plugin installer, and (slow) a wheel
built from the checkout, installed into a fresh virtualenv, run from another folder.

The wheel is built from a copy of the checkout's build inputs (so no stale ``build/`` of the
checkout can leak into it) and installed with ``--no-deps --no-index`` into a new virtualenv. That
virtualenv sees the heavy dependencies (torch, Ray, FiftyOne ...) of the environment running the
tests through one ``.pth`` line to a directory of links to them, made without anything of
possam-label itself (no dist-info, no editable finder), so it stays offline and fast while every
possam_label and pipelines module, config, asset and the plugin can only come from the wheel.
The commands run in an empty temporary folder, so the checkout is not on ``sys.path`` either.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "possam_label", "pipelines", "configs", "plugins")
DEMO_IMAGES = ("909_000000.png", "909_000001.png")
# Nothing of possam-label itself may reach the fresh environment from the one running the tests.
_OURS = ("possam_label", "possam-label", "__editable__", "pipelines")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def _dependencies_view(target: Path) -> Path:
    """A directory of links to every installed distribution of this environment except ours."""
    site_packages = Path(sysconfig.get_paths()["purelib"])
    target.mkdir()
    for entry in site_packages.iterdir():
        if entry.name.startswith(_OURS) or entry.suffix == ".pth":
            continue
        (target / entry.name).symlink_to(entry)
    return target


def test_configs_are_found_by_name_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from possam_label.config import CONFIG_DIR, find_config, load_config
    from possam_label.config_mapping import ConfigError

    monkeypatch.chdir(tmp_path)
    assert find_config("possam_tiny") == find_config("configs/possam_tiny.yaml") == CONFIG_DIR / "possam_tiny.yaml"
    cfg = load_config("possam_small")
    assert Path(cfg.resolve_path(cfg.checkpoint)).resolve() == REPO / "possam_label" / "assets" / "small" / "possam_small_heads.safetensors"
    # A file of that path in the current folder wins over the shipped one.
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "possam_tiny.yaml").write_text((CONFIG_DIR / "possam_tiny.yaml").read_text())
    assert find_config("configs/possam_tiny.yaml") == tmp_path / "configs" / "possam_tiny.yaml"
    with pytest.raises(ConfigError, match=f"cannot read config {tmp_path / 'no_such_config'}"):
        load_config("no_such_config")


def test_install_review_plugin_copies_replaces_and_refuses(tmp_path: Path) -> None:
    from possam_label.fiftyone.plugin_install import PluginInstallError, install_review_plugin, plugin_name

    target = install_review_plugin(tmp_path / "plugins")
    assert target == tmp_path / "plugins" / "possam_review" and plugin_name(target) == "@possam/review"
    assert (target / "assets" / "icon.svg").is_file() and not list(target.rglob("__pycache__"))
    (target / "stale.txt").write_text("from an earlier version")
    assert install_review_plugin(tmp_path / "plugins") == target and not (target / "stale.txt").exists()
    (tmp_path / "other" / "possam_review").mkdir(parents=True)
    (tmp_path / "other" / "possam_review" / "notes.txt").write_text("not a plugin")
    with pytest.raises(PluginInstallError, match="is not the @possam/review plugin"):
        install_review_plugin(tmp_path / "other")
    assert (tmp_path / "other" / "possam_review" / "notes.txt").read_text() == "not a plugin"


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("install")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["FIFTYONE_DO_NOT_TRACK"] = "true"

    source = root / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]", "*.egg-info"))
        else:
            shutil.copy2(path, source / name)
    wheels = root / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(wheels), str(source)], root, env, 600)
    (wheel,) = wheels.glob("possam_label-*.whl")

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], root, env, 300)
    python = venv / "bin" / "python"
    venv_site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, env, 60).stdout.strip())
    (venv_site / "possam_test_dependencies.pth").write_text(f"{_dependencies_view(root / 'dependencies')}\n")
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], root, env, 600)

    elsewhere = root / "elsewhere"  # an empty folder: the checkout is not the current directory
    elsewhere.mkdir()
    return {"python": python, "site": venv_site.resolve(), "wheel": wheel, "cwd": elsewhere, "env": env}


@pytest.mark.slow
def test_the_wheel_carries_configs_assets_and_plugin(fresh_env: dict) -> None:
    import zipfile

    names = set(zipfile.ZipFile(fresh_env["wheel"]).namelist())
    for name in ("possam_label/configs/possam_small.yaml", "possam_label/configs/possam_tiny.yaml",
                 "possam_label/assets/small/possam_small_heads.safetensors", "possam_label/assets/synthetic_world/vocab.yaml",
                 "possam_label/plugins/possam_review/fiftyone.yml", "possam_label/plugins/possam_review/__init__.py",
                 "pipelines/autolabel.py", "pipelines/install_plugin.py"):
        assert name in names, f"{name} is not in {fresh_env['wheel'].name}"
    # Every module of the plugin (it is split in several), else FiftyOne lists it but cannot register it.
    for path in sorted((REPO / "plugins").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            name = f"possam_label/{path.relative_to(REPO).as_posix()}"
            assert name in names, f"{name} is not in {fresh_env['wheel'].name}"
    assert not any("__pycache__" in n for n in names)

    probe = (
        "import json, possam_label, pipelines\n"
        "from possam_label.config import DEFAULT_CONFIG, load_config\n"
        "cfg = load_config('possam_small')\n"
        "print(json.dumps({'package': possam_label.__file__, 'pipelines': pipelines.__file__, 'default': str(DEFAULT_CONFIG),"
        " 'heads': cfg.resolve_path(cfg.checkpoint), 'tiny': str(load_config('configs/possam_tiny.yaml').base_dir)}))\n"
    )
    found = json.loads(_run([str(fresh_env["python"]), "-c", probe], fresh_env["cwd"], fresh_env["env"], 300).stdout)
    site = fresh_env["site"]
    for key in ("package", "pipelines", "default", "tiny"):
        assert Path(found[key]).resolve().is_relative_to(site), f"{key}: {found[key]} is not from the installed wheel"
    assert Path(found["default"]) == site / "possam_label" / "configs" / "possam_small.yaml"
    assert Path(found["heads"]).resolve() == site / "possam_label" / "assets" / "small" / "possam_small_heads.safetensors"


@pytest.mark.slow
def test_the_installed_main_job_runs_from_another_folder(fresh_env: dict, process_reaper) -> None:
    dataset = fresh_env["cwd"] / "images"
    dataset.mkdir()
    for name in DEMO_IMAGES:
        shutil.copy2(REPO / "possam_label" / "assets" / "demo" / name, dataset / name)
    out = fresh_env["cwd"] / "out"
    cmd = [str(fresh_env["python"]), "-m", "pipelines.autolabel", "--dataset", "images", "--out", "out", "--num-cpus", "2", "--no-progress"]
    _run(cmd, fresh_env["cwd"], fresh_env["env"], 600)

    images = pq.read_table(out / "images").to_pylist()
    assert sorted(Path(row["file_path"]).name for row in images) == sorted(DEMO_IMAGES)
    assert all(row["status"] == "ok" and row["num_segments"] > 0 for row in images), images
    assert all((out / row["panoptic_file"]).is_file() for row in images)
    assert pq.read_table(out / "segments").num_rows == sum(row["num_segments"] for row in images)
    coco = json.loads((out / "panoptic.json").read_text())
    assert len(coco["images"]) == len(coco["annotations"]) == 2
    run = json.loads((out / "run.json").read_text())
    site = fresh_env["site"]
    assert Path(run["model"]["config_path"]).resolve() == site / "possam_label" / "configs" / "possam_small.yaml"
    assert Path(run["model"]["checkpoint"]).resolve().is_relative_to(site)


@pytest.mark.slow
def test_the_installed_plugin_is_listed_by_fiftyone(fresh_env: dict) -> None:
    plugins = fresh_env["cwd"] / "fo_plugins"
    _run([str(fresh_env["python"]), "-m", "pipelines.install_plugin", "--plugins-dir", str(plugins)], fresh_env["cwd"], fresh_env["env"], 300)
    assert (plugins / "possam_review" / "fiftyone.yml").is_file()
    env = dict(fresh_env["env"], FIFTYONE_PLUGINS_DIR=str(plugins))
    listing = _run(
        [str(fresh_env["python"]), "-c", "import sys; from fiftyone.core.cli import main; sys.argv = ['fiftyone', 'plugins', 'list']; main()"],
        fresh_env["cwd"], env, 300,
    ).stdout
    rows = [line.split() for line in listing.splitlines()]
    assert any(row and row[0] == "@possam/review" and row[-1] == str(plugins / "possam_review") for row in rows), listing
