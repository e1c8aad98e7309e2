"""Who a shard is: the stable id it registers under, the address it is dialled at, its folder.

A shard's identity has to survive a restart and rescheduling, because its write-ahead log
and checkpoints are filed under it and the coordinator's layouts name it. Where it comes from
depends on how the shard is run:

- ``PSC_SHARD_ID`` given: that.
- ``PSC_SHARD_ID_FROM=hostname`` (the default): the host name's first label. A StatefulSet pod
  is "ps-2" for life; a compose service given ``hostname:`` keeps it too.
- ``PSC_SHARD_ID_FROM=reverse-dns``: the name the network's DNS gives this shard's own
  address. Replicas of one compose service (``docker compose up --scale ps=3``) share one
  definition, so no per-replica setting exists; but Docker's DNS names each replica by its
  container, "pscluster-ps-2", whose number compose keeps through restarts and recreation,
  and whose highest numbers are what ``--scale`` removes first. The same name is then the
  address to advertise: other containers resolve it.

``PSC_SHARD_DATA_DIR`` may contain ``{shard_id}``: replicas sharing one volume each keep their
state in their own folder of it.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import dns.exception
import dns.resolver
import dns.reversename

from pscluster.config import Settings

log = logging.getLogger(__name__)

_ANY_INTERFACE = {"", "0.0.0.0", "::", "[::]"}
# Docker's DNS answers at once; one that does not is not going to, and the shard says so.
_LOOKUP_SECONDS = 5.0


class IdentityError(RuntimeError):
    """The shard cannot tell who it is; the message says what to set."""


def resolve_identity(settings: Settings) -> Settings:
    """``settings`` with ``shard_id`` set, ``advertise`` set when the id came from DNS, and
    ``{shard_id}`` in ``shard_data_dir`` filled in. Call once at start, before recovery."""
    update: dict[str, object] = {}
    if settings.shard_id:
        shard_id = settings.shard_id
    elif settings.shard_id_from == "reverse-dns":
        shard_id = dns_name(own_address()).split(".")[0]
        if not settings.advertise:
            update["advertise"] = f"{shard_id}:{settings.shard_port}"
    else:
        shard_id = socket.gethostname().split(".")[0]
    update["shard_id"] = shard_id
    if settings.shard_data_dir is not None and "{shard_id}" in str(settings.shard_data_dir):
        update["shard_data_dir"] = Path(
            str(settings.shard_data_dir).replace("{shard_id}", shard_id)
        )
    return settings.model_copy(update=update)


def own_address() -> str:
    """This host's address on its network: the one its own name resolves to."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError as e:
        raise IdentityError(
            f"PSC_SHARD_ID_FROM=reverse-dns: this host's name {socket.gethostname()!r} does not "
            f"resolve ({e}); set PSC_SHARD_ID instead"
        ) from e


def dns_name(address: str) -> str:
    """The name DNS gives ``address`` (a PTR query to the resolver of /etc/resolv.conf, not
    /etc/hosts, which only knows the container's random host name)."""
    resolver = dns.resolver.Resolver()
    resolver.lifetime = _LOOKUP_SECONDS
    try:
        answer = resolver.resolve(dns.reversename.from_address(address), "PTR")
    except (dns.exception.DNSException, ValueError) as e:
        raise IdentityError(
            f"PSC_SHARD_ID_FROM=reverse-dns: DNS has no name for this shard's address {address} "
            f"({e}); outside compose or Kubernetes set PSC_SHARD_ID instead"
        ) from e
    name = str(answer[0].target).rstrip(".")  # type: ignore[attr-defined]
    log.info("shard address %s is %s in DNS", address, name)
    return name


def advertised_address(settings: Settings, port: int) -> str:
    """PSC_ADVERTISE, else host:port, with the host name for an any-interface bind (0.0.0.0
    is where the shard listens, not where anyone can reach it)."""
    if settings.advertise:
        return settings.advertise
    host = socket.gethostname() if settings.host in _ANY_INTERFACE else settings.host
    return f"{host}:{port}"
