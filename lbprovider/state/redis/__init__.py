"""The Redis state store (SPEC §7): ``redis://[:PASSWORD@]HOST:PORT/DB`` or ``rediss://``.

Every process on every machine pointing at the same Redis shares breakers (one
half-open probe across all of them), round-robin and sticky positions, TPM windows and
metrics, exactly.  Each atomic update is optimistic: apply the pure updaters here to the
values this process last saw, then send the result to a compare-and-set script that
writes only if every key — read or written — still holds what the updaters started
from; if one does not, the script answers the current values and the update runs again
on them.  So no count is lost and no decision is made on a stale record, and the rules
stay in Python.

One module per mechanism, each readable alone (docs/design.md, "Redis"):

* :mod:`.cas` — the compare-and-set script, and the pure logic of building its
  arguments and reading its answer;
* :mod:`.link` — one link per event loop: held connections, one transaction at a time
  with whatever was issued meanwhile (group commit), coalesced reads, lingering posts;
* :mod:`.posts` — this process's posts not yet settled, so a process reads its own
  writes;
* :mod:`.rescue` — posts left on a loop that ends, finished on the store's own loop,
  with the marker check so a count is neither lost nor doubled;
* :mod:`.store` — :class:`RedisStore`, composing them: the ``StateStore`` interface, the
  synchronous forms via the store's own loop, the health guard.

Keys start with ``lbprovider:``; a kind with a time to live (TPM buckets) expires after
it.  Values are the ledger's JSON; nothing secret is stored.
"""

from lbprovider.state.redis.cas import PREFIX
from lbprovider.state.redis.store import RedisStore

__all__ = ["PREFIX", "RedisStore"]
