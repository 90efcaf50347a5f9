"""Torch files for the fuzzer: a small pickle in the corpus, the weights added at run time.

A torch file is a zip archive: `archive/data.pkl` (the pickle: dicts, names, numbers
and references to tensor storages) and one record a storage (`archive/data/0`, ...).
The model file and the checkpoint hold hundreds of kilobytes of weights, which neither
belong in a committed corpus nor are worth mutating byte by byte. So an input of the
torch targets is either

- a pickle (it starts with PROTO, 0x80, as torch.save's does): `assemble` zips it with
  the storage records of the target's template, a genuine file built at run time
  (the same for every input); the fuzzer then works on the structure every check of the
  readers is about, storages referenced with any dtype, size, stride or offset;
- anything else, a whole file as it is (zip damage, truncation, a foreign format).

`split` cuts a torch file into (pickle, records): fuzz/seeds.py writes the pickles of
the templates, and of damaged variants of them, into the corpus.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable

PICKLE = b"\x80"  # pickle's PROTO opcode: how torch.save's data.pkl starts


def split(data: bytes) -> tuple[bytes, dict[str, bytes]]:
    """A torch file's (data.pkl, every other record by its name in the archive)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        records = {info.filename: archive.read(info) for info in archive.infolist()}
    name = next(n for n in records if n.endswith("/data.pkl"))
    return records.pop(name), records


class Template:
    """A genuine torch file of a target (built on first use, by `build`), whose storage
    records every pickle input is zipped with."""

    def __init__(self, build: Callable[[], bytes]):
        self.file = build
        self._records: dict[str, bytes] | None = None

    def records(self) -> dict[str, bytes]:
        if self._records is None:
            self._records = split(self.file())[1]
        return self._records

    def assemble(self, data: bytes) -> bytes:
        """The file a fuzz input stands for: a pickle zipped with the template's storages, or the input itself."""
        if not data.startswith(PICKLE):
            return data
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("archive/data.pkl", data)
            for name, record in self.records().items():
                archive.writestr(name, record)
        return out.getvalue()
