"""Reading the daemon's `status`: the summary, or the summary with whole lists, page by page.

The daemon answers `status` with a summary of fixed size, and each list (leases,
instances, leftovers) only when asked, at most `protocol.STATUS_PAGE_MAX` rows of it per
reply. `read_status` asks for page after page until `next_offset` is null and joins
them, so a caller sees every row it may read, however many the daemon holds. The pages
are read one after another: a lease that ends or starts between two of them may be
missed or seen twice (its id says which), as with any listing of a live system.
"""

from __future__ import annotations

from supervisord_batt import protocol
from supervisord_batt.client.leases import Connection

LISTS = ("leases", "instances", "leftovers")


def read_status(
    conn: Connection,
    lists: tuple[str, ...] = (),
    *,
    events: bool = False,
    page: int = protocol.STATUS_PAGE_MAX,
) -> protocol.StatusListsReply:
    """The summary with every row of each of `lists` (of LISTS) and, when `events`, the
    latest events (those come with the first page, the summary with the last)."""
    flags = dict.fromkeys(lists, True)
    leases: list[protocol.LeaseRow] = []
    instances: list[protocol.InstanceRow] = []
    leftovers: list[protocol.LeftoverRow] = []
    first: list[protocol.Event] | None = None
    offset: int | None = 0
    while True:
        ask = {**flags, "events": events and first is None, "offset": offset, "limit": page}
        reply = conn.call(protocol.StatusListsReply, "status", **ask)
        first = reply.get("events", []) if first is None else first
        leases += reply.get("leases", [])
        instances += reply.get("instances", [])
        leftovers += reply.get("leftovers", [])
        offset = reply["page"]["next_offset"] if "page" in reply else None
        if offset is None:
            break
    reply.pop("page", None)
    if events:
        reply["events"] = first
    if "leases" in lists:
        reply["leases"] = leases
    if "instances" in lists:
        reply["instances"] = instances
    if "leftovers" in lists:
        reply["leftovers"] = leftovers
    return reply
