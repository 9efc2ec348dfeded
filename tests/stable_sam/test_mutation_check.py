"""scripts/mutation_check.py: its list still applies to the code, covers the model, data,
training and evaluation packages, and its harness tells a caught bug from a missed one. (The
full run takes about ten minutes and is not part of the suite; its result is reported with the
change that adds mutations.)"""
import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("mutation_check",
                                                  ROOT / "scripts" / "mutation_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_every_mutation_applies_to_the_current_code(script):
    assert script.verify() == []
    assert all(m.old != m.new for m in script.MUTATIONS)
    packages = {m.path.split("/")[1] for m in script.MUTATIONS}
    assert {"plugins", "families", "data", "training", "evaluation"} <= packages


def test_verify_reports_a_stale_target(script):
    stale = dataclasses.replace(script.MUTATIONS[0], old="text that is nowhere")
    assert script.verify([stale]) == [f"{stale.name}: {stale.path} holds the target text 0 "
                                      f"times, not once"]


def test_the_harness_tells_caught_from_missed(script, tmp_path):
    script._copy_tree(tmp_path)
    planted = next(m for m in script.MUTATIONS if m.name == "default_twelve_epochs")
    test = planted.tests[0] + "::test_defaults_follow_the_paper"
    assert script.run_one(dataclasses.replace(planted, tests=(test,)), tmp_path, 300)[0] == "caught"
    harmless = dataclasses.replace(planted, new=planted.old, tests=(test,))
    assert script.run_one(harmless, tmp_path, 300)[0] == "MISSED"
    # the copy is restored after each run
    assert (tmp_path / planted.path).read_text() == (ROOT / planted.path).read_text()
