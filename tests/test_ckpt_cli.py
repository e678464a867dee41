"""``python -m ckpt_convertor``: help, both directions end to end, errors as one line + exit 2,
and that only safetensors/JSON are read from the HF directory (no checkpoint code runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ckpt_testlib import assert_same_tensors, load_hf, write_hf

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ckpt_convertor", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_both_commands_and_their_options():
    top = _run("--help")
    assert top.returncode == 0 and "hf-to-megatron" in top.stdout and "megatron-to-hf" in top.stdout
    h2m = _run("hf-to-megatron", "--help").stdout
    for opt in ("--hf", "--out", "--tp", "--pp", "--vpp", "--dtype", "{bf16,fp16,fp32}"):
        assert opt in h2m
    m2h = _run("megatron-to-hf", "--help").stdout
    for opt in ("--megatron", "--out", "--config"):
        assert opt in m2h


def test_cli_round_trip_with_progress_and_cache_hit(tmp_path):
    hf = write_hf(tmp_path / "hf", shard_bytes=64 * 1024)
    r = _run("hf-to-megatron", "--hf", str(hf), "--out", str(tmp_path / "mg"), "--tp", "2", "--pp", "2")
    assert r.returncode == 0, r.stderr
    assert "hf->megatron" in r.stderr and "B/s" in r.stderr  # the tqdm bar with a byte rate
    assert "converted:" in r.stderr
    again = _run("hf-to-megatron", "--hf", str(hf), "--out", str(tmp_path / "mg"), "--tp", "2", "--pp", "2")
    assert again.returncode == 0 and "up to date:" in again.stderr
    assert "wrote" not in again.stderr
    back = _run("megatron-to-hf", "--megatron", str(tmp_path / "mg"), "--out", str(tmp_path / "back"))
    assert back.returncode == 0, back.stderr
    assert_same_tensors(load_hf(hf), load_hf(tmp_path / "back"))


def test_cli_error_is_one_line_naming_the_culprit_and_exit_2(tmp_path):
    hf = write_hf(tmp_path / "hf")
    r = _run("hf-to-megatron", "--hf", str(hf), "--out", str(tmp_path / "mg"), "--tp", "4")
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "num_key_value_heads=2 is not divisible by tensor parallel size 4" in errors[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "mg").exists()


_AUDIT = r"""
import sys, runpy
root = sys.argv.pop(1)
opened = []
def hook(event, args):
    if event == "open" and isinstance(args[0], str) and args[0].startswith(root):
        opened.append(args[0])
sys.addaudithook(hook)
try:
    sys.argv[0] = "ckpt_convertor"
    runpy.run_module("ckpt_convertor", run_name="__main__")
except SystemExit as e:
    code = e.code
print("OPENED", sorted(set(opened)), file=sys.stderr)
sys.exit(code)
"""


def test_only_safetensors_and_json_are_read_and_no_checkpoint_code_runs(tmp_path):
    hf = write_hf(tmp_path / "hf")
    marker = tmp_path / "code_ran"
    # checkpoint-provided code an unsafe loader would execute: a remote-code module and a pickle
    (hf / "modeling_openpangu_dense.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    import pickle

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (hf / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    (hf / "tokenizer.model").write_bytes(b"\x00sentencepiece-bytes")
    r = subprocess.run([sys.executable, "-c", _AUDIT, str(hf), "hf-to-megatron", "--hf", str(hf),
                        "--out", str(tmp_path / "mg"), "--no-progress"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    opened = eval(r.stderr.rsplit("OPENED ", 1)[1].strip())  # noqa: S307 - our own repr of a list of str
    interpreted = [p for p in opened if p.endswith((".json", ".safetensors"))]
    copied = sorted(Path(p).name for p in opened if p not in interpreted)
    # everything else is only byte-copied into hf_meta/ (metadata kept for megatron-to-hf), never parsed
    assert copied == ["modeling_openpangu_dense.py", "tokenizer.model"], copied
    assert not any(p.endswith(".bin") for p in opened)
    assert not marker.exists()
    assert not (tmp_path / "mg" / "hf_meta" / "pytorch_model.bin").exists()
    side = json.loads((tmp_path / "mg" / "rlinf_pangu_ckpt.json").read_text())
    assert side["tp"] == 1 and side["pp"] == 1


def test_conversion_does_not_import_torch_dynamo(tmp_path):
    # planning and the rank-file skeleton stay off torch.cat-on-meta and FakeTensorMode, which
    # import torch._dynamo (1.6 s of every conversion, measured with -X importtime)
    hf = write_hf(tmp_path / "hf")
    code = ("import sys, runpy\n"
            f"sys.argv = ['ckpt_convertor', 'hf-to-megatron', '--hf', {str(hf)!r}, '--out', {str(tmp_path / 'mg')!r},"
            " '--tp', '2', '--pp', '2', '--no-progress']\n"
            "try:\n    runpy.run_module('ckpt_convertor', run_name='__main__')\nexcept SystemExit as e:\n    assert not e.code, e\n"
            "print('torch._dynamo' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-1] == "False"
