"""The package's shape, as docs/architecture.md describes it, held by tests (issue 10):
no import cycle (lazy imports included), no module named like a standard-library module, private
transformers names only in fitplan/model/hf.py, and no module over ~400 lines without a reason."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "fitplan"
MAX_LINES = 420


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        package = m.split(".") if p.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    name = f"{target}.{alias.name}"
                    graph[m].add(name if name in mods else target)
            elif isinstance(node, ast.Import):
                graph[m].update(a.name for a in node.names)
        graph[m] = {t for t in graph[m] if t in mods and t != m}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_even_through_lazy_imports():
    mods = _modules()
    graph = _imports(mods)
    assert sum(len(t) for t in graph.values()) > 50  # the walk really saw the imports
    assert _cycles(graph) == []


def test_no_module_shadows_the_standard_library():
    for m in _modules():
        assert m.rsplit(".", 1)[-1] not in sys.stdlib_module_names, m


def test_private_transformers_names_only_in_model_hf():
    private = re.compile(r"from transformers[\w.]* import [^\n]*\b_[a-z]\w*|transformers\.[\w.]*\._[a-z]\w*")
    for m, p in _modules().items():
        if m != "fitplan.model.hf":
            assert not private.search(p.read_text()), m


#: A long module's reason: `Why one module (~N lines): ...`, N within a fifth of its length, and a
#: reason of at least a sentence (a bare phrase, or a count the module has long outgrown, says nothing).
_WHY = re.compile(r"Why one module \(~(\d+) lines\): (.+?)(?:\n\n|$)", re.S)


def _why_problem(module: str, text: str) -> str | None:
    """What is wrong with a module's length, or None: over MAX_LINES, it must say why (`_WHY`)."""
    lines = text.count("\n")
    if lines <= MAX_LINES:
        return None
    why = _WHY.search(ast.get_docstring(ast.parse(text)) or "")
    if not why:
        return f"{module} has {lines} lines and no 'Why one module (~N lines): ...' in its docstring"
    said, reason = int(why.group(1)), why.group(2)
    if abs(said - lines) > lines / 5:
        return f"{module} says ~{said} lines and has {lines}: say why again"
    if len(reason.split()) < 15:
        return f"{module}'s reason is not a reason: {reason!r}"
    return None


def test_long_modules_say_why_they_are_long():
    problems = [_why_problem(m, p.read_text()) for m, p in _modules().items()]
    assert [x for x in problems if x] == []


def test_the_long_module_rule_can_fail():
    """The rule refuses what it should: no reason, a count the module outgrew, a phrase with no reason."""
    body = "x = 1\n" * 480
    reason = "it is one table whose rows are read and checked against the library source side by side, in one place."

    def module(doc: str) -> str:
        return f'"""{doc}\n"""\n{body}'

    assert _why_problem("m", module(f"Why one module (~480 lines): {reason}")) is None
    assert "no 'Why one module" in _why_problem("m", body)
    assert "no 'Why one module" in _why_problem("m", module("A module that does many things."))
    assert "say why again" in _why_problem("m", module(f"Why one module (~300 lines): {reason}"))
    assert "not a reason" in _why_problem("m", module("Why one module (~480 lines): history."))


#: The floors of the tree, lowest first: a module imports only from its own floor or below (lazy
#: imports too). The vocabulary is at the bottom; presentation sits where the CLI and a report's
#: `__str__` both reach it downward.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("errors", "vocab", "versions", "calibration", "atomic", "safeio"),
    ("yamlsource", "options"),
    ("hardware", "model"),
    ("planning", "gguf", "engines"),
    ("render", "profiles"),
    ("pipeline",),
    ("runtime", "api"),
    ("cli", "__main__", ""),
)


def _top(module: str) -> str:
    """The first name under `fitplan` (`fitplan.model.hf` -> `model`; the package itself -> "")."""
    return module.split(".")[1] if "." in module else ""


def _floor(module: str) -> int:
    return next(i for i, names in enumerate(FLOORS) if _top(module) in names)


def test_no_import_runs_back_up_even_lazily():
    graph = _imports(_modules())
    up = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets if _floor(t) > _floor(m))
    assert up == []


def test_hardware_and_model_stages_do_not_import_each_other():
    graph = _imports(_modules())
    across = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                    if {_top(m), _top(t)} == {"hardware", "model"})
    assert across == []


#: Where torch and transformers may be imported: the runtime (which allocates) and the model stage's
#: transformers quarantine (model/hf.py), which builds on the meta device and reads what it built (the
#: tensors, the cache probe, image tokens, a pre-quantized method's converted weights). Planning, the
#: options, profiles, the CLI, presentation and the rest of the model stage never do: a cached plan
#: imports neither.
TORCH_HOMES = ("fitplan.runtime", "fitplan.model.hf")


def test_torch_and_transformers_only_where_the_model_is_built_or_loaded():
    heavy = re.compile(r"^\s*(from|import) (torch|transformers)\b", re.M)
    found = sorted(m for m, p in _modules().items()
                   if heavy.search(p.read_text()) and not m.startswith(TORCH_HOMES))
    assert found == []
