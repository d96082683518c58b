"""The exception tree (`fitplan/errors.py`) and its one wording map (`fitplan/cli/errors.py`).

Errors carry data as declared fields, derive from the builtin a caller would catch, survive pickling
(multiprocessing, a pool worker that planned), and every raise site in the source gives the fields
its class requires. The CLI writes `fitplan: error: ` in one place and takes exit codes from one map.
"""
from __future__ import annotations

import ast
import pickle
from pathlib import Path

import click
import pytest

import fitplan
from fitplan import errors
from fitplan.errors import (ConfigError, DoesNotFitError, FileError, FitplanError, GatedModelError, HardwareError,
                            HubError, InputError, LibraryChangedError, ModelNotFoundError, OptionError, ref)

ROOT = Path(fitplan.__file__).parent

# every module that defines an error class is imported, so error_classes() sees them all
import fitplan.runtime.verify  # noqa: E402,F401


def _sample(cls: type[FitplanError]) -> FitplanError:
    """An instance of `cls` with every declared field set to a value of its own."""
    values = {name: (7 if name in ("line", "status") else f"{name}-value") for name in cls.fields()}
    return cls(f"{cls.__name__} says {ref('context', 8192)} is wrong", **values)


CLASSES = errors.error_classes()


def test_the_tree_is_the_written_one():
    names = {c.__name__ for c in CLASSES}
    assert {"OptionError", "FileError", "ConfigError", "ModelNotFoundError", "GatedModelError", "HubError",
            "UnsupportedModelError", "LibraryChangedError", "HardwareError", "DoesNotFitError", "NoGpuError",
            "DependencyError"} <= names
    assert all(issubclass(c, FitplanError) for c in CLASSES)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_pickles_with_its_fields_and_message(cls):
    err = _sample(cls)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert back.message == err.message and str(back) == str(err) and back.render("cli") == err.render("cli")
    assert back.data == err.data and all(getattr(back, f) == getattr(err, f) for f in cls.fields())
    assert back.args == err.args


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_requires_its_fields_and_refuses_others(cls):
    for missing in cls.required_fields():
        values = {f: "x" for f in cls.required_fields() if f != missing}
        with pytest.raises(TypeError, match=missing):
            cls("message", **values)
    with pytest.raises(TypeError, match="no_such_field"):
        cls("message", **{f: "x" for f in cls.required_fields()}, no_such_field=1)


def test_builtin_bases_let_callers_catch_without_importing_fitplan():
    assert isinstance(_sample(OptionError), ValueError) and isinstance(_sample(FileError), ValueError)
    assert isinstance(_sample(ConfigError), ValueError) and isinstance(_sample(HardwareError), ValueError)
    assert isinstance(_sample(HubError), OSError) and isinstance(_sample(GatedModelError), PermissionError)
    assert isinstance(_sample(ModelNotFoundError), LookupError)
    assert isinstance(_sample(LibraryChangedError), NotImplementedError)
    assert isinstance(_sample(DoesNotFitError), RuntimeError)
    assert isinstance(_sample(errors.DependencyError), ImportError)


def test_bases_are_abstract():
    for cls in (FitplanError, InputError):
        with pytest.raises(TypeError, match="base class"):
            cls("message")


def test_library_changed_error_words_itself_and_pickles():
    err = LibraryChangedError(library="transformers", version="9.0", what="X moved")
    assert str(err).startswith("transformers 9.0: X moved; fitplan is tested with the versions")
    back = pickle.loads(pickle.dumps(err))
    assert (back.library, back.version, back.what, str(back)) == ("transformers", "9.0", "X moved", str(err))


def test_messages_render_options_per_audience():
    err = OptionError(f"{ref('context', 8192)} is too long", option="context")
    assert str(err) == "context=8192 is too long" and err.render("cli") == "--context 8192 is too long"


# -- every raise site gives its class's fields -----------------------------------------------------------

#: Helpers whose result is spread into a FileError (`**m.at(key)`): they return path, line and key.
_SPREADERS = {"at", "fields_of"}


def _constructions():
    by_name = {c.__name__: c for c in (*CLASSES, FitplanError, InputError)}
    for path in sorted(ROOT.rglob("*.py")):
        if path.name == "errors.py" and path.parent == ROOT:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in by_name:
                yield f"{path.relative_to(ROOT.parent)}:{node.lineno}", by_name[node.func.id], node


def test_an_error_rebuilt_as_its_own_class_keeps_its_fields():
    """`type(err)(new message, ...)` re-raises with more context: it must hand the fields on."""
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Call)
                    and getattr(node.func.func, "id", None) == "type"):
                spread = [k.value for k in node.keywords if k.arg is None]
                assert any(isinstance(s, ast.Attribute) and s.attr == "data" for s in spread), \
                    f"{path}:{node.lineno} rebuilds an error without its fields (**err.data)"


def test_every_raise_site_gives_the_fields_its_class_requires():
    sites = list(_constructions())
    assert len(sites) > 200  # the walk really found the raise sites
    problems = []
    for where, cls, call in sites:
        if cls in (FitplanError, InputError):
            problems.append(f"{where}: raises the abstract {cls.__name__}")
            continue
        named = {k.arg for k in call.keywords if k.arg is not None}
        spread = [k.value for k in call.keywords if k.arg is None]
        unknown = named - set(cls.fields())
        if unknown:
            problems.append(f"{where}: {cls.__name__} has no field {sorted(unknown)}")
        if spread:  # `**m.at(key)`: only from the helpers that return a FileError's location
            ok = cls is FileError and all(isinstance(s, ast.Call) and (getattr(s.func, "attr", None) or
                                                                      getattr(s.func, "id", None)) in _SPREADERS
                                          for s in spread)
            if not ok:
                problems.append(f"{where}: {cls.__name__} gets fields spread from something not a location helper")
            continue
        missing = set(cls.required_fields()) - named
        if missing:
            problems.append(f"{where}: {cls.__name__} without {sorted(missing)}")
    assert problems == []


# -- fields set where the data is (a few sites a caller acts on) -----------------------------------------

def test_a_yaml_error_names_file_line_and_key(tmp_path):
    from fitplan.hardware.catalogue import hardware_from_file

    f = tmp_path / "hw.yaml"
    f.write_text("gpus:\n  - name: card\n    memory: 24GiB\n    compute_capability: '8.6'\n    free: 30GiB\n")
    with pytest.raises(FileError) as err:
        hardware_from_file(f)
    assert (err.value.path, err.value.line, err.value.key) == (str(f), 5, "free")


def test_an_option_error_names_the_option():
    from fitplan.options import PlanOptions

    with pytest.raises(ValueError) as err:  # a caller need not import fitplan's classes to catch it
        PlanOptions.from_values(prefer="fastest")
    assert isinstance(err.value, OptionError) and err.value.option == "prefer"


def test_a_missing_folder_names_its_path():
    from fitplan.model.sources import resolve

    with pytest.raises(LookupError) as err:
        resolve("./no/such/folder")
    assert isinstance(err.value, ModelNotFoundError)
    assert (err.value.path, err.value.repo_id) == ("./no/such/folder", None)


def test_an_unknown_gpu_names_it():
    from fitplan.hardware.catalogue import find_gpu

    with pytest.raises(HardwareError) as err:
        find_gpu("rtx9999")
    assert err.value.gpu == "rtx9999" and err.value.path is None


def test_a_malformed_config_field_names_its_key():
    from fitplan.model.fields import check_config_fields

    with pytest.raises(ConfigError) as err:
        check_config_fields({"model_type": "llama", "num_hidden_layers": "many"})
    assert err.value.key == "num_hidden_layers"


# -- the CLI: one map, one prefix --------------------------------------------------------------------------

def test_exit_codes_come_from_one_map():
    from fitplan.cli.errors import exit_code

    assert exit_code(_sample(DoesNotFitError)) == 1
    assert {exit_code(_sample(c)) for c in CLASSES if not issubclass(c, DoesNotFitError)} == {2}
    assert exit_code(click.UsageError("bad flag")) == 2 and exit_code(KeyboardInterrupt()) == 130
    assert not any(hasattr(c, "exit_code") for c in CLASSES)  # the library does not choose exit codes


def test_the_error_prefix_is_written_once():
    hits = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if "fitplan: error:" in p.read_text(encoding="utf-8")]
    assert hits == ["cli/errors.py"]
    assert (ROOT / "cli" / "errors.py").read_text(encoding="utf-8").count("fitplan: error:") == 1
