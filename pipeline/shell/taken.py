"""Names already taken at an output location (CONTRACT section 6): before any request is sent
for an item, the name its image would get must be free there. Otherwise the item fails for
good, with a reason naming the object, and nothing is sent or paid for it:

- an image is already there under the item's name (another run's, or a file nanobatch did
  not write). Its bytes cannot be compared with an image not made yet, so any image there
  counts; the extension is not known yet either (the service may answer PNG or JPEG), so
  `<name>.png`, `<name>.jpg`, ... all count. Only items with no image recorded are checked
  (new and queued ones), so an object this run recorded is never in the way of its item;
  an identical image another run made is served by the prompt cache before this check;
- another run of the ledger at the same location has an open item (queued or in a batch)
  with the same key: it is about to write that name. The first run to claim a name keeps it.

`[output] overwrite = true` turns the check off (the image replaces what is there). The
check runs when a run is recorded (`intake`, for the items it packs into batches) and when
queued items are formed into batches (`submit.form_batches`: retries, prompt-cache misses,
items moved to the fallback model), so no batch ever holds an item whose name is taken. A
name taken later, between the check and the harvest, is still refused by the store's
create-only write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pipeline.adapters.ledger.ledger import Ledger, OpenKeys
from pipeline.adapters.storage import ObjectStore
from pipeline.core import naming
from pipeline.shell.location import Listing


class TakenNames:
    """Answers, a slice of keys at a time, which of a run's items have their name taken."""

    def __init__(
        self, run_id: str, store: ObjectStore, listing: Listing, neighbours: Sequence[str]
    ) -> None:
        self.run_id, self.store, self.listing = run_id, store, listing
        self.neighbours = [r for r in neighbours if r != run_id]
        """Other runs of the ledger at the same location."""

    @property
    def idle(self) -> bool:
        """True when nothing can be taken: no image at the location and no other run there."""
        return not self.listing.images and not self.neighbours

    def among_with(self, open_keys: OpenKeys, keys: Sequence[str]) -> dict[int, str]:
        """`among_keys`, other runs' claims read through `open_keys`: the ledger's read
        inside the transaction that records the failures (`Ledger.fail_taken`, intake's
        `Recording`)."""
        return self._among(keys, lambda rest: open_keys(self.neighbours, rest))

    def among_keys(self, ledger: Ledger, keys: Sequence[str]) -> dict[int, str]:
        """Position in `keys` -> why that item's name is taken, for the items whose name is."""
        return self._among(keys, lambda rest: ledger.open_keys(self.neighbours, rest))

    def _among(
        self, keys: Sequence[str], claims_of: Callable[[list[str]], dict[str, str]]
    ) -> dict[int, str]:
        if self.idle or not keys:
            return {}
        stems = [naming.stem_for_key(key) for key in keys]
        found: dict[int, str] = {}
        names = self.listing.find(stems)
        for i, stem in enumerate(stems):
            name = names.get(stem)
            if name is not None:
                found[i] = self._object_reason(self.store.uri_for(name))
        rest = [key for i, key in enumerate(keys) if i not in found]
        claims = claims_of(rest)
        for i, key in enumerate(keys):
            if i not in found and key in claims:
                found[i] = self._claim_reason(self.store.uri_for(stems[i]) + ".*", claims[key])
        return found

    def _object_reason(self, uri: str) -> str:
        return (
            f"name taken: {uri} is already at the output location and this run did not write "
            f"it; nothing was sent for this item. Move the object away and run `nanobatch "
            f"retry {self.run_id} --include-final`, or set [output] overwrite = true to "
            "replace it"
        )

    def _claim_reason(self, uri: str, other: str) -> str:
        return (
            f"name taken: run {other} shares this output location and is making {uri} for "
            f"the same key; nothing was sent for this item. When that run has finished, "
            f"`nanobatch retry {self.run_id} --include-final` sends it if the name is free "
            "(or serves it from the prompt cache), or set [output] overwrite = true"
        )
