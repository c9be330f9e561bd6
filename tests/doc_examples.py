"""Run the code examples of the documentation (README.md, CONTRIBUTING.md, docs/**/*.md).

Each page is a project that grows as a reader follows it: a temporary directory with a
git repository, served by a local hub, in which the page's fenced blocks run in order:

- ``python`` defining ``test_*`` functions: written to ``test_doc_L<line>.py`` and run by
  pytest in a subprocess (it must pass, unless ``expect`` says otherwise);
- other ``python``: run as a script with ``python`` in the project directory;
- ``yaml``: parsed; a manifest (``checkpoints:`` at the top) is validated, written to
  ``checkpoints/checkpoints.yaml`` and its files published on the local hub; an
  ``mlflow.yaml`` is validated by ``UploadConfig``;
- ``json``: parsed; a ``--ckpts-report`` sample is validated against the report schema;
- ``bash`` / ``sh`` / ``console`` (lines after ``$ ``): run with ``bash -e`` in the project;
- ``toml``: parsed; ``text`` and unlabelled blocks are output samples, not examples.

Annotations are HTML comments just before a block (invisible on GitHub and on the site);
one or more apply to the next block::

    <!-- example: skip REASON -->                 not run; the reason is required
    <!-- example: expect failed=1 passed=0 -->    pytest outcomes (or rc=N for scripts, shell)
    <!-- example: copy SRC... [as DEST] -->       files from the repository into the project
    <!-- example: file PATH
    content
    -->                                           a file in the project
    <!-- example: setup
    code
    -->                                           run before the block (python and test
                                                  files: prepended; shell: lines before)
    <!-- example: name PATH -->                   the file a python block is written to

What the local hub serves: ``examples/demo/hub_data`` as ``acme/demo-checkpoints`` (so the
demo manifest's pinned commit resolves), and for every other manifest entry a file made
up from its suffix: ``.safetensors`` a small LLM-like state dict, ``.ckpt``/``.pt``/
``.pth``/``.bin`` the demo's trained VAE (a training checkpoint with ``state_dict``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.helpers import unused_plugins

if TYPE_CHECKING:
    from pytest_ckpts.testing import LocalHub

ROOT = Path(__file__).resolve().parents[1]
DEMO_REPO = "acme/demo-checkpoints"
DEMO_DATA = ROOT / "examples" / "demo" / "hub_data"
SCHEMA = ROOT / "docs" / "reference" / "report.schema.json"
TIMEOUT = 300

#: Block languages that are examples, and those that are output samples.
RUN = {
    "python": "python",
    "py": "python",
    "yaml": "yaml",
    "yml": "yaml",
    "json": "json",
    "bash": "shell",
    "sh": "shell",
    "shell": "shell",
    "console": "shell",
    "toml": "toml",
}
OUTPUT = {"", "text", "txt", "output"}

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<lang>[\w+-]*)[^\n]*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*example:\s*(?P<kind>\w+)\s*(?P<rest>.*)$")


class ExampleError(AssertionError):
    """An example that failed: names the page, line and block."""


@dataclass
class Directive:
    kind: str
    arg: str
    body: str
    line: int


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    body: str
    directives: list[Directive] = field(default_factory=list)

    @property
    def kind(self) -> str | None:
        """``test``, ``python``, ``yaml``, ... or None for an output sample."""
        kind = RUN.get(self.lang)
        if kind == "python" and re.search(r"^(async )?def test_|^class Test", self.body, re.M):
            return "test"
        return kind

    @property
    def skip(self) -> str | None:
        for d in self.directives:
            if d.kind == "skip":
                return d.arg
        return None

    @property
    def where(self) -> str:
        try:
            page = self.page.relative_to(ROOT)
        except ValueError:
            page = self.page
        return f"{page}:{self.line} ({self.lang or 'text'} block)"


def parse(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` with the annotations before each."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    pending: list[Directive] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        match = _DIRECTIVE.match(line)
        if match:
            start = i
            rest = match["rest"]
            body: list[str] = []
            if "-->" in rest:
                rest = rest[: rest.index("-->")]
            else:
                i += 1
                while i < len(lines) and "-->" not in lines[i]:
                    body.append(lines[i])
                    i += 1
                if i == len(lines):
                    raise ExampleError(f"{page}:{start + 1}: annotation never closed with -->")
            kind = match["kind"]
            if kind not in ("skip", "expect", "copy", "file", "setup", "name"):
                raise ExampleError(f"{page}:{start + 1}: unknown annotation 'example: {kind}'")
            if kind == "skip" and not rest.strip():
                raise ExampleError(f"{page}:{start + 1}: 'example: skip' needs a reason")
            pending.append(Directive(kind, rest.strip(), "\n".join(body) + "\n", start + 1))
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            indent, mark = fence["indent"], fence["fence"]
            start = i
            i += 1
            body = []
            while i < len(lines) and not re.match(rf"^ {{0,{len(indent)}}}{mark}\s*$", lines[i]):
                body.append(lines[i])
                i += 1
            text = textwrap.dedent("\n".join(body)) + "\n"
            blocks.append(Block(page, start + 1, fence["lang"].lower(), text, pending))
            pending = []
        i += 1
    if pending:
        raise ExampleError(f"{page}:{pending[0].line}: annotation not followed by a code block")
    return blocks


# --------------------------------------------------------------------------- content


def safetensors_bytes() -> bytes:
    """A small LLM-like ``.safetensors`` file (deterministic values)."""
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(7)
    tensors = {
        "model.embed_tokens.weight": rng.standard_normal((320, 64), dtype=np.float32),
        "model.layers.0.mlp.up_proj.weight": rng.standard_normal((128, 64), dtype=np.float32),
        "model.norm.weight": np.ones(64, dtype=np.float32),
    }
    return save(tensors)


def content_for(hf_path: str) -> bytes:
    suffix = Path(hf_path).suffix
    if suffix == ".safetensors":
        return safetensors_bytes()
    if suffix in (".ckpt", ".pt", ".pth", ".bin"):
        return (DEMO_DATA / "vae" / "tiny_vae_v1.pt").read_bytes()
    return f"{hf_path}\n".encode()


# --------------------------------------------------------------------------- running


class PageRun:
    """Runs one page's blocks, in order, in ``project`` against ``hub``."""

    def __init__(self, page: Path, project: Path, hub: LocalHub) -> None:
        self.page = page
        self.project = project
        self.hub = hub
        self.published: set[tuple[str, str]] = set()
        self.ran: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        project.mkdir(parents=True, exist_ok=True)
        files = {
            p.relative_to(DEMO_DATA).as_posix(): p for p in DEMO_DATA.rglob("*") if p.is_file()
        }
        hub.add_files(DEMO_REPO, files, message="demo checkpoints")
        self.published |= {(DEMO_REPO, name) for name in files}
        self.env = self._env()
        self._run(["git", "init", "-q"], what="git init")

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HF_ENDPOINT=self.hub.endpoint,
            HF_TOKEN="hf_docs_examples_token",  # the local hub accepts any token
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            PYTHONDONTWRITEBYTECODE="1",
            PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            REPO_ROOT=str(ROOT),
            PYTEST_ADDOPTS=" ".join(["-p no:randomly -p no:cacheprovider", *unused_plugins()]),
            GIT_AUTHOR_NAME="docs",
            GIT_AUTHOR_EMAIL="docs@example.invalid",
            GIT_COMMITTER_NAME="docs",
            GIT_COMMITTER_EMAIL="docs@example.invalid",
        )
        for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_TESTRUNUID", "PYTEST_CURRENT_TEST"):
            env.pop(name, None)
        return env

    # ------------------------------------------------------------------ plumbing
    def _run(
        self, cmd: list[str], *, what: str, expect_rc: int = 0
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            cmd,
            cwd=self.project,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        if proc.returncode != expect_rc:
            raise ExampleError(
                f"{what}: exit {proc.returncode}, expected {expect_rc}\n"
                f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
            )
        return proc

    def sync_hub(self) -> None:
        """Publish what the project's manifest names and the hub does not serve yet."""
        path = self.project / "checkpoints" / "checkpoints.yaml"
        if not path.is_file():
            return
        from pytest_ckpts.manifest import parse_manifest

        manifest = parse_manifest(path.read_text(encoding="utf-8"), path)
        todo: dict[str, dict[str, bytes]] = {}
        for spec in manifest.entries.values():
            if (spec.repo, spec.hf_path) not in self.published:
                todo.setdefault(spec.repo, {})[spec.hf_path] = content_for(spec.hf_path)
        for repo, files in todo.items():
            self.hub.add_files(repo, files, message="docs examples")
            self.published |= {(repo, name) for name in files}

    def apply(self, block: Block) -> None:
        """Copy and file annotations: they change the project before the block runs."""
        for d in block.directives:
            if d.kind == "copy":
                sources, _, dest = d.arg.partition(" as ")
                for src in sources.split():
                    target = self.project / (dest.strip() or src)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if (ROOT / src).is_dir():
                        shutil.copytree(ROOT / src, target, dirs_exist_ok=True)
                    else:
                        shutil.copyfile(ROOT / src, target)
            elif d.kind == "file":
                target = self.project / d.arg
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(d.body, encoding="utf-8")
        self.sync_hub()

    @staticmethod
    def expectations(block: Block) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in block.directives:
            if d.kind == "expect":
                for pair in d.arg.split():
                    key, _, value = pair.partition("=")
                    out[key] = int(value)
        return out

    def setup(self, block: Block) -> str:
        return "".join(d.body for d in block.directives if d.kind == "setup")

    # ------------------------------------------------------------------ kinds
    def run_block(self, block: Block) -> None:
        kind = block.kind
        if kind is None:
            return
        self.apply(block)  # files and copies are part of the page, run or not
        if block.skip is not None:
            self.skipped.append((block.where, block.skip))
            return
        getattr(self, f"run_{kind}")(block)
        self.ran.append(block.where)

    def name(self, block: Block, default: str) -> str:
        for d in block.directives:
            if d.kind == "name":
                return d.arg
        return default

    def run_test(self, block: Block) -> None:
        name = self.name(block, f"test_doc_L{block.line}.py")
        (self.project / name).parent.mkdir(parents=True, exist_ok=True)
        (self.project / name).write_text(self.setup(block) + block.body, encoding="utf-8")
        expect = self.expectations(block)
        proc = self._run(
            [sys.executable, "-m", "pytest", "-q", "-rs", name],
            what=f"{block.where}: pytest {name}",
            expect_rc=expect.pop("rc", 1 if expect.get("failed") else 0),
        )
        import pytest

        outcomes = pytest.RunResult.parse_summary_nouns(proc.stdout.splitlines())
        wanted = expect or {"passed": len(re.findall(r"^(?:async )?def test_", block.body, re.M))}
        got = {k: outcomes.get(k, 0) for k in wanted}
        if got != wanted or (not expect and outcomes.get("skipped")):
            raise ExampleError(
                f"{block.where}: pytest outcomes {outcomes}, expected {wanted}\n{proc.stdout[-4000:]}"
            )

    def run_python(self, block: Block) -> None:
        script = self.project / self.name(block, f"doc_example_L{block.line}.py")
        script.write_text(self.setup(block) + block.body, encoding="utf-8")
        self._run(
            [sys.executable, script.name],
            what=f"{block.where}: python",
            expect_rc=self.expectations(block).get("rc", 0),
        )

    def run_shell(self, block: Block) -> None:
        if block.lang == "console":
            lines = [ln[2:] for ln in block.body.splitlines() if ln.startswith("$ ")]
            if not lines:
                raise ExampleError(f"{block.where}: a console block without '$ ' commands")
            body = "\n".join(lines) + "\n"
        else:
            body = block.body
        self._run(
            ["bash", "-e", "-o", "pipefail", "-c", self.setup(block) + body],
            what=f"{block.where}: bash",
            expect_rc=self.expectations(block).get("rc", 0),
        )

    def run_yaml(self, block: Block) -> None:
        import yaml

        try:
            data = yaml.safe_load(block.body)
        except yaml.YAMLError as exc:
            raise ExampleError(f"{block.where}: invalid YAML: {exc}") from None
        if isinstance(data, dict) and "checkpoints" in data:
            path = self.project / "checkpoints" / "checkpoints.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.body, encoding="utf-8")
            from pytest_ckpts.errors import ManifestError

            try:
                self.sync_hub()
            except ManifestError as exc:
                raise ExampleError(f"{block.where}: {exc}") from None
        elif isinstance(data, dict) and set(data) <= {"tracking_uri", "artifacts", "stages"}:
            from pytest_ckpts.uploads import UploadConfig

            config_dir = self.project / "configs"
            config_dir.mkdir(exist_ok=True)
            (config_dir / "mlflow.yaml").write_text(block.body, encoding="utf-8")
            UploadConfig.load(config_dir)

    def run_json(self, block: Block) -> None:
        try:
            data = json.loads(block.body)
        except json.JSONDecodeError as exc:
            raise ExampleError(f"{block.where}: invalid JSON: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("checkpoints"), list):
            import jsonschema

            schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
            try:
                jsonschema.validate(data, schema)
            except jsonschema.ValidationError as exc:
                raise ExampleError(f"{block.where}: not a valid report: {exc.message}") from None

    def run_toml(self, block: Block) -> None:
        try:
            tomllib.loads(block.body)
        except tomllib.TOMLDecodeError as exc:
            raise ExampleError(f"{block.where}: invalid TOML: {exc}") from None

    def run(self, blocks: list[Block]) -> None:
        for block in blocks:
            try:
                self.run_block(block)
            except ExampleError:
                raise
            except Exception as exc:  # a failing yaml/json check, a bad annotation
                raise ExampleError(f"{block.where}: {type(exc).__name__}: {exc}") from exc


def pages() -> list[Path]:
    """Every page of the site and the README (generated reference pages included)."""
    found = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md"]
    found += sorted((ROOT / "docs").rglob("*.md"))
    return [p for p in found if p.is_file()]


def runnable(page: Path) -> bool:
    return any(b.kind is not None and b.skip is None for b in parse(page))


def describe(blocks: list[Block]) -> dict[str, Any]:
    return {b.where: (b.kind, b.skip) for b in blocks}
