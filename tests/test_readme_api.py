"""The README's "Python API" section runs as written: its bash, YAML and Python blocks, in order."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tvt.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def section_blocks(title: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block of the README section ``## <title>``, in order."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    body = text[start:end if end > 0 else None]
    return re.findall(r"^```(\w+)\n(.*?)^```", body, flags=re.S | re.M)


def run_bash(code: str) -> None:
    """Every ``tvt ...`` command line of the block, in-process through ``tvt.cli.main``."""
    for line in code.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            assert words[0] == "tvt", f"the README's Python API section runs only tvt commands, not {line!r}"
            assert main(words[1:]) == 0, f"`{line}` failed"


def write_yaml(code: str) -> None:
    """A YAML block starts with ``# <file name>: ...``; it is written to that file."""
    first = code.splitlines()[0]
    match = re.match(r"#\s*(\S+\.ya?ml)\b", first)
    assert match, f"a YAML block in the README's Python API section must name its file first, got {first!r}"
    Path(match.group(1)).write_text(code, encoding="utf-8")


def test_section_has_every_kind_of_block():
    kinds = [lang for lang, _ in section_blocks("Python API")]
    assert {"python", "bash", "yaml"} <= set(kinds)


def test_python_api_section_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for lang, code in section_blocks("Python API"):
        if lang == "bash":
            run_bash(code)
        elif lang == "yaml":
            write_yaml(code)
        elif lang == "python":
            exec(compile(code, f"README.md ({code.splitlines()[0]!r}...)", "exec"), namespace)
        else:
            pytest.fail(f"unexpected block language {lang!r} in the README's Python API section")
    out = capsys.readouterr().out
    # what the snippets print is what their comments say
    import torch
    import tvt

    assert tvt.__version__ in out
    assert f"{torch.Size([2, 10])} {torch.Size([2, 64])}" in out
    assert (tmp_path / "runs" / "tvt" / "checkpoint.pth").is_file()
    metrics = namespace["metrics"]
    assert {"mAP@all", "mAP@200", "P@100", "P@200"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("mAP@all", "mAP@200", "P@100", "P@200"))
    assert "'n_queries': 2, 'n_gallery': 6" in out
    hits = re.findall(r"^([123]) (-?[0-9.]+) (\S+)$", out, flags=re.M)
    assert [h[0] for h in hits] == ["1", "2", "3"]
    assert [float(h[1]) for h in hits] == sorted((float(h[1]) for h in hits), reverse=True)
    assert all((tmp_path / "data" / "synth" / "photo" / rel).is_file() for _, _, rel in hits)
