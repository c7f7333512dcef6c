"""The user library: the artist's own reference images, searched beside the bundle's memory bank.
Retrieval is how Tessera follows an artist's material without retraining (docs/retrieval.md).

Images are embedded with the retriever and indexed incrementally in a FAISS IndexIDMap2 over an
exact inner-product index (libraries are small; exact search is instant). On disk, under
`engine.paths.user_data_dir()/library/`:

    thumbs/<id>.png   the image as the library uses it (centre crop, thumb_size square), written once
    library.npz       the FAISS index (faiss.serialize_index bytes) and a JSON entry list, replaced
                      atomically on every change - a crash leaves the previous library intact

Embeddings are always computed from the stored thumbnails, so a library opened with a different
retriever is re-embedded from them, without the original files.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import faiss
import numpy as np
from PIL import Image

from engine.errors import BadInputError, BundleError
from engine.imageio import IMAGE_EXTENSIONS, load_image
from engine.io import atomic_write
from engine.memory import Candidates
from engine.retriever import Embedder, document_embeddings

LIBRARY_FILE = "library.npz"
THUMBS = "thumbs"
FORMAT = 1


@dataclass(frozen=True)
class Entry:
    id: int
    path: str  # where the image was added from (it may have moved since)
    sha256: str  # of the file's bytes: the same file is not added twice
    caption: str | None = None
    added: float = 0.0  # unix time


@dataclass
class AddReport:
    added: list[Entry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def embedder_id(embedder: Embedder) -> str:
    return f"{getattr(embedder, 'name', type(embedder).__name__)}/{embedder.dim}"


def _expand(paths: Iterable[str | Path], skipped: list[tuple[str, str]]) -> list[Path]:
    """Files as given, folders as their image files (recursive, sorted, hidden files ignored)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                          and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.exists():
            out.append(p)
        else:
            skipped.append((str(p), "no such file or folder"))
    return out


def _read(path: Path, known: set[str], skipped: list[tuple[str, str]], size: int
          ) -> tuple[str, np.ndarray] | None:
    """(sha256, thumbnail) of an image file not in the library yet; None (and why, in skipped) if not."""
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in known:
            skipped.append((str(path), "already in the library"))
            return None
        return digest, load_image(path, size)
    except BadInputError as exc:
        skipped.append((str(path), str(exc).removeprefix(f"{path}: ")))
    except OSError as exc:
        skipped.append((str(path), f"unreadable: {exc.strerror or exc}"))
    return None


class UserLibrary:
    def __init__(self, embedder: Embedder, folder: str | Path | None = None, thumb_size: int = 128) -> None:
        if folder is None:
            from engine.paths import user_data_dir

            folder = user_data_dir() / "library"
        self.folder = Path(folder)
        self.embedder, self.thumb_size = embedder, int(thumb_size)
        self.entries: dict[int, Entry] = {}
        self.index: faiss.Index = faiss.IndexIDMap2(faiss.IndexFlatIP(embedder.dim))
        self._next_id = 1
        self._lock = threading.RLock()
        if (self.folder / LIBRARY_FILE).is_file():
            self._load()

    # -- persistence --------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            with np.load(self.folder / LIBRARY_FILE, allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes().decode("utf-8"))
                index = faiss.deserialize_index(z["index"])
        except Exception as exc:  # a damaged file: say so rather than silently starting empty
            raise BundleError(f"user library {self.folder / LIBRARY_FILE} cannot be read: {exc}") from None
        if meta.get("format") != FORMAT:
            raise BundleError(f"user library {self.folder}: unknown format {meta.get('format')}")
        self.entries = {e["id"]: Entry(**e) for e in meta["entries"]}
        self._next_id = int(meta["next_id"])
        self.thumb_size = int(meta.get("thumb_size", self.thumb_size))
        if meta["embedder"] == embedder_id(self.embedder) and index.ntotal == len(self.entries):
            self.index = index
        else:  # another retriever (or an inconsistent file): rebuild the vectors from the thumbnails
            self._reindex()

    def _save(self) -> None:
        meta = {"format": FORMAT, "embedder": embedder_id(self.embedder), "next_id": self._next_id,
                "thumb_size": self.thumb_size, "entries": [asdict(e) for e in self.entries.values()]}
        blob = faiss.serialize_index(self.index)
        meta_bytes = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, index=blob, meta=meta_bytes)

        atomic_write(self.folder / LIBRARY_FILE, write)
        thumbs = self.folder / THUMBS
        for png in thumbs.glob("*.png"):  # thumbnails of removed entries (or of an interrupted add)
            if png.stem.isdigit() and int(png.stem) not in self.entries:
                png.unlink(missing_ok=True)

    def _thumb_path(self, entry_id: int) -> Path:
        return self.folder / THUMBS / f"{entry_id}.png"

    def _reindex(self) -> None:
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.embedder.dim))
        ids = [i for i in self.entries if self._thumb_path(i).is_file()]
        for i in set(self.entries) - set(ids):  # a thumbnail went missing: the entry cannot be searched
            del self.entries[i]
        if ids:
            images = [self.image(i) for i in ids]
            vecs = document_embeddings(self.embedder, [self.entries[i].caption for i in ids], images)
            self.index.add_with_ids(vecs, np.array(ids, dtype=np.int64))
        self._save()

    # -- changes ------------------------------------------------------------------------------
    def add(self, paths: Iterable[str | Path], captions: dict[str, str] | None = None,
            progress: Callable[[int, int], None] | None = None) -> AddReport:
        """Add image files and folders (recursively). Bad or duplicate files are skipped and
        reported, never raised; the library is saved once at the end. progress(done, total) is
        called after each image file is read (total: the image files the paths expand to)."""
        report = AddReport()
        captions = {str(Path(k)): v for k, v in (captions or {}).items()}
        with self._lock:
            known = {e.sha256 for e in self.entries.values()}
            new: list[tuple[Entry, np.ndarray]] = []
            files = _expand(paths, report.skipped)
            for done, path in enumerate(files, 1):
                read = _read(path, known, report.skipped, self.thumb_size)
                if read is not None:
                    digest, thumb = read
                    known.add(digest)
                    caption = (captions.get(str(path)) or "").strip() or None
                    new.append((Entry(self._next_id, str(path), digest, caption, time.time()), thumb))
                    self._next_id += 1
                if progress is not None:
                    progress(done, len(files))
            if not new:
                return report
            for entry, thumb in new:  # thumbnails first: library.npz, written last, commits the add
                atomic_write(self._thumb_path(entry.id), partial(_write_png, thumb))
            vecs = document_embeddings(self.embedder, [e.caption for e, _ in new], [t for _, t in new])
            self.index.add_with_ids(vecs, np.array([e.id for e, _ in new], dtype=np.int64))
            for entry, _ in new:
                self.entries[entry.id] = entry
            self._save()
            report.added = [e for e, _ in new]
        return report

    def remove(self, ids: Iterable[int]) -> int:
        """Remove entries by id; returns how many were removed (unknown ids are ignored)."""
        with self._lock:
            ids = [int(i) for i in ids if int(i) in self.entries]
            if not ids:
                return 0
            self.index.remove_ids(np.array(ids, dtype=np.int64))  # type: ignore[arg-type]  # faiss wraps it
            for i in ids:
                del self.entries[i]
            self._save()
            return len(ids)

    # -- reading ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def list(self) -> list[Entry]:
        return sorted(self.entries.values(), key=lambda e: e.id)

    def image(self, entry_id: int) -> np.ndarray:
        """The entry's thumbnail, uint8 (thumb_size, thumb_size, 3)."""
        if int(entry_id) not in self.entries:
            raise BadInputError(f"no library entry {entry_id}")
        return load_image(self._thumb_path(int(entry_id)), None)

    def document(self, entry_id: int) -> tuple[str | None, np.ndarray]:
        return self.entries[int(entry_id)].caption, self.image(entry_id)

    def candidates(self, query_vecs: np.ndarray, depth: int) -> builtins.list[Candidates]:
        """Nearest entries per query, in the form `engine.memory.retrieve` merges across sources."""
        with self._lock:
            q = np.ascontiguousarray(query_vecs, dtype=np.float32).reshape(-1, self.embedder.dim)
            scores, ids = self.index.search(q, max(1, min(depth, len(self))))
            out = []
            for s, d in zip(scores, ids, strict=True):
                keep = d >= 0
                d = d[keep]
                vecs = np.stack([self.index.reconstruct(int(i)) for i in d]) if len(d) else \
                    np.zeros((0, self.embedder.dim), np.float32)
                multi = np.array([self.entries[int(i)].caption is not None for i in d], dtype=bool)
                out.append(Candidates(d.astype(np.int64), s[keep], vecs, multi))
            return out

    def search(self, query_vecs: np.ndarray, k: int = 4) -> builtins.list[builtins.list[tuple[int, float]]]:
        """Plain nearest entries (no selection rules): up to k (entry id, cosine) per query."""
        found = self.candidates(query_vecs, k)
        return [list(zip(c.ids.tolist(), c.scores.tolist(), strict=True)) for c in found]


def _write_png(image: np.ndarray, path: str) -> None:
    Image.fromarray(image).save(path, format="PNG")
