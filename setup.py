"""The wheel carries the released course (lessons/ and explore/) as ``fpnlab/_course``, so that
``fpnlab lessons`` can copy it into a learner's workspace. An editable install reads them in place
from the checkout. Nothing else lives here: the project's metadata is in pyproject.toml."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

TOP = Path(__file__).resolve().parent
RELEASED = ("lessons", "explore")       # never solutions/: it holds the answers


class BuildWithCourse(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = Path(self.build_lib) / "fpnlab" / "_course"
        for part in RELEASED:
            if (TOP / part).is_dir():
                shutil.copytree(TOP / part, dest / part, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))


setup(cmdclass={"build_py": BuildWithCourse})
