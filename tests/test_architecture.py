"""The architecture's rules, checked: imports go one way (import-linter, in `make test`; here the rules it cannot
see), the runtime and the CLI's runtime commands need no torch, every config field documents itself, and a new
method or backend is one file (the recipes of docs/architecture.md, registered and run)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fewstep"
# modules that keep torch out of the runtime's commands by importing fewstep's torch code only when it is needed
LAZY_INTERNAL = {"commands/generate.py", "commands/info.py", "commands/bench.py", "backends/torch_eager.py"}
# what a runtime-only install (`pip install 'fewstep[runtime,serve]'`) does not have
NOT_IN_RUNTIME = ("torch", "diffusers", "transformers", "safetensors", "onnx", "onnxscript", "nncf", "openvino",
                  "coremltools", "peft", "torchmetrics", "matplotlib", "sklearn", "tqdm", "accelerate")  # fmt: skip


def _function_level_imports():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        lines = path.read_text(encoding="utf-8").splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    name = node.names[0].name if isinstance(node, ast.Import) else (node.module or "")
                    yield rel, node.lineno, name, lines


def _commented(lines: list[str], lineno: int) -> bool:
    """A comment on the import's line, or above its run of import lines (one comment may cover a block)."""
    i = lineno - 1
    while i >= 0:
        text = lines[i].strip()
        if "#" in text:
            return True
        if not (text.startswith(("import ", "from ")) and i < lineno):
            return False
        i -= 1
    return False


def test_function_level_imports_are_only_optional_dependencies_and_say_which():
    """Imports inside functions only for optional heavy dependencies (never the standard library, never fewstep
    itself but where the runtime's commands keep torch out), each with a comment naming the extra."""
    problems = []
    for rel, lineno, name, lines in _function_level_imports():
        top = name.split(".")[0]
        where = f"fewstep/{rel}:{lineno} imports {name} inside a function"
        if top in sys.stdlib_module_names:
            problems.append(f"{where}: the standard library belongs at the top of the module")
        elif top == "fewstep" and rel not in LAZY_INTERNAL:
            problems.append(f"{where}: fewstep's own modules belong at the top (the layers keep them acyclic)")
        elif not _commented(lines, lineno):
            problems.append(f"{where} without a comment saying which optional dependency (extra) it is")
    assert not problems, "\n".join(problems)


def test_runtime_plugins_and_cli_work_without_torch(tmp_path):
    """The runtime, every backend plugin and the CLI's parser import with the training and export stacks blocked;
    `fewstep --help` works and a training command names its extra in one line."""
    code = (
        f"import sys; [sys.modules.__setitem__(m, None) for m in {NOT_IN_RUNTIME!r}]\n"
        "import fewstep.runtime, fewstep.core.manifest, fewstep.core.config, fewstep.core.sampling_rules\n"
        "from fewstep.runtime.registry import backends\n"
        "names = {b.name for b in backends()}\n"
        "assert {'onnxruntime', 'openvino', 'coreml', 'tensorrt', 'torch-tensorrt', 'torch'} <= names, names\n"
        "assert backends()[-1].name == 'torch' and backends()[-1].comparison  # the comparison point ranks last\n"
        "from fewstep.commands.dispatch import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
        "assert main(['distill', 'reflow', '--help']) == 2\n"
        "assert main(['info', '--json']) == 0\n"
        "assert not any(sys.modules.get(m) for m in ('torch', 'diffusers', 'transformers'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "fewstep distill" in out.stdout and "needs the train extra" in out.stderr
    assert "pip install 'fewstep[train]'" in out.stderr and "Traceback" not in out.stderr


def test_every_config_field_documents_itself():
    """Each field of every config the CLI builds flags from has a doc; enum fields list their choices."""
    import dataclasses

    from fewstep.compress.method_registry import methods
    from fewstep.compress.pairs import PairsConfig
    from fewstep.compress.teacher import TeacherConfig
    from fewstep.compress.tiny_decoder import DecoderDistillConfig
    from fewstep.core.config import info_of
    from fewstep.export.config import ExportConfig

    configs = [m.config for m in methods()] + [TeacherConfig, PairsConfig, DecoderDistillConfig, ExportConfig]
    missing = [f"{c.__name__}.{f.name}" for c in configs for f in dataclasses.fields(c) if not info_of(f).doc]
    assert not missing, f"fields without a doc: {missing}"


def test_help_is_made_from_the_docs_and_has_no_internal_names():
    """Every flag of every subcommand explains itself; no `CFG_*` metavars; config commands take --config and
    --print-config; booleans work bare."""
    from fewstep.commands.dispatch import build_parser

    parser = build_parser(full=True)
    seen = []

    def walk(p, prefix):
        for action in p._actions:
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                for name, child in action.choices.items():
                    walk(child, f"{prefix} {name}")
            elif action.option_strings and action.help is None and "--help" not in action.option_strings:
                pytest.fail(f"{prefix} {action.option_strings[0]} has no help")
        text = p.format_help()
        assert "CFG_" not in text, prefix
        if any(a.dest.startswith("cfg_") for a in p._actions):
            assert "--config" in text and "--print-config" in text, prefix
        seen.append(prefix)

    walk(parser, "fewstep")
    assert "fewstep distill slimflow" in seen and "fewstep export" in seen
    from fewstep.commands.dispatch import main

    assert main(["distill", "guidance", "--then-progressive", "--start-steps", "8", "--student-steps", "2",
                 "--print-config"]) == 0  # fmt: skip


# ---- the one-file recipes -----------------------------------------------------------------------------------------


@pytest.fixture
def plain_backend():
    import tests.plugins.plain_onnx_backend as plugin
    from fewstep.runtime.registry import register_backend, unregister_backend

    register_backend(plugin.BACKEND)  # (re-)register: an earlier test may have removed it
    yield plugin
    unregister_backend(plugin.NAME)


@pytest.fixture
def velocity_kd():
    import tests.plugins.velocity_kd_method as plugin
    from fewstep.compress.method_registry import register_method, unregister_method

    register_method(plugin.METHOD)
    yield plugin
    unregister_method("velocity-kd")


@pytest.mark.slow
def test_a_backend_added_as_one_file_exports_gates_and_runs(plain_backend, tmp_path, capsys):
    from fewstep.commands.dispatch import main
    from fewstep.runtime import Generator
    from tests.test_export import PROMPTS, _checkpoint, _export

    ckpt = _checkpoint(tmp_path, "euler-cfg")
    manifest = _export(ckpt, tmp_path / "b", to=("onnx", "ort-plain"), precision=("fp32",))
    engines = {e["id"]: e for e in manifest["engines"]}
    plain = engines["ort-plain-fp32"]
    assert plain["backend"] == "ort-plain" and plain["verified"] and plain["gates"]["parity"]["psnr_db"] >= 60
    seeds = [1, 2, 3]
    ours = Generator.from_bundle(tmp_path / "b", engine="ort-plain-fp32").generate(PROMPTS, seeds)
    onnx = Generator.from_bundle(tmp_path / "b", engine="onnx-fp32").generate(PROMPTS, seeds)
    assert np.abs(ours.astype(int) - onnx.astype(int)).max() <= 1
    assert Generator.from_bundle(tmp_path / "b").engine_entry.id == "onnx-fp32"  # priority 95 comes after ORT's
    assert main(["info", str(tmp_path / "b")]) == 0
    assert "ort-plain-fp32" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # the target is listed in `fewstep export --help`
        main(["export", "--help"])
    assert "ort-plain" in capsys.readouterr().out


@pytest.mark.slow
def test_a_method_added_as_one_file_is_a_cli_subcommand_that_trains(velocity_kd, tmp_path, capsys, tiny_teacher_files):
    import torch

    from fewstep.commands.dispatch import main
    from fewstep.models.loading import load_model
    from fewstep.models.text_encoders import load_text_encoder

    teacher, _, _ = tiny_teacher_files
    with pytest.raises(SystemExit):
        main(["distill", "velocity-kd", "--help"])
    text = capsys.readouterr().out
    assert "--sample-steps" in text and "--guidance" in text and "--pairs" not in text  # only what it reads
    args = ["distill", "velocity-kd", "--teacher", str(teacher), "--student", "same", "--dataset-size", "32",
            "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "1", "--ema-decay", "0", "--sample-every", "0",
            "--checkpoint-every", "40", "--sample-steps", "4", "--no-progress", "--threads", "1",
            "--verdict-prompts", "2"]  # fmt: skip
    assert main([*args, "--steps", "1", "--out", str(tmp_path / "s1")]) == 0
    assert main([*args, "--steps", "40", "--out", str(tmp_path / "s40")]) == 0
    t_model, t_spec = load_model(teacher)
    cond = load_text_encoder(t_spec["text_encoder"]).encode(["a red circle", "a blue square"])
    null = load_text_encoder(t_spec["text_encoder"]).null(2)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([0.3, 0.7])
    from fewstep.compress.methods.common import cfg_velocity

    target = cfg_velocity(t_model, x, t, cond, 3.0, null)

    def error(run: str) -> float:
        student, spec = load_model(tmp_path / run / "model.safetensors")
        assert spec["training"]["method"] == "velocity-kd" and spec["sampler"]["guidance"]["mode"] == "none"
        with torch.no_grad():
            return float((student(x, t, cond) - target).pow(2).mean())

    assert error("s40") < 0.7 * error("s1")  # it learns the guided field it was given


def test_the_cli_reference_page_is_the_parsers_own_help():
    """docs/reference/cli.md is generated from the parser; regenerate it with
    `python -m fewstep.commands.reference > docs/reference/cli.md` when a flag changes."""
    out = subprocess.run([sys.executable, "-m", "fewstep.commands.reference"], capture_output=True, text=True,
                         cwd=ROOT, check=True)  # fmt: skip
    assert out.stdout == (ROOT / "docs" / "reference" / "cli.md").read_text(encoding="utf-8"), (
        "docs/reference/cli.md is out of date: python -m fewstep.commands.reference > docs/reference/cli.md"
    )


def test_the_top_level_help_names_every_registered_method():
    """`fewstep --help` lists the methods without importing them (no torch): its line must follow the registry."""
    from fewstep.commands.dispatch import METHODS_LINE
    from fewstep.compress.method_registry import methods

    assert METHODS_LINE.split() == [m.name for m in methods()]


def test_a_bundle_manifest_written_before_the_typed_schema_reads_and_writes_back_unchanged():
    """A manifest exported by fewstep 0.1.0 before the schema existed (tests/data): read, typed, written back."""
    import json

    from fewstep.core.manifest import BundleError, Manifest

    data = json.loads((ROOT / "tests" / "data" / "manifest_v1_pixel.json").read_text())
    m = Manifest.from_json(data)
    assert m.to_json() == data
    assert m.engine_ids == ["onnx-fp32", "openvino-fp32", "openvino-int8"] and m.engine("openvino-int8").verified
    assert m.sampler.steps() == 4 and m.sampler.guidance.mode == "none" and m.image.shape == (3, 32, 32)
    assert [r.id for r in m.refused] == ["onnx-int8-nncf", "onnx-int8-ort"]
    with pytest.raises(BundleError, match=r"format 'fewstep-bundle/9'.*re-export"):
        Manifest.from_json({**data, "format": "fewstep-bundle/9"})
    broken = json.loads(json.dumps(data))
    broken["engines"][1]["files"] = {}
    with pytest.raises(BundleError, match=r"engines\[1\]\.files .*re-export"):
        Manifest.from_json(broken)


@pytest.mark.slow
def test_a_bundle_exported_by_fewstep_0_1_0_runs_and_gives_the_torch_pipelines_images(tmp_path):
    """tests/data/bundle_v1_sd (written by 0.1.0 for the seeded tiny SD pipeline) loads with today's runtime, and
    today's torch pipeline of the same pipeline makes the same images from the same prompts and seeds."""
    import shutil

    from fewstep.commands.dispatch import main
    from fewstep.models.pipeline import TorchPipeline
    from fewstep.runtime import Generator
    from fewstep.testing.tiny_pipelines import tiny_sd_pipeline

    bundle = tmp_path / "bundle"
    shutil.copytree(ROOT / "tests" / "data" / "bundle_v1_sd", bundle)
    gen = Generator.from_bundle(bundle)
    assert gen.manifest.created_by["fewstep"] == "0.1.0" and gen.engine_entry.id == "onnx-fp32"
    prompts, seeds = ["a red circle", "a blue square on a white background"], [7, 8]
    got = gen.generate(prompts, seeds)
    ref = TorchPipeline.from_checkpoint(tiny_sd_pipeline(tmp_path / "pipe")).generate(prompts, seeds)
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    assert main(["info", str(bundle), "--verify"]) == 0
