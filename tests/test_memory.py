"""Memory bank (exact and HNSW), selection rules, persistence, and the user library."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from engine.errors import BadInputError, BundleError
from engine.library import UserLibrary
from engine.memory import (
    INFERENCE_RULES,
    DocumentTable,
    HNSWParams,
    IndexSpec,
    IVFParams,
    MemoryBank,
    SelectionRules,
    retrieve,
)

NO_RULES = SelectionRules(max_relevance=2.0, max_similarity=2.0, multimodal_bonus=0.0)


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def table(n, multimodal=None, texts=None):
    multimodal = np.ones(n, bool) if multimodal is None else np.asarray(multimodal)
    return DocumentTable(texts or [f"doc {i}" for i in range(n)], np.arange(n * 4).reshape(n, 4) % 100,
                         has_text=np.ones(n, bool), has_image=multimodal)


def random_bank(n=500, dim=16, seed=0, rules=NO_RULES, spec=None):
    vecs = unit(np.random.default_rng(seed).standard_normal((n, dim)))
    return vecs, MemoryBank.build(vecs, table(n), spec=spec, rules=rules)


def near(base, cos, seed):
    """A unit vector with the given cosine to `base`."""
    other = np.random.default_rng(seed).standard_normal(base.shape).astype(np.float32)
    other = unit(other - (other @ base) * base)
    return unit(cos * base + np.sqrt(1 - cos**2) * other)


def test_flat_search_equals_brute_force():
    vecs, bank = random_bank()
    queries = unit(np.random.default_rng(1).standard_normal((20, 16)))
    hits = bank.search(queries, k=5)
    brute = np.argsort(-(queries @ vecs.T), axis=1)[:, :5]
    assert bank.params["kind"] == "flat"
    for row, expected in zip(hits, brute, strict=True):
        assert [d for d, _ in row] == expected.tolist()
    scores = np.array([[s for _, s in row] for row in hits])
    assert np.allclose(scores, np.take_along_axis(queries @ vecs.T, brute, 1), atol=1e-5)


def test_exclude_ids():
    vecs, bank = random_bank()
    hits = bank.search(vecs[:3], k=2, exclude_ids=[[0], [1], [2]])
    for i, row in enumerate(hits):
        assert i not in [d for d, _ in row] and len(row) == 2
    with pytest.raises(BadInputError):
        bank.search(vecs[:3], k=2, exclude_ids=[[0]])


def rule_bank(multimodal=None):
    """Query q; docs: 0 = q (duplicate), 1 at 0.95 (near duplicate), 2 at 0.85, 3 = almost 2,
    4 at 0.82, 5 at 0.70."""
    q = unit(np.eye(8)[0])
    docs = [q, near(q, 0.95, 1), near(q, 0.85, 2), None, near(q, 0.82, 4), near(q, 0.70, 5)]
    docs[3] = unit(docs[2] + 0.02 * near(q, 0.0, 3))  # cos(2, 3) > 0.99
    vecs = np.stack(docs)
    return q, vecs, MemoryBank.build(vecs, table(6, multimodal))


def test_near_duplicates_skipped_and_diversity():
    q, vecs, bank = rule_bank()
    (row,) = bank.search(q, k=2)
    ids = [d for d, _ in row]
    assert 0 not in ids and 1 not in ids  # relevance > 0.9
    assert ids == [2, 4]  # 3 is a duplicate of 2: skipped for diversity
    assert row[0][1] == pytest.approx(0.85, abs=1e-4)


def test_multimodal_preferred():
    # doc 2 (0.85) has no image; doc 4 (0.82) and 5 (0.70) have both: the bonus of 0.05 closes
    # the small gap (4 before 2), not the large one (5 stays behind 2).
    q, vecs, bank = rule_bank(multimodal=[True, True, False, False, True, True])
    (row,) = bank.search(q, k=3)
    assert [d for d, _ in row] == [4, 2, 5]
    rules = SelectionRules(multimodal_bonus=0.0)
    (row,) = retrieve([("bank", bank)], q, 2, rules=rules)
    assert [d for _, d, _ in row] == [2, 4]


def test_rules_search_deeper_when_short():
    # 40 near duplicates of the query, then ordinary documents: k must still be met
    q = unit(np.eye(8)[0])
    dups = [near(q, 0.99, s) for s in range(40)]
    others = [near(q, 0.5 - 0.01 * i, 100 + i) for i in range(10)]
    bank = MemoryBank.build(np.stack(dups + others), table(50), rules=SelectionRules(depth=2))
    (row,) = bank.search(q, k=2)
    assert len(row) == 2 and all(d >= 40 for d, _ in row)


def repeated_caption_bank(subjects=10, per_subject=20, templates=5, dim=64, seed=0):
    """Documents of a folder whose captions repeat (ten subjects, five caption templates), embedded as
    a bi-encoder does: a caption's text vector lies near its subject's direction, and so does each of
    the subject's images. A document is mean(text, image), renormalised (engine.retriever)."""
    rng = np.random.default_rng(seed)
    subject = unit(rng.standard_normal((subjects, dim)))
    template = unit(rng.standard_normal((templates, dim)))
    captions = unit(subject[:, None] + 0.3 * template[None])  # (subject, template) -> text vector
    labels = np.repeat(np.arange(subjects), per_subject)
    which = rng.integers(templates, size=len(labels))
    images = unit(subject[labels] + 0.5 * unit(rng.standard_normal((len(labels), dim))))
    docs = unit(captions[labels, which] + images)
    texts = [f"subject {s}, template {t}" for s, t in zip(labels, which, strict=True)]
    return captions, labels, MemoryBank.build(docs, table(len(labels), texts=texts))


def test_a_prompt_retrieves_the_documents_it_names(tmp_path):
    """The anti-copy rule (relevance > 0.9) is for training queries, which are documents of the bank;
    an artist's prompt that repeats a training caption must still retrieve the documents it names."""
    captions, labels, bank = repeated_caption_bank()
    queries = captions.reshape(-1, captions.shape[-1])  # every subject's every caption as a prompt
    wanted = np.repeat(np.arange(captions.shape[0]), captions.shape[1])
    scores, raw = bank.nearest(queries, 4)
    assert (labels[raw] == wanted[:, None]).all() and (scores > 0.9).all()  # what the artist asks for
    training = bank.search(queries, k=4)  # the training rules throw every one of them away
    assert all(s <= 0.9 for row in training for _, s in row)
    assert np.mean([labels[d] == w for row, w in zip(training, wanted, strict=True) for d, _ in row]) < 0.5
    bank.save(tmp_path / "mem")
    params = json.loads((tmp_path / "mem" / "params.json").read_text())
    assert params["inference_rules"]["max_relevance"] is None and params["rules"]["max_relevance"] == 0.9
    for rules in (bank.inference_rules, MemoryBank.load(tmp_path / "mem").inference_rules):
        hits = retrieve([("bank", bank)], queries, 4, rules=rules)
        assert all(len(row) == 4 and all(labels[d] == w for _, d, _ in row)
                   for row, w in zip(hits, wanted, strict=True))


def test_rules_from_dict():
    rules = SelectionRules.from_dict({"max_relevance": None, "depth": 4})
    assert rules.max_relevance is None and rules.depth == 4 and rules.max_similarity == 0.9
    assert SelectionRules.from_dict({}, INFERENCE_RULES) == INFERENCE_RULES
    with pytest.raises(BadInputError, match="unknown retrieval rule 'max_relevence'"):
        SelectionRules.from_dict({"max_relevence": 0.5})
    with pytest.raises(BadInputError, match="numbers"):
        SelectionRules.from_dict({"max_similarity": "high"})


def test_save_load_round_trip(tmp_path):
    texts = [f"dóc {i} ★" for i in range(30)]
    vecs = unit(np.random.default_rng(0).standard_normal((30, 8)))
    t = DocumentTable(texts, np.random.default_rng(1).integers(0, 1000, (30, 16)),
                      np.r_[np.ones(29, bool), False], np.r_[False, np.ones(29, bool)],
                      ids=np.arange(30) + 100)
    bank = MemoryBank.build(vecs, t)
    bank.save(tmp_path / "mem")
    assert sorted(p.name for p in (tmp_path / "mem").iterdir()) == ["index.faiss", "params.json", "table.npz"]
    params = json.loads((tmp_path / "mem" / "params.json").read_text())
    assert params["kind"] == "flat" and params["count"] == 30 and params["rules"]["max_relevance"] == 0.9
    loaded = MemoryBank.load(tmp_path / "mem")
    assert loaded.table.texts == texts
    assert np.array_equal(loaded.table.codes, t.codes) and loaded.table.codes.dtype == np.int16
    with np.load(tmp_path / "mem" / "table.npz") as z:
        assert z["codes"].dtype == np.int16  # codes up to 999: too wide for int8
    assert np.array_equal(loaded.table.ids, t.ids)
    assert loaded.document(100) == (texts[0], None)
    text, codes = loaded.document(129)
    assert text is None and np.array_equal(codes, t.codes[29])
    assert loaded.search(vecs[:5], k=2) == bank.search(vecs[:5], k=2)
    # an interrupted write (index and params disagree) or a missing file is refused
    params["count"] = 31
    (tmp_path / "mem" / "params.json").write_text(json.dumps(params))
    with pytest.raises(BundleError):
        MemoryBank.load(tmp_path / "mem")
    (tmp_path / "mem" / "index.faiss").unlink()
    with pytest.raises(BundleError, match="missing index.faiss"):
        MemoryBank.load(tmp_path / "mem")


@pytest.mark.parametrize("kind", ["auto", "hnsw"])
def test_approximate_index_above_threshold(tmp_path, kind):
    spec = IndexSpec(kind=kind, threshold=1000, ivf=IVFParams(nprobe=24),
                     hnsw=HNSWParams(M=16, ef_construction=40, ef_search=48))
    vecs, bank = random_bank(n=3000, dim=16, spec=spec)
    if kind == "auto":  # IVF above the threshold, its parameters recorded
        assert bank.params["kind"] == "ivf" and bank.params["ivf"]["nprobe"] == 24
        assert bank.params["ivf"]["nlist"] == 3000 // 39  # 4 sqrt(n) capped at 39 training points per list
    else:
        assert bank.params["kind"] == "hnsw" and bank.params["hnsw"] == {"M": 16, "ef_construction": 40,
                                                                         "ef_search": 48}
    _, exact = random_bank(n=3000, dim=16)
    assert exact.params["kind"] == "flat"
    queries = unit(np.random.default_rng(5).standard_normal((50, 16)))
    approx_ids = [{d for d, _ in r} for r in bank.search(queries, k=4)]
    exact_ids = [{d for d, _ in r} for r in exact.search(queries, k=4)]
    recall = np.mean([len(a & e) / 4 for a, e in zip(approx_ids, exact_ids, strict=True)])
    assert recall >= 0.9
    bank.save(tmp_path / "h")
    loaded = MemoryBank.load(tmp_path / "h")
    if kind == "auto":
        assert loaded.index.nprobe == 24  # not stored in the index file: restored from params.json
    else:
        assert loaded.index.hnsw.efSearch == 48
    assert loaded.search(queries, k=4) == bank.search(queries, k=4)
    assert np.allclose(loaded.vectors([7, 8]), vecs[7:9], atol=1e-6)  # reconstruct for the rules


def test_fp16_exact_index(tmp_path):
    # the figure of IndexSpec's docstring: recall@4 against float32 on 20000 random unit vectors
    vecs, exact = random_bank(n=20000, dim=128)
    _, half = random_bank(n=20000, dim=128, spec=IndexSpec(kind="flat", storage="fp16"))
    assert (half.params["kind"], half.params["storage"], exact.params["storage"]) == ("flat", "fp16", "fp32")
    queries = unit(np.random.default_rng(5).standard_normal((1000, 128)))
    found, truth = half.nearest(queries, 4)[1], exact.nearest(queries, 4)[1]
    recall = np.mean([len(set(f) & set(t)) / 4 for f, t in zip(found, truth, strict=True)])
    assert recall >= 0.998  # 0.99925: 3 of 4000 neighbours swapped with near ties
    half.save(tmp_path / "half")
    exact.save(tmp_path / "exact")
    size = {name: (tmp_path / name / "index.faiss").stat().st_size for name in ("half", "exact")}
    assert size["half"] < 0.51 * size["exact"]
    loaded = MemoryBank.load(tmp_path / "half")
    assert loaded.params["storage"] == "fp16"
    assert loaded.search(queries[:20], k=4) == half.search(queries[:20], k=4)
    assert np.allclose(loaded.vectors([7, 8]), vecs[7:9], atol=1e-3)  # reconstruct for the rules


def test_fp16_is_for_the_exact_index_only():
    for spec in (IndexSpec(kind="hnsw", storage="fp16"), IndexSpec(kind="ivf", storage="fp16"),
                 IndexSpec(storage="fp16", threshold=50)):  # auto turns approximate above its threshold
        with pytest.raises(BadInputError, match="exact"):
            spec.resolve(100)
    with pytest.raises(BadInputError, match="storage"):
        IndexSpec(kind="flat", storage="int8").resolve(100)


def test_subset_keeps_the_first_documents(tmp_path):
    rules = SelectionRules(depth=3)
    vecs, bank = random_bank(n=300, rules=rules)
    small = bank.subset(100)
    assert len(small) == 100 and small.rules == rules and small.params["storage"] == "fp32"
    assert small.table.texts == bank.table.texts[:100]
    assert np.array_equal(small.table.codes, bank.table.codes[:100])
    assert np.array_equal(small.table.ids, bank.table.ids[:100])
    queries = unit(np.random.default_rng(5).standard_normal((20, 16)))
    direct = MemoryBank.build(vecs[:100], table(100), rules=rules)
    assert small.search(queries, k=3) == direct.search(queries, k=3)
    half = bank.subset(100, IndexSpec(kind="flat", storage="fp16")).subset(50)  # from float16 vectors too
    assert half.params["storage"] == "fp32" and np.allclose(half.vectors(range(50)), vecs[:50], atol=1e-3)
    for count in (0, 301):
        with pytest.raises(BadInputError):
            bank.subset(count)


def test_index_subset_command(tmp_path, capsys):
    from engine.cli import main

    random_bank(n=300)[1].save(tmp_path / "full")
    code = main(["index", "subset", str(tmp_path / "full"), "--out", str(tmp_path / "small"), "--docs", "120",
                 "--storage", "fp16", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["docs"] == 120 and report["index"].startswith("SQfp16")
    loaded = MemoryBank.load(tmp_path / "small")
    assert len(loaded) == 120 and loaded.params["storage"] == "fp16"
    assert report["size_mb"] == round(sum(f.stat().st_size for f in (tmp_path / "small").iterdir()) / 1e6, 2)


def test_table_is_stored_compressed_with_narrow_codes(tmp_path):
    codes = np.r_[np.full((1, 16), -1), np.arange(39 * 16).reshape(39, 16) % 128]  # -1: no image
    t = DocumentTable(["a red circle"] * 40, codes, np.ones(40, bool), np.r_[False, np.ones(39, bool)])
    t.save(tmp_path / "t.npz")
    with zipfile.ZipFile(tmp_path / "t.npz") as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}
    with np.load(tmp_path / "t.npz") as z:
        assert z["codes"].dtype == np.int8  # -1..127 fit; codes up to 1023 stay int16 (round trip test)
    loaded = DocumentTable.load(tmp_path / "t.npz")
    assert loaded.codes.dtype == np.int16 and np.array_equal(loaded.codes, t.codes)
    assert loaded.texts == t.texts and np.array_equal(loaded.has_image, t.has_image)


def test_bad_input():
    with pytest.raises(BadInputError):
        MemoryBank.build(np.zeros((3, 4), np.float32), table(2))
    _, bank = random_bank(n=10, dim=4)
    with pytest.raises(BadInputError):
        bank.search(np.ones((1, 5)), k=2)
    with pytest.raises(BadInputError):
        bank.search(np.full((1, 4), np.nan), k=2)
    with pytest.raises(BadInputError):
        DocumentTable(["a", "b"], np.zeros((2, 4)), [1, 1], [1, 1], ids=[3, 3])


# ---- user library --------------------------------------------------------------------------------
class ColourEmbedder:
    """Deterministic stand-in for the retriever: an image is its mean colour, a text names one."""

    dim = 4
    name = "colour"
    NAMES = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1)}

    def embed_images(self, images):
        m = np.asarray(images, np.float32).reshape(len(images), -1, 3).mean(1) / 255.0
        return unit(np.concatenate([m, np.full((len(m), 1), 0.05, np.float32)], 1))

    def embed_texts(self, texts):
        return unit([[*self.NAMES.get(t.split()[0], (1, 1, 1)), 0.05] for t in texts])


def png(path, colour, size=(40, 30), mode="RGB"):
    Image.new(mode, size, colour).save(path)
    return path


def test_library_add_search_remove_persist(tmp_path, tessera_home):
    src = tmp_path / "refs"
    (src / "sub").mkdir(parents=True)
    png(src / "red.png", (250, 10, 10))
    png(src / "sub" / "green.png", (10, 240, 10))
    png(src / "blue.png", (10, 10, 250, 255), mode="RGBA")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.txt").write_text("not an image, and not an image extension")
    lib = UserLibrary(ColourEmbedder())
    assert lib.folder == tessera_home / "library"
    progress = []
    report = lib.add([src, tmp_path / "missing.png"], progress=lambda *args: progress.append(args))
    assert progress == [(i, 5) for i in range(1, 6)]  # every image file found, added or skipped
    assert sorted(e.path.split("/")[-1] for e in report.added) == ["blue.png", "green.png", "red.png"]
    reasons = dict(report.skipped)
    assert set(reasons) == {str(src / "broken.png"), str(src / "empty.jpg"), str(tmp_path / "missing.png")}
    assert "empty" in reasons[str(src / "empty.jpg")]
    # the same file again is a duplicate
    assert lib.add([src / "red.png"]).skipped == [(str(src / "red.png"), "already in the library")]
    red_id = next(e.id for e in lib.list() if e.path.endswith("red.png"))
    (hit, *_), = lib.search(ColourEmbedder().embed_texts(["red"]), k=3)
    assert hit[0] == red_id and lib.image(red_id).shape == (128, 128, 3)

    reopened = UserLibrary(ColourEmbedder())
    assert [e.id for e in reopened.list()] == [e.id for e in lib.list()]
    assert reopened.search(ColourEmbedder().embed_texts(["green"]), k=1) == \
        lib.search(ColourEmbedder().embed_texts(["green"]), k=1)
    assert reopened.remove([red_id, 999]) == 1
    again = UserLibrary(ColourEmbedder())
    assert len(again) == 2 and red_id not in {e.id for e in again.list()}
    assert not (again.folder / "thumbs" / f"{red_id}.png").exists()
    ids = {d for d, _ in again.search(ColourEmbedder().embed_texts(["red"]), k=5)[0]}
    assert red_id not in ids and len(ids) == 2


def test_library_reembeds_for_another_retriever(tmp_path, tessera_home):
    png(tmp_path / "a.png", (200, 30, 30))
    UserLibrary(ColourEmbedder()).add([tmp_path / "a.png"], captions={str(tmp_path / "a.png"): "red box"})

    class Wider(ColourEmbedder):
        dim, name = 5, "wider"

        def embed_images(self, images):
            v = super().embed_images(images)
            return unit(np.concatenate([v, np.ones((len(v), 1), np.float32)], 1))

        def embed_texts(self, texts):
            v = super().embed_texts(texts)
            return unit(np.concatenate([v, np.ones((len(v), 1), np.float32)], 1))

    lib = UserLibrary(Wider())
    assert lib.index.d == 5 and len(lib) == 1 and lib.list()[0].caption == "red box"
    (row,) = lib.search(Wider().embed_texts(["red"]), k=1)
    assert row[0][1] > 0.9


def test_library_merged_with_bank(tmp_path, tessera_home):
    lib = UserLibrary(ColourEmbedder())
    lib.add([png(tmp_path / "r.png", (255, 0, 0)), png(tmp_path / "b.png", (0, 0, 255))])
    emb = ColourEmbedder()
    bank_vecs = emb.embed_texts(["green", "blue", "red"])
    bank = MemoryBank.build(bank_vecs, table(3))
    query = unit(emb.embed_texts(["red"]) + 0.6 * emb.embed_texts(["blue"]))
    rules = SelectionRules(max_relevance=2.0, max_similarity=2.0, multimodal_bonus=0.0)
    (row,) = retrieve([("bundle", bank), ("library", lib)], query, k=4, rules=rules)
    scores = [s for _, _, s in row]
    assert scores == sorted(scores, reverse=True)
    assert {src for src, _, _ in row} == {"bundle", "library"}
