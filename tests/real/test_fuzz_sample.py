"""A small fixed-seed sample of the fuzz campaign (fuzz/run-campaign) on real QEMU 7.2 cores.

Ten damaged copies of an idle daemon's gcore and of the 2019 race's kernel crash core (bytes
flipped, words zeroed, pointers swapped or made wild inside writable mappings, bytes the
healthy report read changed, cuts at the notes, the headers and segment boundaries, a wrong
binary) go through chardev-postmortem and every read-only `qemu` command.  The campaign's
oracle (fuzz/campaign.py) must find nothing: no traceback, no gdb crash, no run past the
timeout, no refusal of an analysable core, no complete: true over damaged bytes that changed
a conclusion, no error finding made of damage.
"""
import json
import subprocess

import pytest

import support
from support.paths import REPO_ROOT

pytestmark = pytest.mark.real

CAMPAIGN = REPO_ROOT / "fuzz" / "run-campaign"
SEED = 3
CORES = 10


def test_fixed_seed_sample_finds_nothing(tmp_path):
    support.require_build("7.2", "fixed")
    support.require_build("7.2", "reverted")
    summary_path = tmp_path / "summary.json"
    done = subprocess.run(["/usr/bin/python3", str(CAMPAIGN), "--cores", str(CORES),
                           "--seed", str(SEED), "--work", str(tmp_path), "--timeout", "60",
                           "--out", str(summary_path)],
                          capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    summary = json.loads(summary_path.read_text())
    assert summary["cores"] == CORES, done.stdout + done.stderr
    assert summary["failing_cores"] == 0, json.dumps(summary["failing"], indent=1)[:6000]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    kinds = set(summary["by_mutation"])
    assert len(kinds) >= 3, kinds           # the sample mixes mutation kinds
