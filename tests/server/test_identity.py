"""A shard's identity: given, from the host name, or from DNS, and its data folder under it
(DNS names of compose replicas: tests/containers/test_scale_ps.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pscluster.config import Settings
from pscluster.server.identity import IdentityError, dns_name, resolve_identity


def test_a_given_id_names_the_shard_and_its_data_folder(tmp_path: Path) -> None:
    settings = Settings(shard_id="ps-7", shard_data_dir=tmp_path / "{shard_id}" / "shard")

    resolved = resolve_identity(settings)

    assert resolved.shard_id == "ps-7"
    assert resolved.shard_data_dir == tmp_path / "ps-7" / "shard"
    assert resolved.advertise == ""  # the address stays the operator's (or host:port)


def test_without_an_id_the_host_name_is_the_id() -> None:
    resolved = resolve_identity(Settings(shard_data_dir=Path("/var/lib/psc")))

    assert resolved.shard_id == socket.gethostname().split(".")[0]
    assert resolved.shard_data_dir == Path("/var/lib/psc")


def test_an_address_dns_has_no_name_for_says_what_to_set() -> None:
    # 192.0.2.0/24 is reserved for documentation: no resolver has a PTR record for it
    with pytest.raises(IdentityError, match="set PSC_SHARD_ID"):
        dns_name("192.0.2.55")
