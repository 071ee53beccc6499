import subprocess
import sys

HEAVY = ("torch", "vllm", "transformers", "sentence_transformers", "datasets", "ray")


def test_import_factory_stays_light():
    code = (
        "import sys, factory, factory.api, factory.cli, factory.runner, factory.store, factory.export, recipes\n"
        "from recipes import all_recipes; all_recipes()\n"
        "from factory.teachers import build_teacher; build_teacher('openai:m@http://127.0.0.1:9/v1')\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_cli_command_is_documented_in_readme():
    from pathlib import Path

    from factory.cli import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():  # type: ignore[union-attr]
        assert f"factory {name}" in readme, f"`factory {name}` is not documented in README.md"
        for a in parser._actions:  # commands with their own subcommands: `factory cache stats` ...
            if isinstance(a.choices, dict) and a.dest.endswith("command"):
                for inner in a.choices:
                    assert f"factory {name} {inner}" in readme, f"`factory {name} {inner}` is not documented"
