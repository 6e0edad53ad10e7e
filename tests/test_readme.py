"""The README's own-model section works when copied as written: no PYTHONPATH, no extra keys."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _own_model_files() -> tuple[dict[str, str], list[str]]:
    """The section's files (named by the last file path quoted before each block) and its shell commands."""
    text = README.read_text()
    section = text[text.index("## Forecasting Model Search on your own model"):text.index("### Parallel trials on Ray")]
    files, commands = {}, []
    for m in re.finditer(r"```(\w+)\n(.*?)```", section, flags=re.S):
        lang, body = m.group(1), m.group(2)
        if lang == "bash":
            commands += [line.split("#")[0].strip() for line in body.splitlines() if line.split("#")[0].strip()]
            continue
        before = section[:m.start()].rstrip().rsplit("\n\n", 1)[-1]
        names = [t for t in re.findall(r"`([^`\s]+\.(?:py|yaml))`", before) if not t.startswith("recipes/")]
        assert names, f"no file name before the {lang} block starting {body[:40]!r}"
        files[names[-1]] = body
    return files, commands


def test_readme_own_model_section_runs_as_written(tmp_path) -> None:
    files, commands = _own_model_files()
    assert set(files) == {"mypkg/models.py", "my_hub/hub.yaml", "make_hub.py", "tune.py", "my_recipe.yaml",
                          "record.py"}
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    bin_dir = Path(sys.executable).parent

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-4000:])
        return done

    for script in ("make_hub.py", "record.py", "tune.py"):
        done = run([sys.executable, script])
    assert "Not learning from recorded trial" not in done.stderr  # the recorded run was used
    best = tmp_path / "best"
    assert (best / "weights.safetensors").is_file() and (best / "config.yaml").is_file()
    assert "mlp-" in done.stdout
    assert commands[0].startswith("fms-lightning tune my_recipe.yaml")
    outputs = [run([str(bin_dir / shlex.split(c)[0]), *shlex.split(c)[1:]]).stdout for c in commands]
    assert "Best: val_acc=" in outputs[0] and "budget used 4 epochs by the tuner" in outputs[1]
    assert "exported trial" in outputs[2] and (tmp_path / "best_cli" / "weights.safetensors").is_file()
    for study in ("runs/my_study", "runs/my_cli_study"):
        assert not list((tmp_path / study).glob("study.sqlite-*"))
