"""nbgrader's settings for every account of the hub: the exchange, one folder per course, and
which courses each account sees (the hub's groups).

The hub puts this folder on JUPYTER_CONFIG_PATH of every server it spawns (so the Assignments
list, the formgrader and the servers' terminals read it). For nbgrader typed outside the hub
(ssh, cron), copy this file to /etc/jupyter/nbgrader_config.py as well.
"""
import os

from nbgrader.auth import JupyterHubAuthPlugin

c = get_config()  # noqa: F821 (nbgrader's config loader provides it)

# One exchange for every course: 1777 (anyone creates, nobody removes another's course folder).
c.Exchange.root = os.environ.get("FPNLAB_EXCHANGE", "/srv/nbgrader/exchange")
# Learners' copies go to ~/<course>/<assignment>/, so two courses' "01-preprocessing" never meet.
c.Exchange.path_includes_course = True
# The courses an account sees are its hub groups: nbgrader-<course> (learners) and
# formgrade-<course> (instructors, graders); `nbgrader db student add` enrols through the hub.
c.Authenticator.plugin_class = JupyterHubAuthPlugin
