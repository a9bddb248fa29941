"""Hostile and broken inputs through the one `fewstep` command: each gets exit 2 and ONE line naming the problem,
no traceback, nothing executed, no output written. The catalogue's size is the README's figure."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewstep.cli import main
from fewstep.models.loading import save_model
from fewstep.models.presets import get_preset
from fewstep.models.unet_flow import build_unet_flow
from tests.conftest import tiny_spec

pytest.importorskip("onnxscript", reason="the bundle cases export an ONNX engine: pip install 'fewstep[export]'")


class Evil:
    """Unpickling this runs code (writes a marker file): fewstep must never do it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """A valid checkpoint and a valid one-engine bundle, copied and broken per case."""
    from fewstep.export.bundle import BundleExport
    from fewstep.export.config import ExportConfig

    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    unet = get_preset("student-xs").unet
    ckpt = root / "model.safetensors"
    save_model(ckpt, build_unet_flow(unet), tiny_spec(unet, name="xs"))
    cfg = ExportConfig(to=("onnx",), precision=("fp32",), parity_prompts=1, speed_gate=False)
    BundleExport(str(ckpt), root / "bundle", cfg, "test", log=lambda _m: None).run()
    return {"ckpt": ckpt, "bundle": root / "bundle", "unet": unet}


def _gen(model, *extra) -> list[str]:
    return ["generate", str(model), "--prompt", "a red circle", "--seeds", "0", "--steps", "1", *extra]


def _state_with(fx, change) -> dict:
    state = build_unet_flow(fx["unet"]).state_dict()
    change(state)
    return state


def _save_raw(path: Path, fx, state: dict) -> Path:
    from fewstep.models.checkpoint import load_tensors, save_tensors

    save_tensors(path, state, load_tensors(fx["ckpt"])[1])
    return path


def _bundle(tmp, fx, edit=None, engine_bytes=None) -> Path:
    b = tmp / "bundle"
    shutil.copytree(fx["bundle"], b)
    if edit:
        m = json.loads((b / "manifest.json").read_text())
        edit(m)
        (b / "manifest.json").write_text(json.dumps(m))
    if engine_bytes is not None:
        engine = next(b.glob("denoiser*.onnx"))
        engine.write_bytes(engine_bytes(engine.read_bytes()))
    return b


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height (a decompression bomb's calling card)."""
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data)))  # fmt: skip
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _folder(tmp, images: dict[str, bytes | None], lines: list[dict]) -> Path:
    d = tmp / "images"
    d.mkdir()
    for name, data in images.items():
        if data is None:
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / name)
        else:
            (d / name).write_bytes(data)
    (d / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return d


def _teach(folder) -> list[str]:
    return ["train-teacher", "--dataset", "imagefolder", "--data-path", str(folder), "--preset", "student-xs",
            "--steps", "1", "--dataset-size", "2", "--batch-size", "2", "--no-progress",
            "--out", str(folder.parent / "run")]  # fmt: skip


def _pickle_with_code(tmp, fx):
    torch.save({"weights": Evil(str(tmp / "PWNED"))}, tmp / "evil.pt")
    return _gen(tmp / "evil.pt")


def _pickle_as_safetensors(tmp, fx):
    torch.save({"w": Evil(str(tmp / "PWNED"))}, tmp / "evil.safetensors")
    return _gen(tmp / "evil.safetensors")


def _pickle_as_lora_base(tmp, fx):
    torch.save({"w": Evil(str(tmp / "PWNED"))}, tmp / "evil.bin")
    return ["distill", "guidance", "--teacher", str(tmp / "evil.bin"), "--out", str(tmp / "out"), "--steps", "1"]


def _truncated(tmp, fx):
    data = fx["ckpt"].read_bytes()
    (tmp / "cut.safetensors").write_bytes(data[: len(data) // 2])
    return _gen(tmp / "cut.safetensors")


def _garbage(tmp, fx):
    (tmp / "noise.safetensors").write_bytes(os.urandom(4096))
    return _gen(tmp / "noise.safetensors")


def _empty(tmp, fx):
    (tmp / "empty.safetensors").write_bytes(b"")
    return _gen(tmp / "empty.safetensors")


def _foreign_safetensors(tmp, fx):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp / "foreign.safetensors"))
    return _gen(tmp / "foreign.safetensors")


def _wrong_shapes(tmp, fx):
    def change(s):
        s["unet.conv_in.weight"] = torch.zeros(3, 3, 3, 3)

    return _gen(_save_raw(tmp / "shapes.safetensors", fx, _state_with(fx, change)))


def _wrong_dtypes(tmp, fx):
    def change(s):
        s["unet.conv_in.weight"] = s["unet.conv_in.weight"].to(torch.int64)

    return _gen(_save_raw(tmp / "dtypes.safetensors", fx, _state_with(fx, change)))


def _nan_weights(tmp, fx):
    def change(s):
        s["unet.conv_in.weight"][0] = float("nan")

    return _gen(_save_raw(tmp / "nan.safetensors", fx, _state_with(fx, change)))


def _inf_weights(tmp, fx):
    def change(s):
        s["unet.conv_out.bias"][0] = float("inf")

    return _gen(_save_raw(tmp / "inf.safetensors", fx, _state_with(fx, change)))


def _missing_tensors(tmp, fx):
    def change(s):
        del s["unet.conv_in.weight"]

    return _gen(_save_raw(tmp / "missing.safetensors", fx, _state_with(fx, change)))


def _corrupt_metadata(tmp, fx):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp / "meta.safetensors"), metadata={"fewstep": "{not json"})
    return _gen(tmp / "meta.safetensors")


def _tampered_engine(tmp, fx):
    return _gen(_bundle(tmp, fx, engine_bytes=lambda b: b[:-10] + b"0123456789"))


def _truncated_engine(tmp, fx):
    return _gen(_bundle(tmp, fx, engine_bytes=lambda b: b[: len(b) // 3]))


def _unknown_format(tmp, fx):
    return _gen(_bundle(tmp, fx, edit=lambda m: m.update(format="fewstep-bundle/99")))


def _escaping_path(tmp, fx):
    def edit(m):
        e = m["engines"][0]
        sha = next(iter(e["files"].values()))
        e["files"] = {"../../etc/passwd": sha}

    return _gen(_bundle(tmp, fx, edit=edit))


def _absolute_path(tmp, fx):
    def edit(m):
        e = m["engines"][0]
        e["files"] = {"/etc/passwd": next(iter(e["files"].values()))}

    return _gen(_bundle(tmp, fx, edit=edit))


def _manifest_not_json(tmp, fx):
    b = _bundle(tmp, fx)
    (b / "manifest.json").write_text("{ this is not json")
    return _gen(b)


def _manifest_wrong_types(tmp, fx):
    return _gen(_bundle(tmp, fx, edit=lambda m: m.update(engines="all of them")))


def _manifest_missing_keys(tmp, fx):
    return _gen(_bundle(tmp, fx, edit=lambda m: m.pop("sampler")))


def _incomplete_bundle(tmp, fx):
    b = _bundle(tmp, fx)
    (b / ".export-in-progress").write_text("fewstep export")
    return _gen(b)


def _corrupt_image(tmp, fx):
    return _teach(_folder(tmp, {"a.png": None, "b.png": b"\x89PNG\r\n\x1a\nnot an image"},
                          [{"file_name": "a.png", "text": "x"}, {"file_name": "b.png", "text": "y"}]))  # fmt: skip


def _huge_image(tmp, fx):
    return _teach(_folder(tmp, {"a.png": None, "bomb.png": _png_claiming(60000, 60000)},
                          [{"file_name": "a.png", "text": "x"}, {"file_name": "bomb.png", "text": "y"}]))  # fmt: skip


def _missing_caption(tmp, fx):
    return _teach(_folder(tmp, {"a.png": None, "b.png": None},
                          [{"file_name": "a.png", "text": "x"}, {"file_name": "b.png"}]))  # fmt: skip


def _no_metadata(tmp, fx):
    d = _folder(tmp, {"a.png": None}, [])
    (d / "metadata.jsonl").unlink()
    return _teach(d)


def _megabyte_prompt(tmp, fx):
    return _gen(fx["ckpt"], "--prompt", "x " * 500_000)


def _megabyte_prompt_on_engine(tmp, fx):
    return _gen(fx["bundle"], "--prompt", "a" * 1_000_000)  # one "word": few tokens, still refused by its size


def _non_utf8_prompts(tmp, fx):
    (tmp / "p.txt").write_bytes(b"a red circle\n\xff\xfe\xc3(\n")
    return ["generate", str(fx["ckpt"]), "--prompts-file", str(tmp / "p.txt"), "--steps", "1"]


def _empty_prompts(tmp, fx):
    (tmp / "p.txt").write_text("\n\n")
    return ["generate", str(fx["ckpt"]), "--prompts-file", str(tmp / "p.txt"), "--steps", "1"]


def _yaml_with_code(tmp, fx):
    (tmp / "c.yaml").write_text(f"steps: !!python/object/apply:os.system ['touch {tmp / 'PWNED'}']\n")
    return ["train-teacher", "--config", str(tmp / "c.yaml"), "--out", str(tmp / "out")]


def _yaml_wrong_type(tmp, fx):
    (tmp / "c.yaml").write_text("steps: [1, 2]\n")
    return ["train-teacher", "--config", str(tmp / "c.yaml"), "--out", str(tmp / "out")]


def _flags(*argv):
    return lambda tmp, fx: [a.replace("CKPT", str(fx["ckpt"])).replace("BUNDLE", str(fx["bundle"]))
                            .replace("TMP", str(tmp)) for a in argv]  # fmt: skip


CASES = [
    ("pickle with code (.pt)", _pickle_with_code, "looks like a pickle"),
    ("pickle named .safetensors", _pickle_as_safetensors, "looks like a pickle"),
    ("pickle with code as a teacher", _pickle_as_lora_base, "not a readable safetensors"),
    ("truncated safetensors", _truncated, "truncated or corrupt"),
    ("random bytes", _garbage, "not a readable safetensors"),
    ("empty file", _empty, "not a readable safetensors"),
    ("foreign safetensors", _foreign_safetensors, "not written by fewstep"),
    ("corrupt metadata", _corrupt_metadata, "corrupt metadata"),
    ("wrong tensor shapes", _wrong_shapes, "wrong shapes"),
    ("wrong tensor dtypes", _wrong_dtypes, "wrong dtypes"),
    ("missing tensors", _missing_tensors, "missing"),
    ("NaN weights", _nan_weights, "NaN/Inf"),
    ("Inf weights", _inf_weights, "NaN/Inf"),
    ("tampered engine file", _tampered_engine, "does not match its sha256"),
    ("truncated engine file", _truncated_engine, "does not match its sha256"),
    ("unknown bundle format", _unknown_format, "this fewstep reads"),
    ("path escaping the bundle", _escaping_path, "outside the bundle"),
    ("absolute path in the manifest", _absolute_path, "outside the bundle"),
    ("manifest not JSON", _manifest_not_json, "not valid JSON"),
    ("manifest with wrong types", _manifest_wrong_types, "manifest"),
    ("manifest missing a section", _manifest_missing_keys, "manifest"),
    ("incomplete bundle", _incomplete_bundle, "incomplete"),
    ("corrupt image in a folder", _corrupt_image, "not a readable image"),
    ("decompression bomb image", _huge_image, "too large"),
    ("missing caption", _missing_caption, "empty or missing 'text'"),
    ("image folder without metadata", _no_metadata, "metadata.jsonl is missing"),
    ("1 MB prompt (torch)", _megabyte_prompt, "characters; at most"),
    ("1 MB prompt (engine)", _megabyte_prompt_on_engine, "characters; at most"),
    ("non-UTF-8 prompts file", _non_utf8_prompts, "not UTF-8"),
    ("prompts file without prompts", _empty_prompts, "at least one --prompt"),
    ("YAML that would run code", _yaml_with_code, "config"),
    ("YAML field of the wrong type", _yaml_wrong_type, "steps"),
    ("steps 0", _flags("generate", "CKPT", "--prompt", "x", "--steps", "0"), "steps must be"),
    ("steps 10^9", _flags("generate", "CKPT", "--prompt", "x", "--steps", "1000000000"), "steps must be"),
    ("guidance -1", _flags("generate", "CKPT", "--prompt", "x", "--guidance", "-1"), "guidance must be"),
    ("guidance nan", _flags("generate", "CKPT", "--prompt", "x", "--guidance", "nan"), "guidance must be"),
    ("guidance inf (engine)", _flags("generate", "BUNDLE", "--prompt", "x", "--guidance", "inf"), "guidance must be"),
    ("seed -1", _flags("generate", "CKPT", "--prompt", "x", "--seeds", "-1"), "seeds must be"),
    ("seed 2^64", _flags("generate", "CKPT", "--prompt", "x", "--seeds", str(2**64)), "seeds must be"),
    ("steps 0 (engine)", _flags("generate", "BUNDLE", "--prompt", "x", "--steps", "0"), "steps must be"),
    ("batch size 0", _flags("train-teacher", "--batch-size", "0", "--out", "TMP/o"), "batch_size"),
    (
        "batch size 10^9",
        _flags("distill", "guidance", "--teacher", "CKPT", "--batch-size", "1000000000", "--out", "TMP/o"),
        "'batch_size' (--batch-size) must be <= 65536",
    ),
    ("pairs n 0", _flags("pairs", "--teacher", "CKPT", "--n", "0", "--out", "TMP/o"), "'n' (--n) must be >= 1"),
    ("lr negative", _flags("train-teacher", "--lr", "-1", "--out", "TMP/o"), "lr"),
    ("threads 0", _flags("generate", "CKPT", "--prompt", "x", "--threads", "0"), "threads"),
    ("threads -1 (serve)", _flags("serve", "BUNDLE", "--threads", "-1"), "threads"),
    ("port out of range (serve)", _flags("serve", "BUNDLE", "--port", "70000"), "port"),
    ("bench batch 0", _flags("bench", "BUNDLE", "--batch-sizes", "0"), "batch"),
]


@pytest.mark.parametrize(("build", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_gets_one_clear_line(build, message, fx, tmp_path, capsys):
    argv = build(tmp_path, fx)
    out_png = tmp_path / "grid.png"
    if argv[0] == "generate":
        argv += ["--out", str(out_png)]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message.lower() in err.lower(), err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert not (tmp_path / "PWNED").exists(), "unpickling or YAML ran code"
    assert not out_png.exists()


def test_catalogue_size_is_the_readmes():
    assert len(CASES) == 48  # the README says 48
