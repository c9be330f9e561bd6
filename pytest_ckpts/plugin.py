"""pytest wiring for pytest-ckpts: options, ini keys, marker, hooks. Nothing else.

Every decision is made by ``settings``/``manifest`` once in ``pytest_configure`` and
kept on the one ``CkptsSession``; the hooks below only route pytest events to it.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Generator
from typing import Any

import pytest

from . import fixtures, hookspecs, mlflow_fixtures
from ._properties import record as record_properties
from .errors import CheckpointDownloadError, CheckpointSkipped, ManifestError
from .marker import MARKER, BadMarker, add_implied_marker, marked_names, marker_problem
from .session import RESOLVED_KEY, SESSION_KEY, CkptsSession, get_session, plugin_text
from .settings import Mode, Settings, add_pytest_options


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_pytest_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*names): the test needs these checkpoints from the manifest; "
        "they are downloaded, verified and handed to the `checkpoints` fixture "
        "(a marker without names is a plain category for -m filtering).",
    )
    config.pluginmanager.register(fixtures, "ckpts-fixtures")
    config.pluginmanager.register(mlflow_fixtures, "ckpts-mlflow-fixtures")

    try:
        settings = Settings.from_pytest(config)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    manifest = None
    if settings.manifest is not None:
        from .manifest import load_manifest

        try:
            manifest = load_manifest(settings.manifest)
        except ManifestError as exc:
            raise pytest.UsageError(plugin_text(exc)) from None
    session = CkptsSession(config=config, settings=settings, manifest=manifest)
    workerinput = getattr(config, "workerinput", None)
    if workerinput and workerinput.get("ckpts_run_id"):
        session.run_id = str(workerinput["ckpts_run_id"])
    config.stash[SESSION_KEY] = session
    from . import api

    config.add_cleanup(api.use_backend(session))
    if config.pluginmanager.hasplugin("xdist") or config.pluginmanager.hasplugin("xdist.plugin"):
        config.pluginmanager.register(_XdistHooks(), "ckpts-xdist")


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None and not hasattr(config, "workerinput"):
        session.end_run()


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(
    collector: pytest.Collector, name: str, obj: object
) -> Generator[None, Any, Any]:
    result = yield
    if result is None:
        return result
    session = get_session(collector.config)
    items = result if isinstance(result, list) else [result]
    out: list[Any] = []
    for node in items:
        problem = marker_problem(session, node) if isinstance(node, pytest.Item) else None
        if problem is None:
            out.append(node)
        else:
            bad = BadMarker.from_parent(collector, name=node.name)
            bad.message = problem
            out.append(bad)
    return out if isinstance(result, list) else out[0]


def pytest_itemcollected(item: pytest.Item) -> None:
    """Tests that use a checkpoint fixture carry the marker, so ``-m`` filters them."""
    add_implied_marker(item)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    session = get_session(config)
    if session.settings.mode is not Mode.SKIP:
        return
    for item in items:
        if item.get_closest_marker(MARKER) is not None:
            names = ", ".join(marked_names(item)) or "checkpoints"
            item.add_marker(
                pytest.mark.skip(
                    reason=f"{names}: checkpoint downloads disabled ({session.mode_source})"
                )
            )
            for name in marked_names(item):
                session.stats.record(
                    name, "skipped", reason=f"downloads disabled ({session.mode_source})"
                )
                record_properties(
                    item, name, "skipped", reason=f"downloads disabled ({session.mode_source})"
                )


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start fetching what the selected tests need, in order of first use; nothing when
    no test will run (``--collect-only``, ``--setup-plan``, ``--fixtures``, an empty
    selection) or for a test marked ``skip``."""
    if not _tests_will_run(session.config):
        return
    names = [
        n
        for item in session.items
        if item.get_closest_marker("skip") is None
        for n in marked_names(item)
    ]
    get_session(session.config).start_prefetch(list(dict.fromkeys(names)))


def _tests_will_run(config: pytest.Config) -> bool:
    option = config.option
    return not any(
        getattr(option, name, False)
        for name in ("collectonly", "setupplan", "showfixtures", "show_fixtures_per_test")
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    names = marked_names(item)
    if not names or not _tests_will_run(item.config):  # --setup-plan: a plan, no downloads
        return
    session = get_session(item.config)
    problem = marker_problem(session, item, names)  # marks added by parametrize ids land here
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    resolved = item.stash.setdefault(RESOLVED_KEY, {})
    for name in names:
        with session.stats.attempt(name):  # a timeout or Ctrl-C mid-resolve: a failed row
            resolved[name] = session.resolve_for_test(name, item)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> None:
    """Library calls made while this test runs belong to this run (not to a nested one)."""
    get_session(item.config).current_test = item.nodeid


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Seed-style tests call ``get_checkpoint()`` themselves: same policy as the marker."""
    try:
        return (yield)
    except (CheckpointSkipped, CheckpointDownloadError) as exc:
        if item.get_closest_marker(MARKER) is not None:
            get_session(item.config).library_outcome(exc)
        raise


def pytest_report_header(config: pytest.Config) -> list[str]:
    from .report import header_line

    line = header_line(get_session(config))
    return [line] if line else []


def pytest_sessionfinish(session: pytest.Session) -> None:
    ckpts = get_session(session.config)
    ckpts.stop_prefetch()
    from .report import settle, write_reports

    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        settle(ckpts)
        workeroutput["ckpts_stats"] = ckpts.stats.to_json()
        return
    for line in write_reports(ckpts):  # a report never changes the run's outcome
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(line, yellow=True)
        else:
            sys.stderr.write(line + "\n")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    from .report import report_option_warning, summary_lines

    args = [*shlex.split(os.environ.get("PYTEST_ADDOPTS", "")), *config.invocation_params.args]
    moved = report_option_warning(args, config.invocation_params.dir, config.rootpath)
    if moved:
        terminalreporter.write_line(moved, yellow=True)
    session = get_session(config)
    if session.stats.empty:
        return
    verbose = config.getoption("verbose") >= 0  # get_verbosity() needs pytest 8
    lines = summary_lines(session.stats, verbose=verbose)
    if not verbose:
        terminalreporter.write_line(f"checkpoints: {lines[0]}")
        return
    terminalreporter.write_sep("=", "checkpoints")
    for line in lines:
        terminalreporter.write_line(line)


class _XdistHooks:
    """Controller side of xdist; registered only when xdist is active."""

    def pytest_configure_node(self, node: Any) -> None:
        """Decide hub reachability and branch commits once, for every worker."""
        session = get_session(node.config)
        node.workerinput["ckpts_run_id"] = session.run_id
        node.workerinput["ckpts_probes"] = session.probes_for_workers()

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        data = getattr(node, "workeroutput", {}).get("ckpts_stats")
        if data:
            get_session(node.config).stats.merge(data)
