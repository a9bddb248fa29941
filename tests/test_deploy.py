"""The example deployment in deploy/: the systemd unit passes `systemd-analyze verify`, and the commands the unit
and the container image run are ones `fewstep serve` accepts (flags parse, access checks pass), with the models
file they name in the format the server reads. Building the image needs a Docker daemon and its base image, which
this test does not assume."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fewstep.commands import serve as serve_command
from fewstep.commands.dispatch import build_parser
from fewstep.runtime.model_pool import read_models_file

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _serve_args(argv: list[str]):
    assert Path(argv[0]).name == "fewstep" and argv[1] == "serve", argv
    return build_parser(["serve"]).parse_args(["serve", *argv[2:]])


def _unit_exec_start() -> list[str]:
    text = (DEPLOY / "fewstep-serve.service").read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_the_systemd_unit_verifies(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    fewstep = Path(sys.executable).with_name("fewstep")  # the unit's /opt/fewstep/bin/fewstep, installed here
    unit = tmp_path / "fewstep-serve.service"
    unit.write_text((DEPLOY / "fewstep-serve.service").read_text().replace("/opt/fewstep/bin/fewstep", str(fewstep)))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr  # warnings (a bad value) fail it too


def test_the_units_and_the_images_commands_are_accepted_by_fewstep_serve():
    args = _serve_args(_unit_exec_start())
    assert args.models == "/etc/fewstep/models.yaml" and args.host == "0.0.0.0" and args.tls_cert
    no_tls_files = argparse.Namespace(**{**vars(args), "tls_cert": None, "tls_key": None})  # not on this machine
    serve_command.check_access(no_tls_files, keys=object())  # type: ignore[arg-type]  # a public host with keys
    docker = (DEPLOY / "Dockerfile").read_text()
    entry = next(ln for ln in docker.splitlines() if ln.startswith("ENTRYPOINT"))
    cmd = docker[docker.index("\nCMD ") + 5 :].replace("\\\n", " ").split("\n")[0]

    argv = json.loads(entry.removeprefix("ENTRYPOINT").strip()) + json.loads(cmd)
    args = _serve_args(argv)
    assert args.models == "/bundles/models.yaml" and args.api_key_file == "/run/secrets/fewstep_keys"
    with pytest.raises(Exception, match="would let anyone"):  # without its key file the image's command refuses
        serve_command.check_access(args, keys=None)


def test_the_image_installs_the_runtime_only_and_copies_what_exists():
    docker = (DEPLOY / "Dockerfile").read_text()
    install = next(ln for ln in docker.splitlines() if "pip install" in ln)
    assert '".[runtime,openvino,serve]"' in install and "torch" not in install
    root = DEPLOY.parent
    for line in docker.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (root / src).exists(), f"the Dockerfile copies {src}, which is not in the repository"


def test_the_example_models_file_parses():
    models = read_models_file(DEPLOY / "models.yaml")
    assert [m.name for m in models.models] == ["prog4", "sd15-lcm"] and models.memory_budget_gb == 6
    assert models.models[1].engine == "openvino-bf16" and models.models[1].preload
