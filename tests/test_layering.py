"""STYLE.md principle 1: only stage modules (verbs) import ray; no module imports a later stage."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "s2s"
STAGES = ["prepare", "train", "translate", "evaluate"]  # in pipeline order
ENTRYPOINTS = {"cli", "pipeline"}  # the doors (and the pipeline of all stages) import every stage
RAY_SUPPORT = {"cluster"}  # what the cluster offers, asked by the stages before they start work


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def modules() -> dict[str, set[str]]:
    return {
        str(p.relative_to(PACKAGE).with_suffix("")).replace("/", "."): imports(p)
        for p in PACKAGE.rglob("*.py")
    }


def test_only_stage_modules_import_ray():
    offenders = [
        name
        for name, names in modules().items()
        if name not in STAGES + [*RAY_SUPPORT]
        and any(n == "ray" or n.startswith("ray.") for n in names)
    ]
    assert offenders == []


def test_ray_support_imports_no_stage():
    for name in RAY_SUPPORT:
        stages = [s for s in STAGES if f"s2s.{s}" in modules()[name]]
        assert stages == [], f"{name} imports stage(s) {stages}"


def test_no_module_imports_a_later_stage():
    for name, names in modules().items():
        if name in ENTRYPOINTS:
            continue
        rank = STAGES.index(name) if name in STAGES else -1
        later = [s for s in STAGES[rank + 1 :] if f"s2s.{s}" in names]
        assert later == [], f"{name} imports later stage(s) {later}"


def importers(prefix: str) -> set[str]:
    """The s2s modules that import ``prefix`` or anything under it."""
    return {
        name
        for name, names in modules().items()
        if any(n == prefix or n.startswith(prefix + ".") for n in names)
    }


def test_engines_sit_behind_one_interface():
    """Decoding engines live in s2s/engines/: the translator picks one through the factory and
    never imports an engine module, CTranslate2 or the search itself."""
    assert importers("ctranslate2") == {"engines.ctranslate2"}
    translator = modules()["translator"]
    engine_imports = {n for n in translator if n.startswith("s2s.engines")}
    assert engine_imports <= {
        "s2s.engines",
        "s2s.engines.load_engine",
        "s2s.engines.engine_model_id",
    }
    assert not {n for n in translator if n.startswith(("s2s.search", "ctranslate2"))}
    for name, names in modules().items():
        if name.startswith("engines"):
            assert not any(n == "ray" or n.startswith("ray.") for n in names), name
            assert not any(n.startswith("s2s.translator") for n in names), name


def test_scoring_is_one_ray_free_module():
    assert importers("sacrebleu") == {"scoring"}
    names = modules()["scoring"]
    assert not any(n.split(".")[0] in {"s2s", "ray", "torch"} for n in names)


def test_only_checkpoint_names_the_trainer_state_file():
    holders = [p.name for p in PACKAGE.rglob("*.py") if "trainer_state.json" in p.read_text()]
    assert holders == ["checkpoint.py"]


def test_hugging_face_models_need_no_transformers():
    """`s2s import --from hf` and `s2s export --format hf` read and write the files themselves:
    transformers is a test and benchmark dependency, never one of s2s."""
    assert importers("transformers") == set()
    # SentencePiece's model protobuf (rewriting Marian's .spm files) is the importer's alone.
    assert importers("sentencepiece.sentencepiece_model_pb2") == {"marian"}
