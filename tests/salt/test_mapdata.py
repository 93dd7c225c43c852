"""template-formula's ``_mapdata`` check: for each flavour, ``state.apply sqlgate._mapdata``
writes the merged settings of map.jinja (defaults, OS maps, flavour, pillar), and they must be
those of the committed golden file, ``tests/salt/golden/mapdata-<flavour>.yaml``.

The pillar is ``pillar/pillar.example`` without its ``lookup`` (which would force one flavour)
and with fixed fake secrets and TLS texts, which the dump hides. After an intended change of
the settings, regenerate the golden files and review their diff::

    SQLGATE_REGOLD=1 .venv/bin/python -m pytest tests/salt/test_mapdata.py
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest
import yaml

from cluster.state import PROJECT_ROOT
from tests.salt.saltcall import FLAVOURS, SaltCall, write_pillar

GOLDEN = Path(__file__).parent / "golden"
PILLAR_EXAMPLE = PROJECT_ROOT / "pillar" / "pillar.example"
REGOLD = os.environ.get("SQLGATE_REGOLD") == "1"
FAKE_SECRETS = {"repl_password": "fake-repl-password",
                "app_read_password": "fake-app-read-password",
                "app_write_password": "fake-app-write-password",
                "app_admin_password": "fake-app-admin-password",
                "monitor_password": "fake-monitor-password", "sb_password": "fake-sb-password",
                "exporter_password": "fake-exporter-password",
                "ratestore_password": "fake-ratestore-password"}
FAKE_TLS = {"ca": "fake-ca-certificate", "cert": "fake-host-certificate", "key": "fake-host-key",
            "gatekeeper_public": {"cert": "fake-public-certificate", "key": "fake-public-key"}}


def golden_pillar() -> dict:
    pillar = yaml.safe_load(PILLAR_EXAMPLE.read_text())
    pillar["sqlgate"].pop("lookup")
    pillar["sqlgate"]["secrets"] = dict(FAKE_SECRETS)
    pillar["sqlgate"]["tls"] = dict(FAKE_TLS)
    return pillar


def dump_mapdata(flavour: str, root: Path) -> str:
    call = SaltCall(root, FLAVOURS[flavour])
    write_pillar(call.pillar_dir, golden_pillar())
    output = root / "mapdata.yaml"
    ret = call.run("proxy", "state.apply", "sqlgate._mapdata",
                   sqlgate_mapdata_file=str(output))
    (state,) = ret.values()
    assert state["result"] is True, state
    assert output.stat().st_mode & 0o777 == 0o600
    return output.read_text()


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_mapdata_matches_the_golden_file(flavour, tmp_path):
    text = dump_mapdata(flavour, tmp_path)
    for secret in [*FAKE_SECRETS.values(), *FAKE_TLS["gatekeeper_public"].values(),
                   *(v for v in FAKE_TLS.values() if isinstance(v, str))]:
        assert secret not in text
    values = yaml.safe_load(text)["values"]
    assert values["secrets"] == dict.fromkeys(FAKE_SECRETS, "<hidden>")
    assert values["tls"] == {"dir": "/etc/sqlgate/tls", "ca": "<hidden>", "cert": "<hidden>",
                             "key": "<hidden>", "gatekeeper_public": {"cert": "<hidden>",
                                                                     "key": "<hidden>"}}
    assert values["db"]["flavour"] == flavour
    assert values["service_manager"] == FLAVOURS[flavour].service_manager

    golden = GOLDEN / f"mapdata-{flavour}.yaml"
    if REGOLD:
        golden.write_text(text)
        return
    assert golden.exists(), f"no {golden}: run with SQLGATE_REGOLD=1 to write it"
    expected = golden.read_text()
    diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                        str(golden), "rendered now"))
    assert yaml.safe_load(text) == yaml.safe_load(expected), (
        f"the merged settings changed; if that is intended, regenerate with "
        f"SQLGATE_REGOLD=1 and review:\n{diff}")
    assert text == expected, diff
