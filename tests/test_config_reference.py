"""docs/configuration.md is generated from ConsulSpawner's traits (scripts/config-reference.py)
and must match them: a trait added, removed or re-documented without regenerating fails here."""

import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "config-reference.py"
DOC = ROOT / "docs" / "configuration.md"


def test_configuration_reference_is_up_to_date():
    expected = runpy.run_path(str(SCRIPT))["reference"]()
    assert DOC.read_text() == expected, (
        "docs/configuration.md is out of date with ConsulSpawner's traits: run "
        "`python3 scripts/config-reference.py > docs/configuration.md` and commit it"
    )


def test_reference_names_every_own_trait_with_its_help():
    from dockerspawner import DockerSpawner

    from consulspawner import ConsulSpawner

    text = DOC.read_text()
    own = set(ConsulSpawner.class_traits(config=True)) - set(DockerSpawner.class_traits(config=True))
    assert own, "ConsulSpawner has no configurable traits of its own?"
    for name in own:
        assert f"\n## {name}\n" in text, name
        summary = ConsulSpawner.class_traits()[name].help.strip().splitlines()[0]
        assert summary in text, name


def test_script_prints_the_reference():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True)
    assert result.stdout == DOC.read_text()
