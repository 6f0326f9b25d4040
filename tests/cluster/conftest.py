"""The cluster suite shares the provisioning tests' MQTT probes (tests/provisioning/prov_helpers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent / "provisioning"))
