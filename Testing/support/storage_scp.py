"""A pynetdicom storage SCP on a free loopback port: the DIMSE node of the ``--store-dimse`` tests."""

from __future__ import annotations

from Testing.support.orthanc import HOST, free_port


class StorageSCP:
    """Accepts C-STORE of any storage SOP class and keeps each dataset by SOPInstanceUID (``received``);
    ``refuse_after`` instances it answers 0xA700 (out of resources), as a node that fails half-way."""

    def __init__(self, aet: str = "STORESCP", refuse_after: int | None = None):
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.aet, self.port, self.refuse_after = aet, free_port(), refuse_after
        self.received: dict[str, object] = {}
        self.calls = 0
        ae = AE(ae_title=aet)
        ae.supported_contexts = AllStoragePresentationContexts
        self._server = ae.start_server((HOST, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])

    @property
    def address(self) -> str:
        return f"{self.aet}@{HOST}:{self.port}"

    def _store(self, event) -> int:
        self.calls += 1
        if self.refuse_after is not None and len(self.received) >= self.refuse_after:
            return 0xA700
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        self.received[str(dataset.SOPInstanceUID)] = dataset
        return 0x0000

    def stop(self) -> None:
        self._server.shutdown()
