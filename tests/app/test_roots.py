"""Typed paths and page writes stay inside the folders given on the command line."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.roots import PathError, resolve_within

from conftest import DEFAULT_RUN, fuzz


def _tree(base: Path) -> tuple[Path, Path]:
    """root/ (allowed) with a run, a link to a folder outside, and outside/ (not allowed)."""
    root, outside = base / "root", base / "outside"
    (root / "runs" / "a").mkdir(parents=True)
    (outside / "secret").mkdir(parents=True)
    (root / "escape").symlink_to(outside)
    return root.resolve(), outside.resolve()


@pytest.fixture
def tree(tmp_path):
    return _tree(tmp_path)


def test_paths_inside_a_root_resolve(tree):
    root, _ = tree
    assert resolve_within(root / "runs" / "a", [root]) == root / "runs" / "a"
    assert resolve_within(f"{root}/runs/../runs/./a", [root]) == root / "runs" / "a"
    assert resolve_within(root, [root]) == root


@pytest.mark.parametrize("text", ["{root}/../outside/secret", "{root}/runs/../../outside", "{root}/escape/secret",
                                  "{root}/escape", "/etc/passwd", "/", "~", "{root}/../root-sibling"])
def test_escapes_by_dots_links_and_absolute_paths_are_refused(tree, text):
    root, _ = tree
    with pytest.raises(PathError, match="outside the folders this app may use"):
        resolve_within(text.format(root=root), [root])


@pytest.mark.parametrize("text, reason", [("", "empty path"), ("  ", "empty path"), ("a\0b", "NUL"),
                                          ("x" * 5000, "4,096")])
def test_strings_that_are_not_paths_are_refused(tree, text, reason):
    with pytest.raises(PathError, match=reason):
        resolve_within(text, [tree[0]])


def test_without_roots_nothing_can_be_opened(tree):
    with pytest.raises(PathError, match="gatescope app --root FOLDER"):
        resolve_within(tree[0], [])


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory) -> Path:
    return _tree(tmp_path_factory.mktemp("fuzz"))[0]


SEGMENTS = st.sampled_from(["..", ".", "runs", "a", "escape", "secret", "", "~", "outside", "root", "%2e%2e",
                            "..\\..", "....", "a b"])


@fuzz(300)
@given(parts=st.lists(SEGMENTS, max_size=8), absolute=st.booleans())
def test_generated_paths_never_resolve_outside_the_root(fuzz_root, parts, absolute, tried):
    tried("path confinement")
    root = fuzz_root
    text = ("/" if absolute else f"{root}/") + "/".join(parts)
    try:
        path = resolve_within(text, [root])
    except PathError:
        return
    assert path.is_relative_to(root) and path == Path(os.path.realpath(path))




@pytest.mark.app
def test_the_sidebar_opens_typed_paths_only_inside_the_roots(open_app, monkeypatch, tmp_path):
    root, outside = tmp_path / "lab", tmp_path / "elsewhere"
    root.mkdir()
    shutil.copytree(DEFAULT_RUN, outside / "theirs", ignore=shutil.ignore_patterns("analysis"))
    shutil.copytree(DEFAULT_RUN, root / "deep" / "er" / "down" / "mine", ignore=shutil.ignore_patterns("analysis"))
    monkeypatch.setenv("GATESCOPE_ROOTS", str(root))
    at = open_app(DEFAULT_RUN)
    at.sidebar.text_input(key="open_path").input(f"{root}/../elsewhere/theirs").run()
    assert "Cannot open this folder" in at.error[0].value and "outside the folders" in at.error[0].value
    assert not any("theirs" in o for o in at.sidebar.selectbox(key="run").options)
    at.sidebar.text_input(key="open_path").input(f"{root}/deep/er/down/mine").run()  # below the scan depth
    assert not at.error and any(o.endswith("down/mine") for o in at.sidebar.selectbox(key="run").options)
    at.sidebar.selectbox(key="run").set_value(str((root / "deep/er/down/mine").resolve())).run()
    assert not at.exception and at.title[0].value == "small_cnn on mnist5k"


def test_pages_write_only_near_the_command_lines_runs_under_roots_and_in_the_upload_cache(tree, monkeypatch, tmp_path):
    from app.roots import ROOTS_ENV, RUNS_ENV, write_roots

    root, outside = tree
    monkeypatch.setenv(ROOTS_ENV, str(root))
    monkeypatch.setenv(RUNS_ENV, str(tmp_path / "given" / "run"))
    allowed = write_roots(tmp_path / "uploads")
    for ok in (root / "runs" / "a-pruned-p50", tmp_path / "given" / "run-pruned-p50", tmp_path / "uploads" / "x"):
        assert resolve_within(ok, allowed) == ok.resolve()
    for bad in (outside / "x", root / "escape" / "x", tmp_path / "elsewhere"):
        with pytest.raises(PathError):
            resolve_within(bad, allowed)
