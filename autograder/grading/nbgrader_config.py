"""nbgrader settings for `fpnlab grade`, loaded after autograder/nbgrader_config.py.

`fpnlab grade` runs nbgrader with the environment variables read here set; see autograder/grade.py.
"""
import os

c = get_config()  # noqa: F821 (nbgrader's config loader provides it)

# The kernel has no network (bwrap --unshare-net): ZMQ talks over unix sockets in the grader's
# private runtime folder (JUPYTER_RUNTIME_DIR), next to the connection file; the sandbox never
# sees that folder: the launcher binds the sockets and hands the kernel their descriptors.
if os.environ.get("FPNLAB_GRADE_IPC"):
    c.KernelManager.transport = "ipc"
    c.KernelManager.ip = os.environ["FPNLAB_GRADE_IPC"]
    # One kernel at a time per nbgrader process: a fixed connection file in the same folder
    # (jupyter_client would otherwise write it to /tmp).
    c.KernelManager.connection_file = os.environ["FPNLAB_GRADE_IPC"] + ".json"
# Whatever kernel a submission names, the sandboxed one runs it (its kernelspec is first on
# JUPYTER_PATH, and OverwriteKernelspec restores the source's kernelspec).
c.Execute.kernel_name = "fpnlab"
# The sandbox kills the kernel at the notebook's wall-clock limit; no single cell may wait longer.
c.Execute.timeout = int(os.environ.get("FPNLAB_GRADE_TIMEOUT", "600"))
c.Execute.startup_timeout = 120
c.Execute.iopub_timeout = 30
# Execute with a cap on the output a notebook may send back (100 MB of print()).
c.Autograde.autograde_preprocessors = [
    "autograder.grade.CappedExecute",
    "autograder.grade.KeepHandOvers",      # nbgrader's own verdict is discarded: the judge decides
    "nbgrader.preprocessors.IgnorePattern",
    "nbconvert.preprocessors.ClearMetadataPreprocessor",
    "nbgrader.preprocessors.LimitOutput",
    "nbgrader.preprocessors.SaveAutoGrades",
    "nbgrader.preprocessors.AssignLatePenalties",
    "nbgrader.preprocessors.CheckCellMetadata",
]
c.LimitOutput.max_lines = 200
c.LimitOutput.max_traceback = 60
# Feedback: no hidden-test code and no traceback lines (which quote the hidden tests); each
# failed test keeps its message (stage, expected, actual, likely cause).
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "autograder.grade.SanitizeFeedback",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
# Times in the grading logs (grading/logs/), so a slow notebook shows where its time went.
c.Application.log_format = "%(asctime)s.%(msecs)03d [%(name)s | %(levelname)s] %(message)s"
c.Application.log_datefmt = "%H:%M:%S"
