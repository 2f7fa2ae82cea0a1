"""The registry of model kinds (issue 17): one place that says what each kind offers, looked up everywhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from guard.errors import ModelError
from guard.models import CAPABILITIES, ModelKind, capability, get_kind, kind_of, kinds, load, prompts_for, \
    register_kind
from guard.models import registry

GUARD = Path(__file__).resolve().parents[1] / "guard"


def test_builtin_kinds_declare_their_capabilities():
    found = kinds()
    assert list(found)[:3] == ["reference", "janus", "emu3"]
    assert found["reference"].offers() == list(CAPABILITIES)
    assert found["janus"].offers() == ["load", "load_tokenizer", "ear_model", "concept_stream"]
    assert found["emu3"].offers() == ["load", "load_tokenizer"]
    assert get_kind("emu3:/models/Emu3@512") is found["emu3"]


def test_a_missing_capability_is_one_line_naming_the_kind():
    with pytest.raises(ModelError) as e:
        capability("emu3:/nowhere", "concept_stream")
    msg = str(e.value)
    assert "'emu3'" in msg and "concept_stream" in msg and "\n" not in msg
    with pytest.raises(ModelError, match="'janus' does not offer prompts"):
        prompts_for("janus:/nowhere")
    with pytest.raises(ModelError, match="unknown model spec 'nonsense'"):
        load("nonsense")


def test_the_reference_kind_owns_its_generator_and_offers_every_capability(gen):
    kind = kind_of(gen)
    assert kind.name == "reference"
    ear = capability(gen, "ear_model")(gen)
    assert ear.n_layers == len(gen.gpt.blocks) and ear.module is gen.gpt
    source = prompts_for(gen)
    assert source.concept("disc").name == "circle"
    assert len(source.eval_prompts(3, seed=1)) == 3 and source.eval_images(2, seed=1).shape[0] == 2
    assert load("reference") is gen and load(f"reference:{Path(registry.__file__).parent / 'reference' / 'weights'}")


def test_a_user_kind_plugs_in_with_one_registration(monkeypatch):
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))

    class ToyGenerator:
        model_kind = "toy"

    marker = object()
    register_kind(ModelKind("toy", "toy:PATH", load=lambda path, spec: ToyGenerator(),
                            ear_model=lambda generator: marker))
    gen = load("toy:/anywhere")
    from guard.erasure import concept_stream_for, ear_model_for

    assert ear_model_for(gen) is marker
    with pytest.raises(ModelError, match="'toy' does not offer concept_stream"):
        concept_stream_for(gen)
    with pytest.raises(Exception, match="already registered"):
        register_kind(ModelKind("toy", "toy", load=lambda path, spec: None))
    assert "'toy:PATH'" in registry.spec_help()


def _imports(path: Path) -> list[str]:
    """Every module a file imports (module level and inside functions), relative imports resolved."""
    rel = path.relative_to(GUARD.parent).with_suffix("")
    parts = list(rel.parts)
    package = parts if parts[-1] == "__init__" else parts[:-1]
    package = [p for p in package if p != "__init__"]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            out += [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def test_nothing_outside_guard_models_imports_a_kind_s_internals():
    offenders = []
    for path in sorted(GUARD.rglob("*.py")):
        if GUARD / "models" not in path.parents:
            offenders += [f"{path.relative_to(GUARD.parent)}: {m}" for m in _imports(path)
                          if m == "guard.models.reference" or m.startswith("guard.models.reference.")]
    assert offenders == []


def test_the_package_has_no_import_cycle():
    modules = {}
    for path in GUARD.rglob("*.py"):
        rel = path.relative_to(GUARD.parent).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        deps = {m if m in modules else m.rpartition(".")[0] for m in _imports(path)}
        # a submodule importing its own package's __init__ is how packages work, not a cycle
        graph[name] = {d for d in deps if d in modules and d != name and not name.startswith(d + ".")}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(dep):] + [node, dep]))
            if dep not in state:
                visit(dep, trail + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


FLOORS = {"models": 0, "keys": 1, "watermark": 2, "erasure": 2, "provenance": 2, "detect": 3, "eval": 4, "cli": 5}
"""README "Architecture": cli -> eval -> detect -> watermark, erasure, provenance -> keys -> models; the modules
outside these floors (errors, imageio, testfiles) are used by every floor and import none of them."""


def test_imports_point_down_the_floors_only():
    wrong = []
    for path in GUARD.rglob("*.py"):
        rel = path.relative_to(GUARD.parent).with_suffix("")
        top = rel.parts[1] if len(rel.parts) > 1 else ""
        here = FLOORS.get(top, -1)
        for m in _imports(path):
            parts = m.split(".")
            if parts[0] != "guard" or len(parts) < 2 or parts[1] == top:
                continue
            there = FLOORS.get(parts[1], -1)
            if there >= 0 and there >= here:
                wrong.append(f"{rel}: {m}")
    assert wrong == []
