"""JupyterHub for fpnlab classes: local unix accounts, one server per account, nbgrader's exchange.

Run as root, from the venv that holds ``fpnlab[grader]`` and ``jupyterhub`` (the servers it
spawns run that venv's ``jupyterhub-singleuser``), with the class file and the proxy on hand::

    export FPNLAB_HUB_CLASS=/etc/fpnlab/class.json          # who is who (class.example.json)
    export PATH=/opt/fpnlab/hub-proxy/node_modules/.bin:$PATH   # configurable-http-proxy
    cd /srv/jupyterhub && /opt/fpnlab/.venv/bin/jupyterhub -f /opt/fpnlab/autograder/hub/jupyterhub_config.py

The class file names, per course id, its ``instructors`` (they release, collect and grade),
its ``graders`` (extra formgrader accounts) and its ``learners``; ``exchange`` is nbgrader's
exchange folder, shared by every course. From it this file makes:

- the accounts allowed to log in (local unix accounts; PAM checks their passwords);
- per course, the hub groups nbgrader's ``JupyterHubAuthPlugin`` reads: ``nbgrader-<course>``
  (learners: the courses whose assignments a learner sees) and ``formgrade-<course>``
  (instructors and graders);
- per course, a role for its staff: add learners to ``nbgrader-<course>`` (``nbgrader db student
  add`` does it through the hub's API) and open the course's formgrader service, when one is
  configured (``"formgrader": {"account": ..., "port": ...}``: a server run as that account);
- each server's settings: learners get the Assignments list and Validate only (no formgrader,
  course list or Create Assignment), staff everything; every server finds the hub's global
  nbgrader settings (``jupyter/nbgrader_config.py``: the exchange, one folder per course, the
  course list from hub groups) on ``JUPYTER_CONFIG_PATH``.

``tests/test_hub.py`` runs this file as it is (``load_subconfig``), changing only the
authenticator (a shared password instead of PAM), the ports and where the hub keeps its state.
"""
import json
import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821 (JupyterHub's config loader provides it)

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent        # the hub's venv: jupyterhub-singleuser, nbgrader, fpnlab
CLASS_FILE = Path(os.environ.get("FPNLAB_HUB_CLASS", "/etc/fpnlab/class.json"))
CLASS = json.loads(CLASS_FILE.read_text())
EXCHANGE = CLASS.get("exchange", "/srv/nbgrader/exchange")
COURSES = CLASS["courses"]
GLOBAL_CONFIG = HERE / "jupyter"          # nbgrader_config.py of every account (/etc/jupyter's part)
LEARNER_CONFIG = HERE / "learner"         # what a learner's server leaves out


def staff(course: dict) -> list:
    """The people who teach a course (they log in)."""
    return list(course.get("instructors", [])) + list(course.get("graders", []))


def formgrader_account(course: dict) -> list:
    """The account the course's formgrader service runs as (it does not log in)."""
    return [course["formgrader"]["account"]] if course.get("formgrader") else []


# ----------------------------------------------------------------------------- who logs in

c.JupyterHub.authenticator_class = "pam"      # local unix accounts and their passwords
c.Authenticator.allowed_users = {name for course in COURSES.values()
                                 for name in staff(course) + list(course.get("learners", []))}
c.Authenticator.admin_users = set(CLASS.get("admins", []))   # the hub's administrators, if any
# Only those: not every account the hub knows (a formgrader's account is one, below).
c.Authenticator.allow_existing_users = False

# ----------------------------------------------------------------------------- courses

# The formgrader's account is in its course's staff group too: nbgrader's JupyterHubAuthPlugin,
# in the service, asks the hub which courses that account grades.
c.JupyterHub.load_groups = {
    **{f"formgrade-{cid}": {"users": staff(course) + formgrader_account(course)}
       for cid, course in COURSES.items()},
    **{f"nbgrader-{cid}": {"users": list(course.get("learners", []))}
       for cid, course in COURSES.items()},
}


def course_staff_scopes(cid: str) -> list:
    """What a course's instructors and graders may do on the hub: enrol learners (nbgrader's
    JupyterHubAuthPlugin adds them to nbgrader-<course>) and open its formgrader service."""
    group = f"nbgrader-{cid}"
    scopes = [f"list:groups!group={group}", f"read:groups!group={group}",
              f"groups!group={group}"]
    if COURSES[cid].get("formgrader"):
        scopes.append(f"access:services!service={cid}")
    return scopes


c.JupyterHub.load_roles = [
    {"name": f"staff-{cid}", "description": f"instructors and graders of {cid}",
     "groups": [f"formgrade-{cid}"], "scopes": course_staff_scopes(cid)}
    for cid in COURSES
]

# One formgrader service per course that names a grader account for it (several graders of one
# course share it): the account's own server, at /services/<course>/, open to formgrade-<course>.
c.JupyterHub.services = [
    {"name": cid, "url": f"http://127.0.0.1:{course['formgrader']['port']}",
     "command": [str(BIN / "jupyterhub-singleuser")],
     "user": course["formgrader"]["account"],
     "cwd": os.path.expanduser("~" + course["formgrader"]["account"]),
     "environment": {"JUPYTER_CONFIG_PATH": str(GLOBAL_CONFIG), "FPNLAB_EXCHANGE": EXCHANGE,
                     "PATH": f"{BIN}{os.pathsep}/usr/local/bin:/usr/bin:/bin"},
     "oauth_no_confirm": True}
    for cid, course in COURSES.items() if course.get("formgrader")
]
c.JupyterHub.load_roles += [
    {"name": f"formgrader-{cid}", "description": f"the formgrader service of {cid}",
     "services": [cid], "scopes": course_staff_scopes(cid) + ["read:users:groups"]}
    for cid, course in COURSES.items() if course.get("formgrader")
]

# ----------------------------------------------------------------------------- each server

c.JupyterHub.spawner_class = "localprocess"   # a process of the account's own uid, in its home
c.Spawner.cmd = [str(BIN / "jupyterhub-singleuser")]
# Every server: the course's kernel only (the venv's plain python3 kernel is not offered) and no
# "Jupyter news" prompt (settings/overrides.json).
c.Spawner.args = ["--KernelSpecManager.allowed_kernelspecs=fpnlab",
                  "--MappingKernelManager.default_kernel_name=fpnlab",
                  f"--LabApp.app_settings_dir={HERE / 'settings'}"]
c.Spawner.default_url = "/lab"


def courses_taught(user) -> list:
    return [g.name.split("-", 1)[1] for g in user.groups if g.name.startswith("formgrade-")]


def server_token_scopes(spawner) -> list:
    """The server's own token ($JUPYTERHUB_API_TOKEN, which nbgrader uses): its user's groups
    (the course list) for everyone; enrolling learners for a course's staff."""
    scopes = ["users:activity!user", "access:servers!server",
              "read:users:name!user", "read:users:groups!user"]
    for cid in courses_taught(spawner.user):
        if cid in COURSES:
            scopes += course_staff_scopes(cid)
    return scopes


def server_settings(spawner) -> None:
    """Staff get every nbgrader extension; learners the Assignments list and Validate only."""
    paths = [GLOBAL_CONFIG] if courses_taught(spawner.user) else [LEARNER_CONFIG, GLOBAL_CONFIG]
    spawner.environment.update({
        "JUPYTER_CONFIG_PATH": os.pathsep.join(str(p) for p in paths),
        "FPNLAB_EXCHANGE": EXCHANGE,
        # terminals of the server find the venv's nbgrader and fpnlab first
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/local/bin:/usr/bin:/bin')}",
    })


c.Spawner.server_token_scopes = server_token_scopes
c.Spawner.pre_spawn_hook = server_settings
