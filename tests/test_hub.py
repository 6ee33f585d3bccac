"""A real JupyterHub on this machine, set up as autograder/README.md's JupyterHub section says:
local unix accounts, one server per account (JupyterHub's LocalProcessSpawner), nbgrader's
exchange for two courses, and `fpnlab grade` between `nbgrader collect` and
`nbgrader release_feedback`.

The module fixture ``hub`` creates an instructor and two learners (unix accounts with names of
this run, homes 0700, removed at teardown), the exchange (1777) and the instructor's course
directory with the toy lesson (``tests/grading/toy.py``: 2 + 1 points), and starts JupyterHub
from ``autograder/hub/jupyterhub_config.py`` as it is, changing only the authenticator (a shared
password instead of PAM), its ports and state files, and adding the test's own admin service
token; its proxy is configurable-http-proxy from npm (``scripts/hub-proxy.sh``, pinned by
``autograder/hub/package-lock.json``). The class file makes course ``fpnlab`` (both learners)
and ``fpnlab2`` (learner ``a`` only), both taught by the instructor.

The fixture ``semester`` then walks the lesson through, each step as the account whose step it
is: the three servers are started through the hub's REST API; the instructor's steps are nbgrader
commands run as the instructor with the environment the hub gave the instructor's server (what
its terminals have); learner ``a`` works through the REST API of their own server (the
Assignments list's calls and the contents API: fetch, answer, submit, fetch feedback), learner
``b`` with nbgrader commands run as ``b`` in the environment of b's server. ``a`` answers right,
``b`` keeps only the shape points (``toy.WRONG_VALUES``). The tests assert what each step left
behind. ``test_the_learners_assignment_list_in_chromium`` logs in as ``a`` and opens the
Assignments list of nbgrader's lab extension (screenshots in ``test-artifacts/hub/``).

Every process started is stopped and every account removed at teardown, even on failure
(accounts left by a killed run are removed by the next one). Runs as root (useradd, a hub that
switches users); the accounts must be able to run this venv's Python: a directory on the way
that others cannot enter (a pyenv Python under /root) gets o+x for the module's duration
and its mode back at teardown.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from autograder import sandbox
from conftest import IN_CI, requires
from grading import toy

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HUB_CONFIG = ROOT / "autograder" / "hub" / "jupyterhub_config.py"
ARTIFACTS = ROOT / "test-artifacts" / "hub"
COURSE, COURSE2 = "fpnlab", "fpnlab2"
LESSON, NOTEBOOK = toy.LESSON, toy.NOTEBOOK
TAG = "fpnlab-test-hub"                       # the GECOS field of the test's accounts
PASSWORD = secrets.token_hex(12)              # the shared password of this run

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _node_major() -> int:
    try:
        out = subprocess.run(["node", "-p", "process.versions.node.split('.')[0]"],
                             capture_output=True, text=True, timeout=30).stdout
        return int(out.strip() or 0)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return 0


HAS_TOOLS = (all(shutil.which(t) for t in ("useradd", "userdel", "npm"))
             and _node_major() >= 20)                  # configurable-http-proxy 5 needs Node 20
HAS_BWRAP = sandbox.bwrap_available() is not None
CHROMIUM = "/usr/bin/chromium"
HAS_BROWSER = (Path(CHROMIUM).exists() and importlib.util.find_spec("playwright") is not None)
NEEDS = "needs root, useradd/userdel, Node.js 20+ and npm, and bubblewrap (make system)"

pytestmark = [pytest.mark.slow, requires(IS_ROOT and HAS_TOOLS and HAS_BWRAP, NEEDS)]


# ----------------------------------------------------------------------------- accounts

@dataclass
class Account:
    name: str
    uid: int
    gid: int
    home: Path


def _pids_of(uid: int) -> List[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            m = re.search(r"^Uid:\s+(\d+)", status, re.M)
            if m and int(m.group(1)) == uid:
                pids.append(int(entry.name))
    return pids


def _stop_pids(pids: List[int], timeout: float = 10.0) -> None:
    """SIGTERM each of ``pids`` (each by its id), SIGKILL what is left after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if Path(f"/proc/{p}").exists()
                     and "zombie" not in _proc_state(p)]
            time.sleep(0.1)
        pids = alive
        if not pids:
            return


def _proc_state(pid: int) -> str:
    try:
        return re.search(r"^State:\s+(.*)$", Path(f"/proc/{pid}/status").read_text(), re.M).group(1)
    except (OSError, AttributeError):
        return "zombie"


def create_account(name: str, homes: Path) -> Account:
    subprocess.run(["useradd", "--create-home", "--home-dir", str(homes / name), "--shell",
                    "/bin/bash", "--user-group", "--comment", f"{TAG} pid={os.getpid()}", name],
                   check=True, capture_output=True, text=True)
    pw = pwd.getpwnam(name)
    os.chmod(pw.pw_dir, 0o700)                  # nobody reads another account's home
    return Account(name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))


def remove_account(name: str) -> None:
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    _stop_pids(_pids_of(uid))
    subprocess.run(["userdel", "--force", name], capture_output=True, text=True)


def remove_stale_accounts() -> None:
    """What an earlier run killed before its teardown left: its hub and proxy (their pid files),
    its accounts, the modes it changed (``opened.json``), its folder."""
    for pw in pwd.getpwall():
        m = re.fullmatch(rf"{TAG} pid=(\d+)", pw.pw_gecos)
        if not m or Path(f"/proc/{m.group(1)}").exists():
            continue
        base = Path(pw.pw_dir).parent.parent             # <base>/home/<name>
        for pidfile, name in (("jupyterhub.pid", "jupyterhub"),
                              ("proxy.pid", "configurable-http-proxy")):
            try:
                pid = int((base / "hub" / pidfile).read_text())
                if name in Path(f"/proc/{pid}/cmdline").read_text():
                    _stop_pids([pid])
            except (OSError, ValueError):
                pass
        remove_account(pw.pw_name)
        try:
            for d, mode in json.loads((base / "opened.json").read_text()).items():
                os.chmod(d, mode)
        except (OSError, ValueError):
            pass
        if base.name.startswith("fpnlab-hub-"):
            shutil.rmtree(base, ignore_errors=True)


def as_user(acct: Account, argv: List[str], env: Dict[str, str], cwd: Optional[Path] = None,
            input: Optional[str] = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``argv`` as ``acct`` (its uid, its group only), in ``cwd`` (its home), with ``env``."""
    return subprocess.run(argv, user=acct.uid, group=acct.gid, extra_groups=[], umask=0o022,
                          env=env, cwd=str(cwd or acct.home), input=input, capture_output=True,
                          text=True, timeout=timeout)


def open_the_way(paths: List[Path]) -> Dict[Path, int]:
    """o+x on each directory on the way to ``paths`` that others cannot enter; their old modes."""
    changed: Dict[Path, int] = {}
    for path in paths:
        for d in [*reversed(Path(path).resolve().parents), Path(path).resolve()]:
            if d.is_dir() and d not in changed:
                mode = stat.S_IMODE(d.stat().st_mode)
                if not mode & stat.S_IXOTH:
                    changed[d] = mode
                    os.chmod(d, mode | stat.S_IXOTH)
    return changed


# ----------------------------------------------------------------------------- HTTP

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(method: str, url: str, token: Optional[str] = None, body=None,
         timeout: float = 60) -> Tuple[int, object]:
    """(status, JSON body or text) of one request; HTTP errors are answers, not exceptions."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"token {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read().decode(errors="replace")
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw


@dataclass
class Hub:
    base: Path                    # everything of this run: hub state, homes, exchange
    url: str                      # the proxy's public URL
    token: str                    # the test service's token (admin scopes)
    proc: subprocess.Popen
    log: Path
    instructor: Account
    grader: Account               # the account of the course's formgrader service
    a: Account
    b: Account
    exchange: Path
    tokens: Dict[str, str] = field(default_factory=dict)

    def api(self, method: str, path: str, body=None, token: Optional[str] = None):
        return call(method, f"{self.url}/hub/api{path}", token or self.token, body)

    def server_api(self, acct: Account, method: str, path: str, body=None):
        """A request to ``acct``'s own server, with ``acct``'s own token."""
        return call(method, f"{self.url}/user/{acct.name}/{path}", self.user_token(acct), body,
                    timeout=120)

    def service_api(self, acct: Account, service: str, method: str, path: str):
        """A request to the hub service ``service``, with ``acct``'s own token."""
        return call(method, f"{self.url}/services/{service}/{path}", self.user_token(acct),
                    timeout=120)

    def user_token(self, acct: Account) -> str:
        if acct.name not in self.tokens:
            status, body = self.api("POST", f"/users/{acct.name}/tokens",
                                    {"note": "tests/test_hub.py", "expires_in": 3600})
            assert status == 201, (status, body)
            self.tokens[acct.name] = body["token"]
        return self.tokens[acct.name]

    def server(self, acct: Account) -> dict:
        status, body = self.api("GET", f"/users/{acct.name}")
        assert status == 200, (status, body)
        return body["servers"].get("", {})

    def server_env(self, acct: Account) -> Dict[str, str]:
        """The environment the hub gave ``acct``'s server: what its terminals have."""
        pid = self.server(acct)["state"]["pid"]
        raw = Path(f"/proc/{pid}/environ").read_bytes()
        return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)

    def log_tail(self, n: int = 6000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"


def start_hub(base: Path, class_file: Path, accounts: Dict[str, Account],
              undo: contextlib.ExitStack) -> Hub:
    proxy = subprocess.run(["bash", str(ROOT / "scripts" / "hub-proxy.sh")], capture_output=True,
                           text=True, timeout=600)
    assert proxy.returncode == 0, f"scripts/hub-proxy.sh failed:\n{proxy.stderr[-3000:]}"
    chp = Path(proxy.stdout.strip().splitlines()[-1])
    state = base / "hub"
    state.mkdir(mode=0o700)
    port, hub_port, api_port = free_port(), free_port(), free_port()
    token = secrets.token_hex(32)
    config = state / "jupyterhub_config.py"
    config.write_text(f"""\
# tests/test_hub.py: the course's hub configuration as it is ...
c = get_config()  # noqa: F821
load_subconfig({str(HUB_CONFIG)!r})  # noqa: F821
# ... with a shared password instead of PAM, ports and state files of this run,
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = {PASSWORD!r}
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.command = [{str(chp)!r}]
c.JupyterHub.db_url = "sqlite:///{state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{state}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "{state}/jupyterhub.pid"
c.ConfigurableHTTPProxy.pid_file = "{state}/proxy.pid"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
# ... and the test's own service token, to drive the hub's REST API.
c.JupyterHub.services.append({{"name": "fpnlab-test", "api_token": {token!r}}})
c.JupyterHub.load_roles.append({{
    "name": "fpnlab-test", "services": ["fpnlab-test"],
    "scopes": ["admin:users", "admin:servers", "admin:server_state", "read:servers", "tokens",
               "list:users", "read:users", "admin:groups", "read:groups", "list:groups",
               "read:services", "list:services"]}})
""")
    env = {"PATH": f"{BIN}{os.pathsep}{chp.parent}{os.pathsep}"
                   "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": str(state), "LANG": "C.UTF-8", "FPNLAB_HUB_CLASS": str(class_file)}
    log = state / "jupyterhub.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(BIN / "jupyterhub"), "-f", str(config)], cwd=state, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    hub = Hub(base, f"http://127.0.0.1:{port}", token, proc, log, accounts["instructor"],
              accounts["grader"], accounts["a"], accounts["b"], base / "exchange")
    undo.callback(stop_hub, hub)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"JupyterHub exited with {proc.returncode}:\n{hub.log_tail()}"
        try:
            status, body = call("GET", f"{hub.url}/hub/api/", timeout=5)
            if status == 200:
                return hub
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"JupyterHub did not answer within 120 s:\n{hub.log_tail()}")


def stop_hub(hub: Hub) -> None:
    """SIGTERM: the hub stops the servers it spawned and its proxy; then whatever is left of
    its process group, each by its id. Its log goes to test-artifacts/hub/."""
    if hub.proc.poll() is None:
        hub.proc.terminate()
        try:
            hub.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            hub.proc.kill()
            hub.proc.wait(timeout=10)
    left = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
            and _pgid(int(p.name)) == hub.proc.pid]
    try:                                   # the proxy runs in a session of its own
        proxy = int((hub.base / "hub" / "proxy.pid").read_text())
        if "configurable-http-proxy" in Path(f"/proc/{proxy}/cmdline").read_text():
            left.append(proxy)
    except (OSError, ValueError):
        pass
    _stop_pids(left)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(hub.log, ARTIFACTS / "jupyterhub.log")


def _pgid(pid: int) -> Optional[int]:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


@pytest.fixture(scope="module")
def hub():
    missing = [what for ok, what in ((IS_ROOT, "root"), (HAS_TOOLS, "useradd/userdel, Node.js 20+, npm"),
                                     (HAS_BWRAP, "bubblewrap")) if not ok]
    if missing:
        assert not IN_CI, f"the hub test needs {', '.join(missing)} (CI runs as root; make system)"
        pytest.skip(f"the hub test needs {', '.join(missing)}")
    remove_stale_accounts()
    run = secrets.token_hex(3)
    with contextlib.ExitStack() as undo:             # every step undone, in reverse, whatever fails
        base = Path(tempfile.mkdtemp(prefix="fpnlab-hub-"))
        undo.callback(shutil.rmtree, base, ignore_errors=True)
        os.chmod(base, 0o755)
        homes = base / "home"
        homes.mkdir(mode=0o755)
        accounts: Dict[str, Account] = {}
        for role in ("instructor", "grader", "a", "b"):
            name = f"fp{role[0]}{run}"
            undo.callback(remove_account, name)
            accounts[role] = create_account(name, homes)
        # the accounts run this venv's Python (and the checkout it was installed from)
        opened = open_the_way([Path(sys.executable).resolve(), Path(sys.prefix),
                               Path(sys.base_prefix), ROOT])
        for d, mode in opened.items():
            undo.callback(os.chmod, d, mode)
        (base / "opened.json").write_text(json.dumps({str(d): m for d, m in opened.items()}))
        probe = as_user(accounts["a"], [sys.executable, "-c", "import jupyterhub, nbgrader, fpnlab"],
                        {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(accounts["a"].home)})
        assert probe.returncode == 0, ("another account cannot run this venv's Python (the hub's "
                                       f"servers could not start):\n{probe.stderr[-2000:]}")
        exchange = base / "exchange"
        exchange.mkdir()
        os.chmod(exchange, 0o1777)                    # as autograder/README.md says
        instr, grader = accounts["instructor"], accounts["grader"]
        for acct in (instr, grader):                  # each one's course directory
            course_dir = acct.home / COURSE
            write_as(acct, course_dir / "nbgrader_config.py", COURSE_CONFIG)
            toy.make_course(course_dir)
            write_as(acct, acct.home / ".jupyter" / "nbgrader_config.py",
                     f"c = get_config()  # noqa: F821\nc.CourseDirectory.root = {str(course_dir)!r}\n")
            chown_tree(acct, course_dir)
        class_file = base / "class.json"
        class_file.write_text(json.dumps({
            "exchange": str(exchange),
            "courses": {
                COURSE: {"instructors": [instr.name],
                         "formgrader": {"account": grader.name, "port": free_port()},
                         "learners": [accounts["a"].name, accounts["b"].name]},
                COURSE2: {"instructors": [instr.name], "learners": [accounts["a"].name]},
            }}, indent=1))
        yield start_hub(base, class_file, accounts, undo)


# The instructor's course directory: the course's nbgrader settings (as the repository's own
# nbgrader_config.py), this folder as the course root.
COURSE_CONFIG = f"""\
import os
c = get_config()  # noqa: F821
load_subconfig({str(ROOT / 'autograder' / 'nbgrader_config.py')!r})  # noqa: F821
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
"""


def write_as(acct: Account, path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    chown_tree(acct, path.parent)


def chown_tree(acct: Account, top: Path) -> None:
    for p in [top, *top.rglob("*")]:
        os.chown(p, acct.uid, acct.gid)
    for p in top.parents:                      # the folders between the home and ``top``
        if p == acct.home.parent:
            break
        os.chown(p, acct.uid, acct.gid)


# ----------------------------------------------------------------------------- the semester

@dataclass
class Semester:
    hub: Hub
    out: Path                                     # the instructor's grading folder (OUT)
    steps: Dict[str, subprocess.CompletedProcess] = field(default_factory=dict)
    facts: Dict[str, object] = field(default_factory=dict)
    seconds: Dict[str, float] = field(default_factory=dict)


def _ok(proc: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (f"{what} exited with {proc.returncode}:\n"
                                  f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


LISTDIR = "import os, sys\ntry:\n    print(os.listdir(sys.argv[1]))\nexcept PermissionError:\n    print('DENIED')"
ANSWER = """\
import sys, nbformat
nb = nbformat.read(sys.argv[1], as_version=4)
for cell in nb.cells:
    if cell.metadata.get("nbgrader", {}).get("grade_id") == "pad-to":
        cell.source = sys.stdin.read()
nbformat.write(nb, sys.argv[1])"""


def with_answer(content: dict, source: str) -> dict:
    for cell in content["cells"]:
        if cell["metadata"].get("nbgrader", {}).get("grade_id") == "pad-to":
            cell["source"] = source
    return content


@pytest.fixture(scope="module")
def semester(hub) -> Semester:
    instr, a, b = hub.instructor, hub.a, hub.b
    course_dir = instr.home / COURSE
    sem = Semester(hub, instr.home / "grading" / COURSE)
    t0 = time.monotonic()

    def mark(step: str) -> None:
        nonlocal t0
        sem.seconds[step] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()

    # 1. every account's server, started through the hub's REST API
    for acct in (instr, a, b):
        status, body = hub.api("POST", f"/users/{acct.name}/server")
        assert status in (201, 202), (acct.name, status, body, hub.log_tail())
    for acct in (instr, a, b):
        deadline = time.monotonic() + 150
        while not hub.server(acct).get("ready"):
            assert time.monotonic() < deadline, f"{acct.name}'s server is not ready:\n{hub.log_tail()}"
            time.sleep(0.5)
    sem.facts["servers"] = {acct.name: hub.server(acct) for acct in (instr, a, b)}
    env = {acct.name: hub.server_env(acct) for acct in (instr, a, b)}
    sem.facts["env"] = env
    mark("servers")

    def instructor(*args: str, cwd: Path = course_dir) -> subprocess.CompletedProcess:
        return as_user(instr, [str(BIN / "nbgrader"), *args], env[instr.name], cwd=cwd)

    def learner_b(*args: str) -> subprocess.CompletedProcess:
        return as_user(b, [str(BIN / "nbgrader"), *args], env[b.name])

    # 2. the instructor generates the release, enrols both learners, releases to both courses
    sem.steps["generate"] = _ok(instructor("generate_assignment", LESSON), "generate_assignment")
    sem.steps["enrol"] = _ok(instructor("db", "student", "add", a.name), "db student add")
    sem.steps["enrol_b"] = _ok(instructor("db", "student", "add", b.name), "db student add")
    sem.steps["release"] = _ok(instructor("release_assignment", LESSON), "release_assignment")
    sem.steps["release2"] = _ok(instructor("release_assignment", LESSON, "--course", COURSE2),
                                "release_assignment --course fpnlab2")
    mark("instructor: generate, enrol, release")

    # 3. a fetches in their own server (the Assignments list's calls); b with nbgrader, as b
    sem.facts["a_courses"] = hub.server_api(a, "GET", "courses")
    sem.facts["b_courses"] = hub.server_api(b, "GET", "courses")
    sem.facts["a_released"] = hub.server_api(a, "GET", f"assignments?course_id={COURSE}")
    sem.facts["a_fetch"] = hub.server_api(a, "POST", "assignments/fetch",
                                          {"course_id": COURSE, "assignment_id": LESSON})
    sem.steps["b_list"] = _ok(learner_b("list"), "nbgrader list as b")
    sem.steps["b_fetch"] = _ok(learner_b("fetch_assignment", LESSON, "--course", COURSE),
                               "fetch_assignment as b")
    sem.steps["b_fetch2"] = learner_b("fetch_assignment", LESSON, "--course", COURSE2)
    mark("learners: fetch")

    # 4. the answers: a's through the contents API of a's server, b's written by b
    rel = f"{COURSE}/{LESSON}/{NOTEBOOK}"
    status, model = hub.server_api(a, "GET", f"api/contents/{rel}?content=1")
    assert status == 200, (status, model)
    status, saved = hub.server_api(a, "PUT", f"api/contents/{rel}", {
        "type": "notebook", "format": "json", "content": with_answer(model["content"], toy.SOLUTION)})
    assert status in (200, 201), (status, saved)
    _ok(as_user(b, [sys.executable, "-c", ANSWER, str(b.home / rel)], env[b.name],
                input=toy.WRONG_VALUES), "b's answer")
    # 5. both submit
    sem.facts["a_submit"] = hub.server_api(a, "POST", "assignments/submit",
                                           {"course_id": COURSE, "assignment_id": LESSON})
    sem.steps["b_submit"] = _ok(learner_b("submit", LESSON, "--course", COURSE), "submit as b")
    inbound = hub.exchange / COURSE / "inbound"
    sem.facts["b_sees_inbound"] = as_user(b, [sys.executable, "-c", LISTDIR, str(inbound)],
                                          env[b.name]).stdout.strip()
    sem.facts["b_sees_a_home"] = as_user(b, [sys.executable, "-c", LISTDIR, str(a.home)],
                                         env[b.name]).stdout.strip()
    mark("learners: answer, submit")

    # 6. the instructor collects, grades with fpnlab grade, releases the feedback from OUT
    sem.steps["collect"] = _ok(instructor("collect", LESSON), "collect")
    sem.steps["grade"] = _ok(as_user(instr, [
        str(BIN / "fpnlab"), "grade", LESSON, "submitted", "--out", str(sem.out),
        "--source", "solutions", "--timeout", "120", "--no-progress"],
        env[instr.name], cwd=course_dir), "fpnlab grade")
    mark("instructor: collect, fpnlab grade")
    sem.steps["release_feedback"] = _ok(instructor("release_feedback", LESSON, cwd=sem.out),
                                        "release_feedback in OUT")
    feedback = hub.exchange / COURSE / "feedback"
    sem.facts["b_sees_feedback_folder"] = as_user(
        b, [sys.executable, "-c", LISTDIR, str(feedback)], env[b.name]).stdout.strip()

    # 7. each learner fetches their feedback: a in a's server, b with nbgrader
    sem.facts["a_fetch_feedback"] = hub.server_api(a, "POST", "assignments/fetch_feedback",
                                                   {"course_id": COURSE, "assignment_id": LESSON})
    sem.steps["b_fetch_feedback"] = _ok(learner_b("fetch_feedback", LESSON, "--course", COURSE),
                                        "fetch_feedback as b")
    mark("feedback: release, fetch")

    # 8. the formgrader: in the instructor's server, not in a learner's; the course's
    # formgrader service (the grader account's server) for its staff only
    sem.facts["formgrader_instr"] = hub.server_api(instr, "GET", "formgrader/api/assignments")
    sem.facts["formgrader_a"] = hub.server_api(a, "GET", "formgrader/api/assignments")
    sem.facts["kernelspecs"] = {acct.name: hub.server_api(acct, "GET", "api/kernelspecs")
                                for acct in (instr, a)}
    sem.facts["news"] = hub.server_api(
        a, "GET", "lab/api/settings/@jupyterlab/apputils-extension:notification")
    deadline = time.monotonic() + 120
    while hub.service_api(instr, COURSE, "GET", "api/status")[0] != 200:
        assert time.monotonic() < deadline, f"the {COURSE} service does not answer:\n{hub.log_tail()}"
        time.sleep(0.5)
    sem.facts["service"] = hub.api("GET", f"/services/{COURSE}")
    sem.facts["service_instr"] = hub.service_api(instr, COURSE, "GET", "formgrader/api/assignments")
    sem.facts["service_a"] = hub.service_api(a, COURSE, "GET", "formgrader/api/assignments")
    mark("formgrader")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "seconds.json").write_text(json.dumps(sem.seconds, indent=1))
    return sem


def _proc_uid(pid: int) -> int:
    return int(re.search(r"^Uid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))


def _feedback_pages(acct: Account) -> List[Path]:
    return sorted((acct.home / COURSE / LESSON / "feedback").rglob("*.html"))


# ----------------------------------------------------------------------------- the claims

def test_the_hub_runs_from_the_course_config_with_its_groups(hub):
    status, info = call("GET", f"{hub.url}/hub/api/")
    import jupyterhub
    assert status == 200 and info["version"] == jupyterhub.__version__
    status, groups = hub.api("GET", "/groups")
    assert status == 200, groups
    members = {g["name"]: sorted(g["users"]) for g in groups}
    assert members == {
        f"formgrade-{COURSE}": sorted([hub.instructor.name, hub.grader.name]),
        f"formgrade-{COURSE2}": [hub.instructor.name],
        f"nbgrader-{COURSE}": sorted([hub.a.name, hub.b.name]), f"nbgrader-{COURSE2}": [hub.a.name]}
    # only the class's accounts log in, and with the shared password only
    assert login(hub, "nobody", PASSWORD) == 403
    assert login(hub, hub.grader.name, PASSWORD) == 403          # a service's account
    assert login(hub, hub.b.name, PASSWORD[::-1]) == 403
    assert login(hub, hub.b.name, PASSWORD) == 302


def login(hub: Hub, name: str, password: str) -> int:
    """The status of the hub's login form posted as a browser does (its _xsrf field and cookie)."""
    import http.cookiejar
    import urllib.parse

    class Stay(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None                                   # report the redirect, do not follow

    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), Stay())
    form = opener.open(f"{hub.url}/hub/login", timeout=30).read().decode()
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form).group(1)
    data = urllib.parse.urlencode({"_xsrf": xsrf, "username": name, "password": password})
    try:
        return opener.open(f"{hub.url}/hub/login", data=data.encode(), timeout=60).status
    except urllib.error.HTTPError as e:
        return e.code


def test_each_server_runs_as_its_account_with_the_hubs_nbgrader_settings(semester):
    hub = semester.hub
    for acct in (hub.instructor, hub.a, hub.b):
        server = semester.facts["servers"][acct.name]
        assert server["ready"] and server["url"] == f"/user/{acct.name}/"
        assert _proc_uid(server["state"]["pid"]) == acct.uid
        env = semester.facts["env"][acct.name]
        assert env["JUPYTERHUB_USER"] == acct.name and env["HOME"] == str(acct.home)
        assert env["FPNLAB_EXCHANGE"] == str(hub.exchange)
        assert str(HUB_CONFIG.parent / "jupyter") in env["JUPYTER_CONFIG_PATH"].split(os.pathsep)
    assert str(HUB_CONFIG.parent / "learner") in semester.facts["env"][hub.a.name][
        "JUPYTER_CONFIG_PATH"]
    assert str(HUB_CONFIG.parent / "learner") not in semester.facts["env"][hub.instructor.name][
        "JUPYTER_CONFIG_PATH"]


def test_every_server_offers_the_course_kernel_only_and_no_news(semester):
    for name, (status, specs) in semester.facts["kernelspecs"].items():
        assert status == 200 and set(specs["kernelspecs"]) == {"fpnlab"}, (name, specs)
        assert specs["default"] == "fpnlab", (name, specs)
    status, setting = semester.facts["news"]
    assert status == 200, setting
    props = setting["schema"]["properties"]
    assert props["fetchNews"]["default"] == "false" and props["checkForUpdates"]["default"] is False


def test_the_instructor_releases_to_both_courses(semester):
    hub, instr = semester.hub, semester.hub.instructor
    release = instr.home / COURSE / "lessons" / LESSON / NOTEBOOK
    assert "BEGIN SOLUTION" not in release.read_text() and "raise NotImplementedError" in release.read_text()
    for course in (COURSE, COURSE2):
        outbound = hub.exchange / course / "outbound" / LESSON / NOTEBOOK
        assert outbound.read_text() == release.read_text()
        assert outbound.stat().st_uid == instr.uid
        assert stat.S_IMODE((hub.exchange / course / "inbound").stat().st_mode) == 0o2733
    # `nbgrader db student add` enrolled through the hub: the instructor's server token may
    # change nbgrader-fpnlab (JupyterHubAuthPlugin logs, and carries on, when it may not)
    for step in ("enrol", "enrol_b"):
        text = semester.steps[step].stdout + semester.steps[step].stderr
        assert "added or was already in the Jupyterhub group: nbgrader-fpnlab" in text, text[-2000:]
        assert "NOT added" not in text and "Error" not in text, text[-2000:]


def test_each_learner_sees_and_fetches_only_their_courses(semester):
    hub, a, b = semester.hub, semester.hub.a, semester.hub.b
    assert semester.facts["a_courses"] == (200, {"success": True, "value": [COURSE, COURSE2]})
    assert semester.facts["b_courses"] == (200, {"success": True, "value": [COURSE]})
    status, released = semester.facts["a_released"]
    assert status == 200 and released["success"], released
    assert [(x["course_id"], x["assignment_id"], x["status"]) for x in released["value"]] == [
        (COURSE, LESSON, "released")]
    status, fetched = semester.facts["a_fetch"]
    assert status == 200 and [(x["assignment_id"], x["status"]) for x in fetched["value"]
                              if x["course_id"] == COURSE] == [(LESSON, "fetched")], fetched
    listing = semester.steps["b_list"].stdout + semester.steps["b_list"].stderr
    assert f"{COURSE} {LESSON}" in listing and COURSE2 not in listing, listing
    for acct in (a, b):
        nb = acct.home / COURSE / LESSON / NOTEBOOK     # ~/<course>/<lesson>/: one per course
        assert nb.stat().st_uid == acct.uid
    denied = semester.steps["b_fetch2"]
    assert denied.returncode != 0 and "do not have access" in denied.stdout + denied.stderr
    assert not (b.home / COURSE2).exists()


def test_both_submit_and_no_learner_reads_another_ones_work(semester):
    hub = semester.hub
    status, submitted = semester.facts["a_submit"]
    assert status == 200 and submitted["success"], submitted
    subs = [x for x in submitted["value"] if x["status"] == "submitted"]
    assert [(x["assignment_id"], len(x["submissions"])) for x in subs] == [(LESSON, 1)]
    assert semester.facts["b_sees_inbound"] == "DENIED"
    assert semester.facts["b_sees_a_home"] == "DENIED"
    inbound = sorted(p.name.split("+")[0] for p in (hub.exchange / COURSE / "inbound").iterdir())
    assert inbound == sorted([hub.a.name, hub.b.name])


def test_collect_then_fpnlab_grade_scores_each_learner(semester):
    hub, instr = semester.hub, semester.hub.instructor
    submitted = instr.home / COURSE / "submitted"
    for acct in (hub.a, hub.b):
        folder = submitted / acct.name / LESSON
        assert {p.name for p in folder.iterdir()} >= {NOTEBOOK, "timestamp.txt",
                                                      "submission_secret.txt"}
    import csv
    rows = {r["student_id"]: r for r in csv.DictReader(open(semester.out / "grades.csv"))}
    assert {s: (r["status"], r["score"], r["max_score"]) for s, r in rows.items()} == {
        hub.a.name: ("graded", "3", "3"), hub.b.name: ("graded", "2", "3")}
    assert (semester.out / "grades.csv").stat().st_uid == instr.uid    # graded as the instructor


def test_release_feedback_in_out_and_each_learner_fetches_only_their_own(semester):
    hub, a, b = semester.hub, semester.hub.a, semester.hub.b
    feedback = hub.exchange / COURSE / "feedback"
    assert stat.S_IMODE(feedback.stat().st_mode) == 0o711          # nobody lists it
    assert len(list(feedback.glob("*.html"))) == 2
    assert semester.facts["b_sees_feedback_folder"] == "DENIED"
    status, listed = semester.facts["a_fetch_feedback"]
    assert status == 200 and listed["success"], listed
    sub = next(x for x in listed["value"] if x["status"] == "submitted")["submissions"][0]
    assert sub["has_local_feedback"] and not sub["feedback_updated"], sub
    scores = {a.name: "3.0 / 3.0", b.name: "2.0 / 3.0"}
    pages = {}
    for acct in (a, b):
        mine = _feedback_pages(acct)
        assert len(mine) == 1, mine
        page = mine[0].read_text()
        assert page == (semester.out / "feedback" / acct.name / LESSON / f"{LESSON}.html").read_text()
        assert f"{LESSON} (Score: {scores[acct.name]})" in page
        assert mine[0].stat().st_uid == acct.uid
        pages[acct.name] = page
    assert pages[a.name] != pages[b.name]
    assert "(hidden tests: not shown)" in pages[b.name] and "HIDDEN-VALUE-CAUSE" not in pages[b.name]


def test_the_formgrader_is_the_instructors_not_the_learners(semester):
    status, body = semester.facts["formgrader_instr"]
    assert status == 200 and [x["name"] for x in body] == [LESSON], body
    assert semester.facts["formgrader_a"][0] == 404


def test_the_courses_formgrader_service_runs_as_its_grader_account_for_its_staff(semester):
    hub = semester.hub
    status, service = semester.facts["service"]
    assert status == 200 and service["prefix"] == f"/services/{COURSE}/", service
    assert _proc_uid(service["pid"]) == hub.grader.uid
    status, body = semester.facts["service_instr"]
    assert status == 200 and [x["name"] for x in body] == [LESSON], body   # the grader's course
    assert semester.facts["service_a"][0] == 403


@pytest.mark.browser
@requires(HAS_BROWSER, "needs Debian chromium and the playwright package")
def test_the_learners_assignment_list_in_chromium(semester):
    """Learner a logs in to the hub, opens Nbgrader > Assignment List in their lab: the lesson
    is listed as submitted, with its feedback; no formgrader in a learner's menu."""
    if not HAS_BROWSER:
        assert not IN_CI, "chromium or playwright is missing (make system; make setup)"
        pytest.skip("needs Debian chromium and the playwright package")
    sys.path.insert(0, str(ROOT / "tests"))
    from browser import lab
    from playwright.sync_api import sync_playwright

    hub, a = semester.hub, semester.hub.a
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=lab.CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{hub.url}/hub/login", wait_until="domcontentloaded", timeout=60_000)
            page.fill("#username_input", a.name)
            page.fill("#password_input", PASSWORD)
            page.click("#login_submit")
            page.wait_for_url(re.compile(rf"/user/{a.name}/lab"), timeout=90_000)
            page.locator("#jupyterlab-splash").wait_for(state="detached", timeout=90_000)
            # a's home, in a's file browser: the fetched course folder
            page.locator(".jp-DirListing-item", has_text=COURSE).first.wait_for(timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "1-lab.png"))
            page.locator(".lm-MenuBar-itemLabel", has_text="Nbgrader").first.click()
            items = page.locator(".lm-Menu-itemLabel").all_inner_texts()
            assert "Assignment List" in items, items
            assert not [i for i in items if "Formgrader" in i or "Create" in i], items
            page.locator(".lm-Menu-itemLabel", has_text="Assignment List").first.click()
            listed = page.locator("#submitted_assignments_list .list_item", has_text=LESSON)
            listed.first.wait_for(state="visible", timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "2-assignment-list.png"))
            text = listed.first.inner_text()
            assert COURSE in text and "view feedback" in text, text
            fetched = page.locator("#fetched_assignments_list .list_item", has_text=LESSON)
            assert fetched.count() >= 1          # the lesson (and its notebook, folded)
            courses = page.locator("#course_list").first.text_content()
            assert COURSE in courses and COURSE2 in courses, courses
        finally:
            browser.close()
