"""Bad-input tables for command-line tools: how every command gets its error tests.

A table is a list of ``Case`` rows: the arguments (``{name}`` placeholders name input files made on demand
by a ``Files`` recipe), the kind of bad value, the fragment the one error line must contain, fragments it
must not contain, and the outputs the command may leave (only rows with mixed good and bad inputs leave
any). ``check(main, case, tmp_path, recipes, capsys)`` runs ``main(argv)`` in process and asserts:

* exit code 2 (or the row's ``code``), no exception escaping (an escaping one is a bug: its traceback
  shows in the test failure);
* stderr's last line is the only ``error: ...`` line and holds ``expect``; no row's message advises
  unsafe loading (``weights_only=False``, ``allow_pickle=True``);
* nothing new under the test folder except the row's ``leaves``, and no temporary ``.partial-`` file.

For a new command: write its recipes (name -> function writing that file) and its rows, one per argument
and kind of bad value (``KINDS``), and parametrize a test over them with ``ids=case_ids(rows)``.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable, Mapping, Sequence

KINDS = ("missing", "empty", "truncated", "wrong-format", "wrong-shape", "out-of-range", "unwritable", "mixed",
         "usage")
UNSAFE_ADVICE = ("weights_only=False", "allow_pickle=True")


@dataclasses.dataclass(frozen=True)
class Case:
    id: str                         # "<command>-<argument>-<what>", unique in its table
    argv: Sequence[str]             # "{name}" fields: files from the recipes (or an output path under out/)
    kind: str                       # one of KINDS
    expect: str                     # fragment of the error line (of stdout when code == 0)
    code: int = 2
    leaves: Sequence[str] = ()      # outputs the row may leave (paths relative to the test folder)
    absent: Sequence[str] = ()      # fragments the message must not hold

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"{self.id}: kind {self.kind!r} not in {KINDS}")


def case_ids(rows: Sequence[Case]) -> list[str]:
    ids = [c.id for c in rows]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"duplicate case ids: {dup}")
    return ids


class Files(dict):
    """``{name: path}`` filled on first use: ``recipes[name](path)`` writes the file ``tmp/in/name``.

    A name without a recipe is a path that does not exist (``in/name``), so "missing" rows need no recipe;
    names starting with ``out`` are output paths under the test folder (not created).
    """

    def __init__(self, root: Path, recipes: Mapping[str, Callable[[Path], None]]):
        super().__init__()
        self.root, self.recipes = root, recipes

    def __missing__(self, name: str) -> str:
        if name.startswith("out"):
            path = self.root / name
        else:
            path = self.root / "in" / name
            if name in self.recipes:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.recipes[name](path)
        self[name] = str(path)
        return str(path)


def format_argv(argv: Sequence[str], files: Files) -> list[str]:
    """``{name}`` -> ``files[name]`` (names may hold dots and slashes, so not ``str.format``)."""
    return [re.sub(r"\{([^{}]+)\}", lambda m: files[m.group(1)], a) for a in argv]


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def check(main: Callable, case: Case, root: Path, recipes: Mapping[str, Callable[[Path], None]], capsys) -> str:
    """Run one row (see the module docstring); returns the command's stderr."""
    files = Files(root, recipes)
    argv = format_argv(case.argv, files)
    before = tree(root)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    shown = f"argv: {argv}\nexit {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert code == case.code, shown
    assert "Traceback" not in err, shown
    if case.code == 0:
        assert case.expect in out, shown
        message = out
    else:
        errors = [ln for ln in lines if ln.startswith("error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], shown
        message = errors[0]
        assert case.expect in message, f"expected {case.expect!r} in the error line\n{shown}"
    for frag in tuple(case.absent) + UNSAFE_ADVICE:
        assert frag not in message, f"{frag!r} must not be in the message\n{shown}"
    new = tree(root) - before
    left = {p for p in new if not any(p == k or p.startswith(k + "/") for k in case.leaves)}
    # folders that are parents of allowed outputs are fine
    left = {p for p in left if not any(k.startswith(p + "/") for k in case.leaves)}
    assert not left, f"left behind: {sorted(left)}\n{shown}"
    partial = [p for p in tree(root) if ".partial-" in p]
    assert not partial, f"temporary files left: {partial}\n{shown}"
    for k in case.leaves:
        assert (root / k).exists(), f"expected output {k} is missing\n{shown}"
    return err
