"""nbgrader configuration for the course (source = solutions/, release = lessons/).

Used by `make release`, by the round-trip tests and by `fpnlab grade`, each of which points
nbgrader at a course directory of its own and loads this file.
"""
import os

c = get_config()  # noqa: F821 (nbgrader's config loader provides it)

c.CourseDirectory.course_id = "fpnlab"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "lessons"
# The course folder: the one a tool names, else the folder of the nbgrader_config.py that loads
# this file (the repository's, or the one `fpnlab grade` writes into OUT), else nbgrader's own
# default (the working directory).
if os.environ.get("FPNLAB_COURSE_ROOT"):
    c.CourseDirectory.root = os.environ["FPNLAB_COURSE_ROOT"]
# Only the notebooks are assignment material; keep build debris out of the release.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", ".nbgrader.log"]
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
# A generous per-cell limit: a 2-core laptop imports torch in ~5 s and runs a ResNet-50 forward.
c.Execute.timeout = 300
# Restore grade cells a learner deleted, so the tests still run and the points are counted.
c.OverwriteCells.add_missing_cells = True
