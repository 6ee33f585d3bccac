# nbgrader run from the repository root uses the course configuration, on this folder.
import os

c = get_config()  # noqa: F821
load_subconfig("autograder/nbgrader_config.py")  # noqa: F821
if not os.environ.get("FPNLAB_COURSE_ROOT"):
    c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
