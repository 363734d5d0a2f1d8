"""Build step of the wheel; the metadata and the package list are in pyproject.toml.

The repository keeps ``configs/`` and ``plugins/`` at its top level, next to ``possam_label/``,
where a wheel has no place for them (site-packages is no project folder). The wheel carries copies
inside the package, ``possam_label/configs`` and ``possam_label/plugins``, which
``possam_label.resources`` finds. Editable installs read the checkout's own directories, so
nothing is copied for them.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# Must match possam_label.resources.SHIPPED_DIRS (the package cannot be imported at build time).
SHIPPED_DIRS = ("configs", "plugins")
_NOT_SHIPPED = ("__pycache__", ".pyc")


class BuildPyWithShippedDirs(build_py):
    """``build_py`` that also copies the shipped top-level directories into the package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for name in SHIPPED_DIRS:
            for source in sorted(Path(name).rglob("*")):
                if source.is_file() and not any(part.endswith(_NOT_SHIPPED) for part in source.parts):
                    target = Path(self.build_lib) / "possam_label" / source
                    self.mkpath(str(target.parent))
                    self.copy_file(str(source), str(target))


setup(cmdclass={"build_py": BuildPyWithShippedDirs})
