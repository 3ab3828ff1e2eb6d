"""The user documentation (docs/*.md) stays true: its examples run, its references are complete.

- Every ```python block of docs/tasks.md and docs/testing.md runs, in order, in one namespace per
  file, against the real servers of the test run (tasks.md: once with the Valkey backend, once with
  the Postgres one, with a real ``runworker`` process serving the example's queues). Conventions
  of the blocks (also said in the docs):
    * a block whose first line is ``# <path>.py`` (e.g. ``# myapp/tasks.py``) is that file of the
      example project: written to a temporary directory on the path (workers import from it);
    * a block whose first line is ``# settings.py`` is added to the example project's settings
      (the worker's settings module, and override_settings here);
    * ``<!-- test: skip (reason) -->`` on the line before a block: only compiled;
    * functions named ``test_*`` and unittest TestCase classes a block defines are run after it.
- Every ```python block of every docs/*.md compiles.
- docs/settings.md names every key of conf.DEFAULTS, every VTASKS_* name and every backend
  OPTIONS key the package reads; docs/commands.md every command and every flag of its parser.
"""

import importlib
import inspect
import os
import re
import subprocess
import sys
import textwrap
import unittest
import uuid
from pathlib import Path

import pytest
from django.test import override_settings

from tests.conftest import WorkerProc, wait_for  # noqa: F401 - WorkerProc: same env conventions
from tests.tools_helpers import PYTHON, subprocess_env

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PACKAGE = ROOT / "client-py" / "python" / "django_vtasks"
CLIENT_DIR = ROOT / "client-py"

FENCE = re.compile(r"^```(\w*)\s*$")
SKIP = re.compile(r"<!--\s*test:\s*skip\b")
FILE_HEADER = re.compile(r"^#\s*([\w/]+\.py)\s*$")


class Block:
    def __init__(self, doc: str, line: int, lang: str, code: str, skip: bool):
        self.doc, self.line, self.lang, self.code, self.skip = doc, line, lang, code, skip
        first = code.splitlines()[0] if code.strip() else ""
        m = FILE_HEADER.match(first)
        self.file = m.group(1) if m else None

    def __repr__(self):
        return f"{self.doc}:{self.line}"


def blocks(path: Path) -> list[Block]:
    out, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(1):
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        out.append(
            Block(path.name, start + 1, m.group(1), "\n".join(body) + "\n", bool(SKIP.search(prev)))
        )
        i += 1
    return out


def python_blocks(name: str) -> list[Block]:
    return [b for b in blocks(DOCS / name) if b.lang == "python"]


# ---- every example compiles ----------------------------------------------------------------------
@pytest.mark.parametrize("doc", sorted(p.name for p in DOCS.glob("*.md")))
def test_python_examples_compile(doc):
    for b in python_blocks(doc):
        compile(b.code, repr(b), "exec")


# ---- settings examples build real backends ------------------------------------------------------
@pytest.mark.parametrize("doc", ["settings.md", "operations.md"])
def test_settings_examples_configure_real_backends(doc, monkeypatch):
    """The `# settings.py` blocks of the reference pages: their TASKS entries name backends that
    exist and accept those OPTIONS (built, not connected)."""
    from django.utils.module_loading import import_string

    monkeypatch.setenv("VTASKS_VALKEY_PASSWORD", "example-password")
    built = 0
    for block in python_blocks(doc):
        if block.file != "settings.py":
            continue
        namespace: dict = {}
        exec(compile(block.code, repr(block), "exec"), namespace)
        for alias, params in namespace.get("TASKS", {}).items():
            backend = import_string(params["BACKEND"])(alias, params)
            assert backend.options == params.get("OPTIONS", {}), repr(block)
            built += 1
    assert built >= 1


# ---- runnable examples ---------------------------------------------------------------------------
class Project:
    """The example project of one doc page: its files in a temporary directory on sys.path, its
    settings, and (tasks.md) a worker process."""

    def __init__(self, doc: str, tmp_path: Path):
        self.doc, self.dir = doc, tmp_path / "project"
        self.dir.mkdir()
        self.blocks = python_blocks(doc)
        self.packages = set()
        self.settings_code = "".join(
            textwrap.dedent(b.code) for b in self.blocks if b.file == "settings.py" and not b.skip
        )
        self.settings: dict = {}
        if self.settings_code:
            exec(compile(self.settings_code, f"{doc} settings", "exec"), {}, self.settings)
        self.settings = {k: v for k, v in self.settings.items() if k.isupper()}

    def write(self, block: Block) -> None:
        target = self.dir / block.file
        target.parent.mkdir(parents=True, exist_ok=True)
        for parent in target.relative_to(self.dir).parents:
            if str(parent) != ".":
                (self.dir / parent / "__init__.py").touch()
                self.packages.add(str(parent).split("/")[0])
        target.write_text(block.code)

    def __enter__(self):
        sys.path.insert(0, str(self.dir))
        return self

    def __exit__(self, *exc):
        sys.path.remove(str(self.dir))
        for name in list(sys.modules):
            if name.split(".")[0] in self.packages:
                del sys.modules[name]


def run_tests_defined(namespace: dict, before: set, where: str) -> None:
    """Run the test functions and TestCase classes a block just defined."""
    for name, obj in list(namespace.items()):
        if name in before or getattr(obj, "__module__", None) != namespace["__name__"]:
            continue  # (imported names are not the block's own)
        if name.startswith("test_") and inspect.isfunction(obj):
            obj()
        elif inspect.isclass(obj) and issubclass(obj, unittest.TestCase):
            suite = unittest.defaultTestLoader.loadTestsFromTestCase(obj)
            outcome = unittest.TextTestRunner(stream=open(os.devnull, "w"), verbosity=0).run(suite)
            problems = outcome.failures + outcome.errors
            assert outcome.testsRun and not problems, f"{where} {name}: " + "\n".join(
                text for _, text in problems
            )


def run_blocks(project: Project) -> int:
    namespace = {"__name__": "docs_" + project.doc.replace(".", "_")}
    ran = 0
    for block in project.blocks:
        if block.skip or block.file == "settings.py":
            continue
        if block.file:
            project.write(block)
            module = block.file[:-3].replace("/", ".")
            importlib.invalidate_caches()
            importlib.import_module(module)
            continue
        before = set(namespace)
        exec(compile(block.code, repr(block), "exec"), namespace)
        run_tests_defined(namespace, before, repr(block))
        ran += 1
    return ran


WORKER_SETTINGS = """
from tests.settings import *  # noqa: F403 - the servers of the test run
TASKS = dict(TASKS)
TASKS["default"] = {default!r}
VTASKS_TASK_MODULES = {modules!r}
VTASKS_QUEUES = {queues!r}
"""


def doc_queues(project: Project) -> list[str]:
    """The queues the example project's tasks name (plus default)."""
    text = "".join(b.code for b in project.blocks)
    return ["default", *sorted(set(re.findall(r'queue_name="([\w-]+)"', text)) - {"default"})]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("alias", ["valkey", "postgres"])
def test_tasks_md_examples_run_with_a_worker(alias, tmp_path):
    from django.conf import settings
    from django.tasks import task_backends

    if alias == "valkey" and not os.environ.get("VTASKS_TEST_VALKEY_URL"):
        pytest.skip("Valkey module not built")
    default = dict(settings.TASKS[alias])
    # keys of their own on the shared test server (queues named like the docs' own: default...)
    default["OPTIONS"] = {**default["OPTIONS"], "PREFIX": f"vtdocs{uuid.uuid4().hex[:6]}"}
    default["QUEUES"] = []
    with Project("tasks.md", tmp_path) as project:
        queues = doc_queues(project)
        assert {"emails", "audit"} <= set(queues), queues
        (project.dir / "docs_worker_settings.py").write_text(
            WORKER_SETTINGS.format(default=default, modules=["myapp"], queues=queues)
            + project.settings_code
        )
        tasks = {**settings.TASKS, "default": default}
        with override_settings(TASKS=tasks, **project.settings):
            broker = task_backends["default"].broker
            for q in queues:
                broker.clear(q, "all")
            env = subprocess_env(
                {
                    "PYTHONPATH": os.pathsep.join(
                        [str(project.dir), str(CLIENT_DIR), os.environ.get("PYTHONPATH", "")]
                    ),
                    "DJANGO_SETTINGS_MODULE": "docs_worker_settings",
                }
            )
            log = open(tmp_path / "worker.log", "wb")
            worker = subprocess.Popen(
                [
                    PYTHON,
                    "-m",
                    "django",
                    "runworker",
                    "--backend",
                    "default",
                    "--concurrency",
                    "8",
                    "--id",
                    f"docs-{uuid.uuid4().hex[:6]}",
                ],
                cwd=CLIENT_DIR,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                ran = run_blocks(project)
            except BaseException:
                log.flush()
                print((tmp_path / "worker.log").read_text(errors="replace")[-5000:])
                raise
            finally:
                worker.terminate()  # SIGTERM: drains, exits 0
                try:
                    worker.wait(60)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
                log.close()
                for q in queues:
                    broker.clear(q, "all")
    assert ran >= 6


@pytest.mark.django_db(transaction=True)
def test_testing_md_examples_run(tmp_path):
    with Project("testing.md", tmp_path) as project:
        assert run_blocks(project) >= 2


# ---- settings.md is complete ---------------------------------------------------------------------
def package_source() -> str:
    return "\n".join(p.read_text() for p in sorted(PACKAGE.rglob("*.py")))


OPTION_READS = [
    r'options\.get\(\s*"([A-Z][A-Z0-9_]*)"',  # self.options.get("KEY", default)
    r'options\[\s*"([A-Z][A-Z0-9_]*)"\s*\]',  # options["KEY"]
    r'OPTIONS\[\s*[\'"]([A-Z][A-Z0-9_]*)[\'"]\s*\]',  # OPTIONS["KEY"] in code and docstrings
]


def documented_names() -> set[str]:
    """Every `NAME` in backquotes in docs/settings.md."""
    return set(re.findall(r"`([A-Z][A-Z0-9_]*)`", (DOCS / "settings.md").read_text()))


def test_settings_md_names_every_setting_and_option():
    from django_vtasks.conf import DEFAULTS

    source = package_source()
    documented = documented_names()
    settings_names = set(DEFAULTS) | set(re.findall(r"\b(VTASKS_[A-Z0-9_]+)\b", source))
    options = set()
    for pattern in OPTION_READS:
        options |= set(re.findall(pattern, source))
    # the scan does find what it must (else a refactor could make this test vacuous)
    assert {
        "BROKER_URL",
        "DURABLE",
        "POOL_SIZE",
        "NOTIFY",
        "RESULT_TTL",
        "TRACK_RUNNING",
        "IGNORE_RESULT_QUEUES",
        "DSN",
    } <= options, options
    assert {"VTASKS_SHUTDOWN_TIMEOUT", "VTASKS_MODULE_PATH"} <= settings_names
    missing_settings = sorted(settings_names - documented)
    missing_options = sorted(options - documented)
    assert not missing_settings, f"docs/settings.md does not document {missing_settings}"
    assert not missing_options, f"docs/settings.md does not document OPTIONS {missing_options}"


def test_settings_md_defaults_match_conf():
    """The default shown next to each conf.DEFAULTS key (a Python expression) is the code's."""
    from django_vtasks.conf import DEFAULTS

    text = (DOCS / "settings.md").read_text()
    for name, value in DEFAULTS.items():
        row = re.search(rf"^\|\s*(?:<a id=\"[^\"]*\"></a>)?`{name}`\s*\|\s*`([^`|]+)`", text, re.M)
        assert row, f"no table row `{name}` | `default` | in docs/settings.md"
        assert eval(row.group(1), {"__builtins__": {}}) == value, (name, row.group(1), value)


# ---- commands.md is complete ---------------------------------------------------------------------
def test_commands_md_names_every_command_and_flag():
    from django.core.management import get_commands, load_command_class

    text = (DOCS / "commands.md").read_text()
    commands = {
        name: load_command_class(app, name)
        for name, app in get_commands().items()
        if app == "django_vtasks"
    }
    assert {"runworker", "clear_queue", "benchmark_vtasks", "vtasks_valkey"} <= set(commands)
    base = {
        "--help",
        "-h",
        "--version",
        "-v",
        "--verbosity",
        "--settings",
        "--pythonpath",
        "--traceback",
        "--no-color",
        "--force-color",
        "--skip-checks",
    }
    missing = []
    for name, command in commands.items():
        section = re.search(rf"^## `?{name}`?\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
        if not section:
            missing.append(f"section ## {name}")
            continue
        parser = command.create_parser("manage.py", name)
        for action in parser._actions:
            if action.help == "==SUPPRESS==":
                continue
            for flag in action.option_strings:
                if flag not in base and f"`{flag}" not in section.group(1):
                    missing.append(f"{name} {flag}")
    assert not missing, f"docs/commands.md does not document {missing}"


# ---- links between the documents resolve ---------------------------------------------------------
def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file, plus its explicit <a id="..."> anchors."""
    text = path.read_text()
    out = set(re.findall(r'<a id="([^"]+)"', text))
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"^#{1,6}\s+(.*?)\s*$", line)):
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-"))
    return out


def test_links_in_the_docs_resolve():
    broken = []
    for doc in [*sorted(DOCS.glob("*.md")), ROOT / "README.md", ROOT / "CONTRIBUTING.md"]:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            if not path.exists():
                broken.append(f"{doc.name}: {target}")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, broken
