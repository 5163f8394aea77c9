"""The ``fastreg`` command: info, bench pass-through, and argument errors."""
import contextlib
import io
import json

import pytest

import fastreg
from fastreg.cli.main import main


def run(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


def test_info_names_version_and_backends():
    code, text = run(["info"])
    assert code == 0
    assert f"fastreg {fastreg.__version__}" in text
    assert ", ".join(fastreg.available_backends()) in text


def test_bench_passes_arguments_through():
    code, text = run(["bench", "--ops", "warp", "--sizes", "tiny", "--repeat", "1", "--warmup", "1", "--no-peers", "--json"])
    rows = json.loads(text)
    assert code == 0 and rows and all(row["op"] == "warp" for row in rows)


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["register-everything"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
