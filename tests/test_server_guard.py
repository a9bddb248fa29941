"""The server's guards without a server: strict JSON, API keys, the CLI's access checks, and files that are not
regular files (a FIFO would block a read forever)."""

from __future__ import annotations

import argparse
import json
import os
import threading

import pytest

from fewstep.core.errors import UserError
from fewstep.core.fsio import NotARegularFileError, read_regular_file, require_regular_file, sha256_of
from fewstep.core.prompts import read_prompts_file
from fewstep.runtime.server_guard import MAX_JSON_DEPTH, ApiKeys, BadJson, check_json, json_depth

KEY = "k" * 24


@pytest.mark.parametrize(
    "body, reason",
    [
        (b'{"prompt": "x", "guidance": NaN}', "NaN is not a number JSON allows"),
        (b'{"prompt": "x", "guidance": Infinity}', "Infinity is not a number JSON allows"),
        (b'{"prompt": "x", "guidance": -Infinity}', "-Infinity is not a number JSON allows"),
        (b'{"prompt": "x", "guidance": 1e400}', "too large for a number field"),
        (b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}", "5000 digits is too large"),
        (b"[" * 30_000 + b"]" * 30_000, f"nests deeper than {MAX_JSON_DEPTH}"),
        (b'{"prompt": ' + b'{"a": ' * 40 + b"1" + b"}" * 41, f"nests deeper than {MAX_JSON_DEPTH}"),
        (b"not json", "not valid JSON"),
        (b'{"prompt": "\xff"}', "not valid JSON"),
    ],
)
def test_json_a_number_field_must_not_carry_is_refused_with_its_reason(body, reason):
    with pytest.raises(BadJson, match=reason):
        check_json(body)


def test_json_that_requests_carry_passes_and_brackets_in_strings_do_not_count():
    check_json(b'{"prompt": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ \\" {{{{", "seed": 9223372036854775807, "guidance": 3.5}')
    assert json_depth(b'{"a": [1, {"b": "]]]]["}]}') == 3


def test_api_keys_parse_name_and_compare():
    keys = ApiKeys.parse(f"# team keys\nalice:{KEY}\n\nbob : {'b' * 20}\n", "keys.txt")
    assert keys.name_of(KEY) == "alice" and keys.name_of("b" * 20) == "bob"
    assert keys.name_of(KEY[:-1]) is None and keys.name_of("") is None and keys.name_of(KEY + "x") is None
    assert ApiKeys.load(None, {"FEWSTEP_API_KEYS": f"ci:{KEY},ops:{'o' * 16}"}).name_of("o" * 16) == "ops"
    assert ApiKeys.load(None, {}) is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("alice", "expected `name:key`"),
        (f"al ice:{KEY}", "expected `name:key`"),
        ("alice:short", "at least 16 characters"),
        (f"a:{KEY}\na:{KEY}x", "appears twice"),
        ("# only a comment\n", "has no keys"),
    ],
)
def test_bad_key_files_are_one_clear_error(text, message):
    with pytest.raises(ValueError, match=message):
        ApiKeys.parse(text, "keys.txt")


def _args(**kw) -> argparse.Namespace:
    base = {"host": "127.0.0.1", "tls_cert": None, "tls_key": None, "insecure": False, "cors_origin": []}
    return argparse.Namespace(**{**base, **kw})


def test_serve_refuses_a_public_address_without_keys_unless_told(tmp_path):
    from fewstep.commands.serve import check_access

    keys = ApiKeys.parse(f"a:{KEY}", "k")
    check_access(_args(), None)
    check_access(_args(host="::1"), None)
    for host in ("0.0.0.0", "192.168.1.5", "example.com"):
        with pytest.raises(UserError, match=f"--host {host} would let anyone"):
            check_access(_args(host=host), None)
        check_access(_args(host=host, insecure=True), None)
        check_access(_args(host=host), keys)
    with pytest.raises(UserError, match="--tls-cert and --tls-key go together"):
        check_access(_args(tls_cert="c.pem"), keys)
    with pytest.raises(FileNotFoundError, match="--tls-cert file"):
        check_access(_args(tls_cert=str(tmp_path / "c.pem"), tls_key=str(tmp_path / "k.pem")), keys)
    with pytest.raises(UserError, match="give an origin like"):
        check_access(_args(cors_origin=["app.example.com"]), keys)


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "engine.onnx"
    os.mkfifo(path)
    return path


def _within(seconds: float, fn) -> BaseException | None:
    """Run fn in a thread; fail the test (rather than hang the suite) if it blocks."""
    result: list[BaseException | None] = [None]

    def call() -> None:
        try:
            fn()
        except BaseException as e:  # handed back to the test
            result[0] = e

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "blocked on a special file"
    return result[0]


def test_special_files_are_refused_before_anything_reads_them(fifo, tmp_path):
    for fn in (lambda: sha256_of(fifo), lambda: read_prompts_file(fifo), lambda: ApiKeys.load(fifo)):
        e = _within(5, fn)
        assert isinstance(e, NotARegularFileError) and "is a named pipe (FIFO), not a regular file" in str(e)
    e = _within(5, lambda: read_prompts_file("/dev/zero"))  # a device never ends
    assert isinstance(e, NotARegularFileError) and "a character device" in str(e)
    with pytest.raises(NotARegularFileError, match="is a directory"):
        require_regular_file(tmp_path, "prompts file")
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * 2000)
    with pytest.raises(NotARegularFileError, match="2,000 bytes, more than the 1,000 allowed"):
        read_regular_file(big, 1000, "prompts file")


def test_a_million_line_prompts_file_is_refused_with_the_cap_named(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\n" * 1_000_000)
    with pytest.raises(ValueError, match="has 1,000,000 prompts, more than the 100,000 allowed"):
        read_prompts_file(path)
    assert len(read_prompts_file(path, max_prompts=1_000_000)) == 1_000_000


def test_generate_refuses_more_images_than_its_cap_before_any_work(tmp_path, capsys, fifo):
    from fewstep.cli import main

    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\n" * 5000)
    assert main(["generate", "shapes32-teacher", "--prompts-file", str(path), "--out", str(tmp_path / "g.png")]) == 2
    assert "has 5,000 prompts, more than the 4,096 allowed" in capsys.readouterr().err
    few = tmp_path / "few.txt"
    few.write_text("a red circle\n" * 2000)
    assert main(["generate", "shapes32-teacher", "--prompts-file", str(few), "--seeds", "0,1,2"]) == 2
    assert "2,000 prompt(s) x 3 seed(s) = 6,000 images, more than --max-images 4,096" in capsys.readouterr().err
    assert _within(5, lambda: main(["generate", "shapes32-teacher", "--prompts-file", str(fifo)])) is None
    assert "is a named pipe (FIFO)" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def _safetensors(path, header: bytes):
    import struct

    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0\0\0")
    return path


@pytest.mark.parametrize("command", ["info", "generate"])
def test_deeply_nested_safetensors_json_is_one_clear_line(tmp_path, capsys, command):
    from fewstep.cli import main

    deep = "[" * 5000 + "]" * 5000
    tensor = _safetensors(tmp_path / "tensor.safetensors", ('{"w": {"dtype": "F32", "shape": [1], '
                          f'"data_offsets": [0, 4], "x": {deep}}}}}').encode())  # fmt: skip
    meta = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                       "__metadata__": {"fewstep": '{"a": ' + deep + "}"}})  # fmt: skip
    metadata = _safetensors(tmp_path / "meta.safetensors", meta.encode())
    for path in (tensor, metadata):
        extra = ["--prompt", "x", "--out", str(tmp_path / "x.png")] if command == "generate" else []
        assert main([command, str(path), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err and str(path) in err, err
