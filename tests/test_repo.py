"""Repository contract: layout, the README's commands, CI, and the kernels/ -> vitzoo.kernels mapping."""
import ast
import os
import re

import vitzoo.kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP_LEVEL = {"pyproject.toml", "README.md", "vitzoo", "kernels", "configs", "tools", "tests", "model_cards", ".ci"}


def _readme_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)


def test_top_level_layout():
    tracked = {p for p in os.listdir(ROOT) if not p.startswith(".") or p == ".ci"}
    missing = TOP_LEVEL - tracked
    assert not missing, f"missing top-level entries: {missing}"
    extra = {p for p in tracked - TOP_LEVEL if p not in {"runs", "build", "dist"} and not p.endswith(".egg-info")}
    assert not extra, f"unexpected top-level entries: {extra}"


def test_ci_runs_the_readme_test_command_verbatim():
    commands = _readme_commands()
    test_cmd = [c for c in commands if "pytest" in c]
    assert len(test_cmd) == 1, commands
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert test_cmd[0] in ci.splitlines()


def test_readme_quickstart_command_names_existing_files():
    main = [c for c in _readme_commands() if "tools/train.py" in c]
    assert len(main) == 1
    config = re.search(r"--config (\S+)", main[0]).group(1)
    assert os.path.isfile(os.path.join(ROOT, config))


def test_kernels_install_as_vitzoo_kernels_and_know_nothing_of_models():
    assert os.path.realpath(os.path.dirname(vitzoo.kernels.__file__)) == os.path.realpath(os.path.join(ROOT, "kernels"))
    for name in os.listdir(os.path.join(ROOT, "kernels")):
        if not name.endswith(".py") or name.startswith(("bench", "gpu_check", "_competitor")):
            continue  # benchmarks, GPU checks and competitor wrappers use the op layer and timm on purpose
        tree = ast.parse(open(os.path.join(ROOT, "kernels", name)).read())
        for node in ast.walk(tree):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            for mod in mods:
                assert not mod.startswith(("vitzoo.models", "vitzoo.ops", "timm")), f"{name} imports {mod}"
