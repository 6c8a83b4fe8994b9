"""MemoryBank: EMA updates, retrieval by name and by similarity, (de)serialisation."""

from __future__ import annotations

import io

import pytest
import torch

from iris_engine.embedding import TaskEmbedding
from iris_engine.errors import IrisInputError
from iris_engine.memory_bank import MemoryBank


def tokens(seed: int, shape: tuple[int, int] = (5, 8)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_first_update_stores_tokens_unchanged_and_detached():
    bank = MemoryBank()
    t = tokens(0).requires_grad_(True)
    stored = bank.update("liver", t)
    assert torch.equal(stored, t.detach())
    assert not stored.requires_grad
    assert "liver" in bank and len(bank) == 1 and bank.count("liver") == 1
    t.data.add_(1.0)  # later changes to the caller's tensor must not leak into the bank
    assert torch.equal(bank.get("liver").tokens[0], tokens(0))


def test_ema_default_momentum_is_exact():
    bank = MemoryBank()
    assert bank.momentum == 0.999
    a, b, c = tokens(1), tokens(2), tokens(3)
    bank.update("x", a)
    bank.update("x", b)
    expected = 0.999 * a + 0.001 * b
    torch.testing.assert_close(bank.get("x").tokens[0], expected, rtol=0, atol=1e-7)
    bank.update("x", c)
    expected = 0.999 * expected + 0.001 * c
    torch.testing.assert_close(bank.get("x").tokens[0], expected, rtol=0, atol=1e-7)
    assert bank.count("x") == 3 and bank.count("unknown") == 0


def test_ema_custom_momentum_per_bank_and_per_call():
    bank = MemoryBank(momentum=0.5)
    a, b, c = tokens(1), tokens(2), tokens(3)
    bank.update("x", a)
    assert torch.equal(bank.update("x", b), 0.5 * a + 0.5 * b)
    torch.testing.assert_close(bank.update("x", c, momentum=0.0), c)  # momentum 0: replace
    zero = MemoryBank(momentum=0.0)
    zero.update("y", a)
    assert torch.equal(zero.update("y", b), b)
    with pytest.raises(IrisInputError, match="momentum"):
        MemoryBank(momentum=1.0)
    with pytest.raises(IrisInputError, match="momentum"):
        MemoryBank(momentum=-0.1)


def test_update_from_embedding_and_counts():
    bank = MemoryBank(momentum=0.9)
    embedding = TaskEmbedding(torch.stack([tokens(1), tokens(2)]), ["a", "b"])
    bank.update_from_embedding(embedding)
    bank.update_from_embedding(TaskEmbedding(tokens(3)[None], ["a"]))
    assert bank.class_names == ["a", "b"]
    assert (bank.count("a"), bank.count("b")) == (2, 1)
    torch.testing.assert_close(bank.get("a").tokens[0], 0.9 * tokens(1) + 0.1 * tokens(3))
    assert torch.equal(bank.get("b").tokens[0], tokens(2))


def test_retrieval_by_name_order_and_missing():
    bank = MemoryBank()
    bank.update("liver", tokens(1))
    bank.update("spleen", tokens(2))
    got = bank.get(["spleen", "liver"], model_version="v7")
    assert got.class_names == ["spleen", "liver"]
    assert got.model_version == "v7"
    assert torch.equal(got.tokens, torch.stack([tokens(2), tokens(1)]))
    with pytest.raises(IrisInputError, match=r"kidney.*stored classes: liver, spleen"):
        bank.get(["liver", "kidney"])
    with pytest.raises(IrisInputError, match="stored classes: none"):
        MemoryBank().get("liver")


def test_nearest_by_cosine_similarity():
    bank = MemoryBank()
    prototypes = {name: tokens(i) for i, name in enumerate(["a", "b", "c"])}
    for name, t in prototypes.items():
        bank.update(name, t)
    for name, t in prototypes.items():
        noisy = 3.0 * t + 0.1 * tokens(100)  # scale does not matter for cosine similarity
        result = bank.nearest(noisy, top_k=2)
        assert result[0][0] == name
        assert result[0][1] > 0.99 and result[0][1] > result[1][1]
        assert len(result) == 2
    assert bank.nearest(-prototypes["a"], top_k=3)[-1][0] == "a"
    assert bank.nearest(prototypes["b"])[0] == ("b", pytest.approx(1.0, abs=1e-6))
    with pytest.raises(IrisInputError, match="empty"):
        MemoryBank().nearest(tokens(0))


def _assert_same(a: MemoryBank, b: MemoryBank) -> None:
    assert a.momentum == b.momentum
    assert a.class_names == b.class_names
    for name in a.class_names:
        assert torch.equal(a.get(name).tokens, b.get(name).tokens)
        assert a.count(name) == b.count(name)


def test_save_load_and_bytes_round_trip_exact(tmp_path):
    bank = MemoryBank(momentum=0.95)
    bank.update("toy/bright", tokens(1))
    bank.update("toy/bright", tokens(2))
    bank.update("toy/dark", tokens(3))
    path = bank.save(tmp_path / "nested" / "bank.pt")
    assert path.is_file()
    assert not list(path.parent.glob("*.partial"))
    _assert_same(bank, MemoryBank.load(path))
    _assert_same(bank, MemoryBank.from_bytes(bank.to_bytes()))
    restored = MemoryBank.from_bytes(bank.to_bytes())
    restored.update("toy/dark", tokens(4))  # EMA continues with the restored momentum
    torch.testing.assert_close(restored.get("toy/dark").tokens[0], 0.95 * tokens(3) + 0.05 * tokens(4))


def test_invalid_updates():
    bank = MemoryBank()
    bank.update("x", tokens(1))
    with pytest.raises(IrisInputError, match="differs from stored"):
        bank.update("x", tokens(2, shape=(6, 8)))
    with pytest.raises(IrisInputError, match=r"\(T, C\)"):
        bank.update("x", tokens(2)[None])
    bad = tokens(2)
    bad[0, 0] = float("nan")
    with pytest.raises(IrisInputError, match="NaN"):
        bank.update("x", bad)
    assert bank.count("x") == 1
    assert torch.equal(bank.get("x").tokens[0], tokens(1))


@pytest.mark.parametrize("data", [b"", b"not a torch file", b"PK\x03\x04" + bytes(range(256)) * 4])
def test_garbage_bytes_are_refused(data):
    with pytest.raises(IrisInputError, match="not a valid memory bank"):
        MemoryBank.from_bytes(data)


def test_wrong_payload_is_refused(tmp_path):
    import io

    buffer = io.BytesIO()
    torch.save({"something": torch.zeros(2)}, buffer)
    with pytest.raises(IrisInputError, match="not a valid memory bank"):
        MemoryBank.from_bytes(buffer.getvalue())


def test_fine_entries_follow_the_coarse_ones_and_are_taken_only_when_every_class_has_one():
    bank = MemoryBank(momentum=0.5)
    bank.update("vessel", tokens(1), fine_tokens=tokens(2))
    bank.update("vessel", tokens(3), fine_tokens=tokens(4))
    bank.update("liver", tokens(5))
    assert bank.has_fine("vessel") and not bank.has_fine("liver") and bank.count("vessel") == 2
    torch.testing.assert_close(bank.get("vessel", scale=2).tokens[0], 0.5 * tokens(2) + 0.5 * tokens(4))
    torch.testing.assert_close(bank.get("vessel").tokens[0], 0.5 * tokens(1) + 0.5 * tokens(3))
    assert bank.input_scale("vessel") == 2
    assert bank.input_scale(["vessel", "liver"]) == 1 and bank.input_scale([]) == 1
    with pytest.raises(IrisInputError, match="no fine memory-bank entry"):
        bank.get(["vessel", "liver"], scale=2)
    with pytest.raises(IrisInputError, match="not 3x"):
        bank.get("vessel", scale=3)
    with pytest.raises(IrisInputError, match="NaN"):
        bank.update("vessel", tokens(6), fine_tokens=torch.full((5, 8), float("nan")))


def test_entry_bytes_round_trip_and_plain_embeddings_drop_the_fine_entry():
    bank = MemoryBank()
    bank.update("vessel", tokens(1), fine_tokens=tokens(2))
    blob = bank.entry_bytes("vessel", "v1")
    assert TaskEmbedding.from_bytes(blob).class_names == ["vessel"]  # still readable as a task embedding
    other = MemoryBank()
    other.set_entry("vessel", blob, count=7)
    assert torch.equal(other.get("vessel", scale=2).tokens, bank.get("vessel", scale=2).tokens)
    assert other.count("vessel") == 7
    other.set_entry("vessel", TaskEmbedding(tokens(3)[None], ["vessel"], "v1").to_bytes(), count=8)
    assert not other.has_fine("vessel") and torch.equal(other.get("vessel").tokens[0], tokens(3))
    with pytest.raises(IrisInputError, match="not a valid memory-bank entry"):
        other.set_entry("vessel", b"garbage", count=1)
    half_bad = io.BytesIO()
    torch.save({"tokens": tokens(4)[None], "fine_tokens": torch.full((1, 5, 8), float("nan"))}, half_bad)
    with pytest.raises(IrisInputError, match="NaN"):
        other.set_entry("vessel", half_bad.getvalue(), count=2)
    assert torch.equal(other.get("vessel").tokens[0], tokens(3))  # a bad blob changes nothing
    assert other.count("vessel") == 8
    with pytest.raises(IrisInputError, match="no memory-bank entry"):
        bank.entry_bytes("liver")
    restored = MemoryBank.from_state_dict(bank.state_dict())
    assert torch.equal(restored.get("vessel", scale=2).tokens, bank.get("vessel", scale=2).tokens)
    restored.remove("vessel")
    assert "vessel" not in restored and not restored.has_fine("vessel") and restored.count("vessel") == 0
